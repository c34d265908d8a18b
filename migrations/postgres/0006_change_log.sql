-- Read-your-writes across replicas, cheaper to write (src/store/postgres/changes.rs):
-- one row per transaction that changed ratings (written, re-written or deleted), with
-- the transaction's id and the users it changed, inserted in that transaction so it
-- commits with it. Replaces the per-user `user_changes` upsert, which cost a writer as
-- much as the ratings themselves. Each replica reads the rows added since its last
-- read (`xid` at or above the oldest transaction then running) and keeps, per user,
-- the changes not visible in its scan's snapshot.
CREATE TABLE change_log (
    xid   BIGINT NOT NULL,
    users TEXT[] NOT NULL
);
CREATE INDEX change_log_xid ON change_log (xid);
INSERT INTO change_log (xid, users)
    SELECT xid::text::int8, array_agg(ext_id ORDER BY ext_id) FROM user_changes GROUP BY xid;
DROP TABLE user_changes;

-- Rows below `change_floor` are deleted when a model is published: `change_next` is the
-- oldest running transaction when the model before it was published, so every replica
-- serving that model or a later one scanned after it and needs no older row.
ALTER TABLE cluster_state ADD COLUMN change_floor BIGINT NOT NULL DEFAULT 0;
ALTER TABLE cluster_state ADD COLUMN change_next BIGINT NOT NULL DEFAULT 0;

-- The retrain counter's increments by the writers, spread over slots so that two
-- group transactions in flight do not wait for each other's commit on one row; the
-- count is `cluster_state.changes` plus the sum of the slots.
CREATE TABLE change_counts (
    slot    SMALLINT PRIMARY KEY,
    changes BIGINT   NOT NULL DEFAULT 0
);
INSERT INTO change_counts (slot) SELECT generate_series(0, 15);
