#!/usr/bin/env bash
# The psql walkthroughs in sql/, each run as written (psql -a: statements echoed, results and
# notices after them) in a fresh database of the cluster on PORT, and compared with
# sql/expected/NAME.out in the pg_regress way. What differs between runs by nature is
# normalized on both sides first: positions (transaction ids), generated ids, timestamps,
# and the column widths they change.
#
#   scripts/walkthroughs.sh PORT              compare; prints a diff and fails on a difference
#   scripts/walkthroughs.sh PORT --update     rewrite the expected files
#   scripts/walkthroughs.sh PORT --portable   compare, on databases where the portable form
#                                             (sql/portable/) is installed instead of the
#                                             extension: each walkthrough runs without its
#                                             CREATE EXTENSION line, and must print the same
set -euo pipefail
cd "$(dirname "$0")/.."
port=${1:?usage: walkthroughs.sh PORT [--update|--portable]}
update=${2:-}
portable=
if [ "$update" = --portable ]; then
  portable=$(ls sql/portable/pg_eventstore--*.sql | sort -V | tail -1)
  update=
fi
create_extension='CREATE EXTENSION IF NOT EXISTS pg_eventstore;'
instead='-- (the portable form is installed instead of the extension)'

normalize() {
  sed -E \
    -e 's/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/<uuid>/g' \
    -e 's/[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([+-][0-9]{2}(:[0-9]{2})?|Z)?/<time>/g' \
    -e 's/\b[0-9]{7,}\b/<position>/g' \
    -e 's/-{2,}/--/g' -e 's/ +/ /g' -e 's/ +$//' |
    if [ -n "$portable" ]; then grep -vxF -e "$create_extension" -e "$instead"; else cat; fi
}

mkdir -p sql/expected
failed=0
passed=0
for script in sql/*.sql; do
  name=$(basename "$script" .sql)
  db="walkthrough_$(tr -c 'a-z0-9\n' '_' <<<"$name")"
  PGOPTIONS="-c client_min_messages=warning" psql -X -q -h 127.0.0.1 -p "$port" -U postgres \
    -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
  actual=$(mktemp)
  dir=$PWD
  if [ -n "$portable" ]; then
    PGOPTIONS="-c client_min_messages=warning" psql -X -q -v ON_ERROR_STOP=1 -1 \
      -h 127.0.0.1 -p "$port" -U postgres -d "$db" -f "$portable" >/dev/null
    # A copy under the same relative name, so psql's messages name the same file and line.
    dir=$(mktemp -d)
    mkdir "$dir/sql"
    sed "s/^$create_extension\$/$instead/" "$script" >"$dir/$script"
  fi
  if ! (cd "$dir" && psql -X -a -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres \
    -d "$db" -f "$script") >"$actual" 2>&1; then
    echo "walkthrough: $script FAILED to run" >&2
    cat "$actual" >&2
    failed=$((failed + 1))
    continue
  fi
  expected=sql/expected/$name.out
  if [ "$update" = --update ]; then
    # Only where the output changed, not where positions and times merely differ.
    if [ ! -f "$expected" ] || ! diff -q <(normalize <"$expected") <(normalize <"$actual") >/dev/null; then
      cp "$actual" "$expected"
      echo "walkthrough: $expected written"
    fi
  elif [ ! -f "$expected" ]; then
    echo "walkthrough: $expected is missing (scripts/walkthroughs.sh PORT --update)" >&2
    failed=$((failed + 1))
  elif diff -u <(normalize <"$expected") <(normalize <"$actual") >"$actual.diff"; then
    echo "walkthrough: $script ok"
    passed=$((passed + 1))
  else
    echo "walkthrough: $script differs from $expected:" >&2
    cat "$actual.diff" >&2
    failed=$((failed + 1))
  fi
  rm -f "$actual" "$actual.diff"
  if [ -n "$portable" ]; then rm -rf "$dir"; fi
done
echo "walkthroughs${portable:+ (portable form)}: $passed of $((passed + failed)) match their expected output"
[ "$failed" = 0 ]
