-- Several processes on one database (issue 11): models shared through the database,
-- retrain counters every replica adds to, and what the last training run consumed.

-- A published model file, in chunks of about 1 MB, written in the transaction that
-- inserts its `model` row. `checksum` is the SHA-256 (hex) of the whole file, `bytes`
-- its length; a replica refuses a model whose chunks do not add up to both.
CREATE TABLE model_blob (
    version  BIGINT PRIMARY KEY REFERENCES model (version) ON DELETE CASCADE,
    bytes    BIGINT NOT NULL,
    checksum TEXT   NOT NULL,
    chunks   INT    NOT NULL
);

CREATE TABLE model_chunk (
    version BIGINT NOT NULL REFERENCES model (version) ON DELETE CASCADE,
    chunk   INT    NOT NULL,
    data    BYTEA  NOT NULL,
    PRIMARY KEY (version, chunk)
);
-- Model files are mostly floats that do not compress: no TOAST compression attempts.
ALTER TABLE model_chunk ALTER COLUMN data SET STORAGE EXTERNAL;

-- The retrain policy's counters, one row. Every replica's writer adds the changes it
-- commits to `changes` in the same transaction; `POST /v1/model/train` on any replica
-- adds one to `requests`. The elected trainer sets the `*_consumed` columns to what a
-- run covered when that run ends (a run cut short by a lost leader consumes nothing,
-- so the next leader runs it again).
CREATE TABLE cluster_state (
    id                SMALLINT PRIMARY KEY CHECK (id = 1),
    changes           BIGINT      NOT NULL DEFAULT 0,
    requests          BIGINT      NOT NULL DEFAULT 0,
    changes_consumed  BIGINT      NOT NULL DEFAULT 0,
    requests_consumed BIGINT      NOT NULL DEFAULT 0,
    last_run_at       TIMESTAMPTZ
);
INSERT INTO cluster_state (id) VALUES (1);
