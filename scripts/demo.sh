#!/usr/bin/env bash
# The embedded default: a throwaway PostgreSQL under .local/, two sample receivers,
# the daemon, and a handful of consent changes arriving. Ctrl-C stops everything.
#   DEMO_EXIT=1 scripts/demo.sh    # end by itself once the changes have arrived (CI, scripts)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
swift build --product consent-sync >&2
bin="$(swift build --show-bin-path)/consent-sync"

rm -rf .local/demo
mkdir -p .local/demo
export KEEP_PGDATA="$PWD/.local/demo/pg"
exec scripts/with-postgres.sh scripts/demo-session.sh "$bin" "$PWD/.local/demo"
