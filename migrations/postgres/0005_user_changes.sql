-- Read-your-writes across replicas (src/store/postgres/changes.rs): for every user
-- whose ratings a transaction changed (written, re-written or deleted), the id of
-- the latest such transaction. The writer upserts it in the same transaction as the
-- change, so it commits with it. A replica serving a model trained on a scan taken in
-- snapshot S treats user u as changed when u's xid is not visible in S
-- (`pg_visible_in_snapshot`), exact under concurrent commits from several replicas.
-- Keyed by the external id so that no join and no users row is needed to ask.
CREATE TABLE user_changes (
    ext_id TEXT PRIMARY KEY,
    xid    xid8 NOT NULL
);
