-- The metrics scope. SQLite cannot alter a CHECK: both tables are rebuilt, sessions
-- (children of keys) set aside first so dropping the keys cascades to nothing.
CREATE TEMP TABLE kept_sessions AS SELECT * FROM api_sessions;
CREATE TEMP TABLE kept_keys AS SELECT * FROM api_keys;
DROP TABLE api_sessions;
DROP TABLE api_keys;
CREATE TABLE api_keys (
    name         TEXT PRIMARY KEY,
    scope        TEXT NOT NULL CHECK (scope IN ('read', 'upload', 'admin', 'metrics')),
    key_sha256   TEXT NOT NULL UNIQUE,
    created_at   TEXT NOT NULL,
    last_used_at TEXT
);
CREATE TABLE api_sessions (
    token_sha256 TEXT PRIMARY KEY,
    key_name     TEXT NOT NULL REFERENCES api_keys (name) ON DELETE CASCADE,
    expires_at   TEXT NOT NULL
);
CREATE INDEX api_sessions_by_key ON api_sessions (key_name);
INSERT INTO api_keys (name, scope, key_sha256, created_at, last_used_at)
    SELECT name, scope, key_sha256, created_at, last_used_at FROM kept_keys;
INSERT INTO api_sessions (token_sha256, key_name, expires_at)
    SELECT token_sha256, key_name, expires_at FROM kept_sessions;
DROP TABLE kept_sessions;
DROP TABLE kept_keys;
