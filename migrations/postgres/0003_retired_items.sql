-- Forget on request (issue 12); the same tables as migrations/sqlite/0004_retired_items.sql.
-- Retired items: their ratings were deleted when they were retired; they are never
-- recommended or returned as similar again, a new rating of one is refused
-- (409 item_retired), and the training scan leaves out any rating of one.
CREATE TABLE retired_items (
    item_ext   TEXT   PRIMARY KEY,
    retired_at BIGINT NOT NULL
);

-- Users whose ratings were all deleted (DELETE /v1/users/{user}) while a model that
-- still holds their vector may serve. Serving ignores that vector (the user is served
-- as one the model does not know, folded in from ratings written since). A row is
-- removed once a snapshot trained after the deletion serves; `tag` tells a row from a
-- later deletion of the same user.
CREATE TABLE forgotten_users (
    user_ext TEXT   PRIMARY KEY,
    tag      BIGINT NOT NULL
);
