-- The caption queue: a record is pending until a worker captions it (or failed, with the
-- reason, after max_attempts model errors). Records stored before the queue are captioned.
ALTER TABLE images ADD COLUMN status TEXT NOT NULL DEFAULT 'captioned';
ALTER TABLE images ADD COLUMN failure TEXT;
ALTER TABLE images ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
-- Synchronous uploads waiting for a worker (1) go before asynchronous ones (0).
ALTER TABLE images ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
-- Before this a pending record is not taken again (a retry's backoff); NULL: now.
ALTER TABLE images ADD COLUMN next_attempt_at TIMESTAMPTZ;
-- The queue in the order workers take it, from pending rows alone.
CREATE INDEX images_queue ON images (priority DESC, id) WHERE status = 'pending';
CREATE INDEX images_by_status ON images (status);
-- Queue workers' heartbeats: a worker is alive while it keeps seen_at fresh.
CREATE TABLE workers (
    name       TEXT PRIMARY KEY,
    model      TEXT NOT NULL,
    seen_at    TIMESTAMPTZ NOT NULL   -- the database's clock
);
