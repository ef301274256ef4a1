-- Deletes of image bytes in flight, one row per digest, in the catalogue so every replica over
-- it sees them: an upload of the same bytes re-checks its file only when a delete was in
-- flight or began meanwhile (domain/one_run_per_key.py, file_may_be_gone).
CREATE TABLE bytes_deletes (
    sha256     TEXT PRIMARY KEY,
    running    INTEGER NOT NULL,       -- deletes begun and not finished (a crashed one stays)
    ticket     TEXT NOT NULL,          -- fresh at each begin: a delete began since it was read
    changed_at TIMESTAMPTZ NOT NULL    -- the database's clock: finished marks expire
);
CREATE INDEX bytes_deletes_by_age ON bytes_deletes (running, changed_at);
