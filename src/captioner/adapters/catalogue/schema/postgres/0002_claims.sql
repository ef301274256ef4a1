-- Model runs in progress, one per key, so replicas sharing the database caption once.
CREATE TABLE caption_claims (
    sha256     TEXT        NOT NULL,
    model      TEXT        NOT NULL,
    prompt     TEXT        NOT NULL,
    owner      TEXT        NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,   -- the database's clock: replicas' clocks may differ
    PRIMARY KEY (sha256, model, prompt)
);
