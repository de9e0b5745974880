-- Whether queue :queue is paused (1) or not (0): a limited queue's claim looks first.
SELECT count(*) FROM queues WHERE name = :queue AND paused = 1
