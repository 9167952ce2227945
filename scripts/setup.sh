#!/usr/bin/env bash
# Brings a fresh Debian 12 machine to the state the project builds and runs in. Idempotent:
# each step is skipped when already done. Run as root, or as a user with sudo.
#
#   --tests   also what only the test suite needs: Debian's chromium and chromium-driver,
#             for the stream browser's tests in a real browser
set -euo pipefail

SUDO=
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi

packages=(postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo python3)
# Node.js and npm run the seed's user service in the tests; Debian's when the machine has none.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then packages+=(nodejs npm); fi
if [ "${1:-}" = --tests ]; then packages+=(chromium chromium-driver); fi
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! cargo pgrx --version 2>/dev/null | grep -q ' 0\.18\.0$'; then
  echo "setup: installing cargo-pgrx 0.18.0 (about 5 minutes)"
  cargo install cargo-pgrx --version 0.18.0 --locked
fi

if ! grep -qs '^pg15 *= *"/usr/bin/pg_config"' "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
  cargo pgrx init --pg15 /usr/bin/pg_config >/dev/null
fi

# The packages of the seed's Node.js user service (tests/node/user-service), as locked; no
# package runs install scripts.
app=$(dirname "$0")/../tests/node/user-service
if ! cmp -s "$app/package-lock.json" "$app/node_modules/.installed-from-lock"; then
  echo "setup: installing the user service's npm packages"
  (cd "$app" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null \
    && cp package-lock.json node_modules/.installed-from-lock)
fi
