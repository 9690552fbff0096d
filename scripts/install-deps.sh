#!/usr/bin/env bash
# Installs what Fermata needs on a Debian machine: PostgreSQL and Redis servers, chromium (for the
# browser test), sshd (for the ssh-host tests), the Temporal CLI (for its dev server) and
# node_modules. Idempotent, and silent when everything is already there.
# Run by `npm start` and by CI.
set -euo pipefail
cd "$(dirname "$0")/.."

TEMPORAL_CLI=github.com/temporalio/cli/cmd/temporal@v1.5.1

say() { echo "install-deps: $*"; }
as_root() { if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# Debian keeps the PostgreSQL server binaries out of PATH (src/stack/postgres.ts finds them there).
packages=()
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || packages+=(postgresql postgresql-contrib)
command -v redis-server >/dev/null || packages+=(redis-server)
# Targets on ssh hosts are tested against an sshd of the test run's own on loopback.
[[ -x /usr/sbin/sshd ]] || packages+=(openssh-server)
# The browser test drives the Temporal Web UI in Debian's chromium (playwright-core downloads no
# browser); FERMATA_CHROMIUM names another one (test/harness/web-ui.ts).
[[ -x ${FERMATA_CHROMIUM:-/usr/bin/chromium} ]] || packages+=(chromium)
if ((${#packages[@]})); then
  say "installing ${packages[*]}"
  # The packages start system services on 5432, 6379 and 22; the stack and the tests use their own instead.
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
fi

if ! command -v temporal >/dev/null && [[ ! -x .tools/bin/temporal ]]; then
  go=$(command -v go || echo /usr/local/go/bin/go)
  if [[ ! -x $go ]]; then
    say "the Temporal CLI is missing and building it needs Go (https://go.dev/dl), or put a temporal binary on PATH" >&2
    exit 1
  fi
  say "building the Temporal CLI into .tools/bin (once, a few minutes)"
  GOBIN="$PWD/.tools/bin" "$go" install "$TEMPORAL_CLI"
fi

# npm writes node_modules/.package-lock.json on every install: older than the lock file means stale.
if [[ ! -d node_modules || package-lock.json -nt node_modules/.package-lock.json ]]; then
  # Not `npm ci`: the lock names platform builds of @swc/core that this registry does not serve
  # (404), which `npm ci` treats as an out-of-sync lock. `npm install` follows the lock all the same.
  say "npm install (from package-lock.json)"
  npm install --no-audit --no-fund --loglevel=error
fi
