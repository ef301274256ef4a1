-- Provenance: rows from before it was kept have an unknown revision (NULL), no recorded
-- settings ('{}') and no model time (NULL).
ALTER TABLE images ADD COLUMN model_revision TEXT;
ALTER TABLE images ADD COLUMN generation TEXT NOT NULL DEFAULT '{}';
ALTER TABLE images ADD COLUMN duration_ms REAL;
