-- pg_eventstore 0.2.0 adds persistent subscription groups (eventstore.create_group, fetch,
-- ack, nack, park, ...). A database set up with 0.1.0 is updated in place; one created by V1
-- with 0.2.0 installed already is at this version, and this does nothing.
-- The 0.2.0 library must be installed on the server first (scripts/install-extension.sh).
ALTER EXTENSION pg_eventstore UPDATE TO '0.2.0';
