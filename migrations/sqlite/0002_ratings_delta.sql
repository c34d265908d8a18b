-- New writes land in this small table first: a commit then rewrites a few of its
-- pages instead of one page of the big `ratings` table per rating. The writer folds
-- it into `ratings` in large key-ordered chunks (see src/store/writer.rs). A delta
-- row overrides the `ratings` row of the same pair; a NULL rating deletes it.
CREATE TABLE ratings_delta (
    user_id INTEGER NOT NULL REFERENCES users (id),
    item_id INTEGER NOT NULL REFERENCES items (id),
    rating  REAL,
    ts      INTEGER NOT NULL,
    PRIMARY KEY (user_id, item_id)
) WITHOUT ROWID;

-- Every current rating. Filter it on a bound `user_id = ?` (not a join or a
-- subquery) so SQLite pushes the filter into both halves.
CREATE VIEW ratings_now AS
    SELECT user_id, item_id, rating, ts FROM ratings_delta WHERE rating IS NOT NULL
    UNION ALL
    SELECT r.user_id, r.item_id, r.rating, r.ts FROM ratings r
    WHERE NOT EXISTS (
        SELECT 1 FROM ratings_delta d WHERE d.user_id = r.user_id AND d.item_id = r.item_id
    );
