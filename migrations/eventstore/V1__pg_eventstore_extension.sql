-- The event store: schema eventstore with the event log, its types and functions.
-- Needs a superuser (the extension loads a C library). For coalesced subscriber wake-ups,
-- also add pg_eventstore to shared_preload_libraries (see the README).
CREATE EXTENSION IF NOT EXISTS pg_eventstore;
