-- Model versions have a state (issue 12): `serving` (at most one row: the version the
-- service serves), `superseded` (was published, another serves now) or `rejected`
-- (the publish gate refused it: `reason` says why). Existing rows: the newest serves.
ALTER TABLE model ADD COLUMN state TEXT NOT NULL DEFAULT 'superseded'
    CHECK (state IN ('serving', 'superseded', 'rejected'));
ALTER TABLE model ADD COLUMN reason TEXT;
UPDATE model SET state = 'serving' WHERE version = (SELECT MAX(version) FROM model);
CREATE UNIQUE INDEX model_one_serving ON model (state) WHERE state = 'serving';
