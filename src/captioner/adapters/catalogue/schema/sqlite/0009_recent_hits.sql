-- Hits counted against a rate (wrong API keys, per client address), in the catalogue so every
-- replica over it counts together. A row lives one window: each new hit drops the old ones.
CREATE TABLE recent_hits (
    counter TEXT NOT NULL,   -- what is counted: wrong_keys
    who     TEXT NOT NULL,   -- whose hit: a client address
    at      REAL NOT NULL    -- Unix time, the claims' clock
);
CREATE INDEX recent_hits_of ON recent_hits (counter, who, at);
CREATE INDEX recent_hits_by_age ON recent_hits (counter, at);
