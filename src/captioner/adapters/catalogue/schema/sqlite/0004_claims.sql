-- Model runs in progress, one per key, so processes sharing the file caption once.
CREATE TABLE caption_claims (
    sha256     TEXT NOT NULL,
    model      TEXT NOT NULL,
    prompt     TEXT NOT NULL,
    owner      TEXT NOT NULL,
    expires_at REAL NOT NULL,   -- Unix time: every process on the machine shares the clock
    PRIMARY KEY (sha256, model, prompt)
);
