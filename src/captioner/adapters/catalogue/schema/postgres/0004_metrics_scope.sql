-- The metrics scope (a key that may scrape /metrics and nothing else).
ALTER TABLE api_keys DROP CONSTRAINT api_keys_scope_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_scope_check
    CHECK (scope IN ('read', 'upload', 'admin', 'metrics'));
