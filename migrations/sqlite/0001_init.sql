-- Users and items get integer surrogate keys; their text ids are stored once.
CREATE TABLE users (
    id     INTEGER PRIMARY KEY,
    ext_id TEXT    NOT NULL UNIQUE
);

CREATE TABLE items (
    id     INTEGER PRIMARY KEY,
    ext_id TEXT    NOT NULL UNIQUE
);

-- One rating per (user, item); a new rating of the same pair replaces the old one.
-- Clustered on the key (WITHOUT ROWID): a user's ratings are contiguous.
CREATE TABLE ratings (
    user_id INTEGER NOT NULL REFERENCES users (id),
    item_id INTEGER NOT NULL REFERENCES items (id),
    rating  REAL    NOT NULL,
    ts      INTEGER NOT NULL,
    PRIMARY KEY (user_id, item_id)
) WITHOUT ROWID;

-- One row per published model snapshot.
CREATE TABLE model (
    version      INTEGER PRIMARY KEY,
    file         TEXT    NOT NULL,
    trained_at   TEXT    NOT NULL,
    trainer      TEXT    NOT NULL,
    n_users      INTEGER NOT NULL,
    n_items      INTEGER NOT NULL,
    n_ratings    INTEGER NOT NULL,
    n_holdout    INTEGER NOT NULL,
    train_rmse   REAL,
    holdout_rmse REAL,
    train_secs   REAL    NOT NULL
);
