#!/usr/bin/env bash
# A PostgreSQL 15 install that does not offer pg_eventstore, as on managed PostgreSQL: the
# machine's own server programs, with a share folder whose extension/ lacks pg_eventstore's
# control and script files. Prints the bin folder, for scripts/cluster.sh's PGBIN.
#
#   scripts/pg-without-extension.sh DIR
#
# PostgreSQL finds its share and lib folders relative to where its programs are, so the
# programs are copied (links would be followed back to the real install) into
# DIR/lib/postgresql/15/bin; share and lib entries are symbolic links to the real ones.
set -euo pipefail
dir=${1:?usage: pg-without-extension.sh DIR}
bin=/usr/lib/postgresql/15/bin
share=/usr/share/postgresql/15
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
rm -rf "$dir/lib" "$dir/share"
mkdir -p "$dir/lib/postgresql/15/bin" "$dir/share/postgresql/15/extension"
for program in postgres initdb pg_ctl; do
  cp "$bin/$program" "$dir/lib/postgresql/15/bin/"
done
ln -s /usr/lib/postgresql/15/lib "$dir/lib/postgresql/15/lib"
for entry in "$share"/*; do
  [ "$(basename "$entry")" = extension ] || ln -s "$entry" "$dir/share/postgresql/15/"
done
for entry in "$share"/extension/*; do
  case "$(basename "$entry")" in
    pg_eventstore.control | pg_eventstore--*) ;;
    *) ln -s "$entry" "$dir/share/postgresql/15/extension/" ;;
  esac
done
echo "$dir/lib/postgresql/15/bin"
