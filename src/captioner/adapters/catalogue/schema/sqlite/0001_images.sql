-- The catalogue's first table: one row per (bytes, model, prompt) caption.
CREATE TABLE images (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256        TEXT    NOT NULL,
    path          TEXT    NOT NULL,   -- relative to the data dir, as in the seed
    description   TEXT    NOT NULL,   -- the caption, as in the seed
    model         TEXT    NOT NULL,
    prompt        TEXT    NOT NULL DEFAULT '',
    created_at    TEXT    NOT NULL,
    width         INTEGER NOT NULL,
    height        INTEGER NOT NULL,
    content_type  TEXT    NOT NULL,
    original_name TEXT,
    UNIQUE (sha256, model, prompt)
);
CREATE INDEX images_by_path ON images (path);
