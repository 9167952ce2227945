#!/usr/bin/env bash
# Removes the installed pg_eventstore.so before a new one is copied in. Servers that preload
# the library (the demo's, the tests') have it mapped: overwriting the file in place would
# crash them with SIGBUS, while an unlinked file stays readable for them until they stop,
# and the copy that follows is a new file.
set -euo pipefail
lib="$(/usr/bin/pg_config --pkglibdir)/pg_eventstore.so"
if [ -e "$lib" ]; then
  if [ -w "$(dirname "$lib")" ]; then rm -f "$lib"; else sudo rm -f "$lib"; fi
fi
