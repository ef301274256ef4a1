-- The models present and how many images each described, from the index alone.
CREATE INDEX images_by_model ON images (model, sha256);
-- Each record names its image's first record (image_id = id on that one), kept by
-- triggers whoever inserts or deletes: listings walk first records alone, however many
-- re-captions lie on top of them.
ALTER TABLE images ADD COLUMN image_id INTEGER;
UPDATE images SET image_id = (SELECT MIN(j.id) FROM images AS j WHERE j.sha256 = images.sha256);
CREATE INDEX images_firsts ON images (id) WHERE id = image_id;
CREATE TRIGGER images_image_id_insert AFTER INSERT ON images BEGIN
    UPDATE images SET image_id = (SELECT MIN(j.id) FROM images AS j WHERE j.sha256 = new.sha256)
    WHERE id = new.id;
END;
CREATE TRIGGER images_image_id_delete AFTER DELETE ON images WHEN old.id = old.image_id BEGIN
    UPDATE images SET image_id = (SELECT MIN(j.id) FROM images AS j WHERE j.sha256 = old.sha256)
    WHERE sha256 = old.sha256;
END;
