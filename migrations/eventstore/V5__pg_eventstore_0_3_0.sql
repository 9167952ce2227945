-- pg_eventstore 0.3.0: 42704 for unknown subscription groups, the constraint name on an
-- existing group's refusal, from_position in eventstore.groups, eventstore.health(). A
-- database created by V1 with 0.3.0 installed already is at this version, and this does
-- nothing. The 0.3.0 library must be installed on the server first
-- (scripts/install-extension.sh).
ALTER EXTENSION pg_eventstore UPDATE TO '0.3.0';
