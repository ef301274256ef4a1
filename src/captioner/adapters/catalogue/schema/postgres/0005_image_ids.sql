-- The models present and how many images each described, from the index alone.
CREATE INDEX images_by_model ON images (model, sha256);
-- Each record names its image's first record (image_id = id on that one), kept by
-- triggers whoever inserts or deletes: listings walk first records alone, however many
-- re-captions lie on top of them.
ALTER TABLE images ADD COLUMN image_id BIGINT;
UPDATE images SET image_id = (SELECT min(j.id) FROM images AS j WHERE j.sha256 = images.sha256);
CREATE INDEX images_firsts ON images (id) WHERE id = image_id;
CREATE FUNCTION images_set_image_id() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.image_id := coalesce(
        (SELECT min(j.id) FROM images AS j WHERE j.sha256 = NEW.sha256), NEW.id);
    RETURN NEW;
END $$;
CREATE TRIGGER images_image_id_insert BEFORE INSERT ON images
    FOR EACH ROW EXECUTE FUNCTION images_set_image_id();
CREATE FUNCTION images_move_image_id() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE images SET image_id = (SELECT min(j.id) FROM images AS j WHERE j.sha256 = OLD.sha256)
    WHERE sha256 = OLD.sha256;
    RETURN NULL;
END $$;
CREATE TRIGGER images_image_id_delete AFTER DELETE ON images
    FOR EACH ROW WHEN (OLD.id = OLD.image_id) EXECUTE FUNCTION images_move_image_id();
