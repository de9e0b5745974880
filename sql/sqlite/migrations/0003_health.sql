-- One row that /readyz rewrites: a real page write, so a full disk or a held lock shows there.
CREATE TABLE health (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at  INTEGER NOT NULL
);
INSERT INTO health (id, checked_at) VALUES (1, 0);
