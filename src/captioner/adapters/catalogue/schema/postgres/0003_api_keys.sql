-- API keys and the gallery's sessions; only hashes are kept.
CREATE TABLE api_keys (
    name         TEXT        PRIMARY KEY,
    scope        TEXT        NOT NULL CHECK (scope IN ('read', 'upload', 'admin')),
    key_sha256   TEXT        NOT NULL UNIQUE,   -- never the key itself
    created_at   TIMESTAMPTZ NOT NULL,
    last_used_at TIMESTAMPTZ
);
CREATE TABLE api_sessions (
    token_sha256 TEXT        PRIMARY KEY,       -- never the cookie's token itself
    key_name     TEXT        NOT NULL REFERENCES api_keys (name) ON DELETE CASCADE,
    expires_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX api_sessions_by_key ON api_sessions (key_name);
