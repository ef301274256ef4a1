-- Full-text search over descriptions (FTS5), kept in step with images by triggers.
CREATE VIRTUAL TABLE images_fts USING fts5(
    description, content='images', content_rowid='id',
    tokenize='unicode61 remove_diacritics 2'
);
CREATE TRIGGER images_fts_insert AFTER INSERT ON images BEGIN
    INSERT INTO images_fts (rowid, description) VALUES (new.id, new.description);
END;
CREATE TRIGGER images_fts_delete AFTER DELETE ON images BEGIN
    INSERT INTO images_fts (images_fts, rowid, description)
    VALUES ('delete', old.id, old.description);
END;
CREATE TRIGGER images_fts_update AFTER UPDATE OF description ON images BEGIN
    INSERT INTO images_fts (images_fts, rowid, description)
    VALUES ('delete', old.id, old.description);
    INSERT INTO images_fts (rowid, description) VALUES (new.id, new.description);
END;
-- Rows stored before search existed are indexed too.
INSERT INTO images_fts (images_fts) VALUES ('rebuild');
