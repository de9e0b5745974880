-- Whether any token exists (the first start writes an admin token when none does).
SELECT EXISTS (SELECT 1 FROM tokens)
