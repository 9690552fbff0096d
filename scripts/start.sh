#!/usr/bin/env bash
# `npm start`: install whatever is missing, then run the local stack (src/stack/main.ts).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
exec node_modules/.bin/tsx src/stack/main.ts "$@"
