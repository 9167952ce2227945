-- Brings pg_eventstore to the version installed on the server (0.5.0 with this release):
-- subscription groups lease batches of the log instead of single events, and an ordered
-- group's parked events hold back their own streams only. Groups in flight keep their
-- leases and parked events. No version is named, so this never fails once a newer one is
-- installed; a database already there is left alone.
ALTER EXTENSION pg_eventstore UPDATE;
