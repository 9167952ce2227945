#!/usr/bin/env bash
# The SQL of a released version never changes: the install script pgrx generates for the
# current version must equal its frozen copy in extension/sql/released/ (apart from pgrx's
# "-- file:line" source comments, which move with the Rust code). A change to the SQL needs a
# new version, its upgrade script extension/sql/pg_eventstore--OLD--NEW.sql, and then
#   scripts/check-frozen-sql.sh --freeze
# to store the new version's install script.
set -euo pipefail
cd "$(dirname "$0")/.."
current=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
frozen=extension/sql/released/pg_eventstore--$current.sql
generated=$(mktemp)
trap 'rm -f "$generated"' EXIT
(cd extension && cargo pgrx schema pg15 -o "$generated" >/dev/null 2>&1) \
  || { echo "frozen SQL: cargo pgrx schema failed" >&2; exit 1; }
if [ "${1:-}" = --freeze ]; then
  cp "$generated" "$frozen"
  echo "frozen SQL: wrote $frozen"
  exit 0
fi
strip() { grep -vE '^-- [A-Za-z0-9_./-]+\.rs:[0-9]+$' "$1"; }
if [ ! -f "$frozen" ]; then
  echo "frozen SQL: $frozen is missing (scripts/check-frozen-sql.sh --freeze)" >&2
  exit 1
fi
if ! diff -u <(strip "$frozen") <(strip "$generated"); then
  echo "frozen SQL: the install script of $current differs from $frozen." >&2
  echo "  A released version's SQL is frozen: bump the version and add an upgrade script." >&2
  exit 1
fi
for old in extension/sql/released/pg_eventstore--*.sql; do
  version=$(basename "$old" .sql); version=${version#pg_eventstore--}
  [ "$version" = "$current" ] && continue
  next=$(ls extension/sql/pg_eventstore--"$version"--*.sql 2>/dev/null | head -1)
  [ -n "$next" ] || { echo "frozen SQL: no upgrade script from $version" >&2; exit 1; }
done
echo "frozen SQL: the install script of $current is the released one; every older version has an upgrade script"
