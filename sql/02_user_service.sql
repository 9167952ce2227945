-- The user service of the seed article: `user-created` events in streams `user-<username>`,
-- a lookup by username, and a subscriber that fills a `user` table from the global log,
-- resuming from its own checkpoint.
CREATE EXTENSION IF NOT EXISTS pg_eventstore;

SELECT eventstore.append('user-' || username,
           jsonb_build_array(jsonb_build_object(
               'type', 'user-created',
               'data', jsonb_build_object('username', username, 'fullName', full_name))),
           eventstore.no_stream())
FROM (VALUES ('alice', 'Alice Liddell'), ('bob', 'Bob Builder'), ('carol', 'Carol Danvers'))
     AS u(username, full_name);

-- Look a user up by username: their stream holds their whole history.
SELECT type, data->>'fullName' AS full_name FROM eventstore.read_stream('user-bob');

-- A subscriber keeps a read model and a checkpoint, and moves both in one transaction.
CREATE TABLE users_read_model (username text PRIMARY KEY, full_name text NOT NULL);
CREATE TABLE checkpoints (name text PRIMARY KEY, position bigint NOT NULL);
INSERT INTO checkpoints VALUES ('users', 0);

BEGIN;
WITH batch AS (
    SELECT * FROM eventstore.read_all(
        (SELECT position FROM checkpoints WHERE name = 'users'), 100, ARRAY['user-created'])
), applied AS (
    INSERT INTO users_read_model
    SELECT data->>'username', data->>'fullName' FROM batch
    ON CONFLICT (username) DO NOTHING
)
UPDATE checkpoints SET position = coalesce((SELECT max(position) FROM batch), position)
WHERE name = 'users';
COMMIT;

SELECT * FROM users_read_model ORDER BY username;

-- Running the same step again finds nothing new: it resumes after its checkpoint.
SELECT count(*) AS unread
FROM eventstore.read_all((SELECT position FROM checkpoints WHERE name = 'users'), 100, ARRAY['user-created']);

-- (The test suite runs this file; these checks make it fail loudly if the story breaks.)
DO $$
BEGIN
    ASSERT (SELECT count(*) FROM users_read_model)
         = (SELECT count(*) FROM eventstore.events WHERE type = 'user-created'), 'every user projected';
    ASSERT (SELECT full_name FROM users_read_model WHERE username = 'bob') = 'Bob Builder';
    ASSERT (SELECT position FROM checkpoints) = (SELECT max(position) FROM eventstore.events);
END
$$;
