-- Brings pg_eventstore to the version installed on the server (0.4.0 with this release),
-- through every step between: positions that survive a logical restore, 25006 on a hot
-- standby, and the least-privilege roles eventstore_reader, eventstore_writer,
-- eventstore_consumer and eventstore_admin. A database created by V1 with the current
-- version installed is there already, and the update does nothing. The library must be
-- installed on the server first (scripts/install-extension.sh). No version is named, so this
-- never fails once a newer one is installed, as a named one would.
ALTER EXTENSION pg_eventstore UPDATE;

-- The projection checkpoints (V4) under the same roles: readers see where projections are,
-- consumers (the daemon that runs them) move their checkpoints, admins reset them.
GRANT USAGE ON SCHEMA projections TO eventstore_reader;
GRANT SELECT ON projections.checkpoints TO eventstore_reader;
GRANT INSERT, UPDATE ON projections.checkpoints TO eventstore_consumer;
GRANT DELETE, TRUNCATE ON projections.checkpoints TO eventstore_admin;
