#!/usr/bin/env bash
# consent-sync benchmark (issue 7): the receiver and the sender alone, drain, live latency, max
# live, scaling, producer cost, plot.
#
#   scripts/bench/run.sh                 # every scenario with the defaults (takes a while)
#   scripts/bench/run.sh --smoke         # small version for CI: exits non-zero on a failed self-check
#   scripts/bench/run.sh --scenarios drain,live --drain-changes 20000
#   scripts/bench/run.sh --big-backlog   # also the 1,000,000-delivery backlog
#   scripts/bench/run.sh --profile       # also: perf (cpu-clock) of a drain + callgrind of a small drain
#   scripts/bench/run.sh --help          # every option (each also settable as BENCH_<OPTION>)
#
# Self-contained on Debian 12: installs what is missing (the build dependencies via
# scripts/install-deps.sh; nginx, gnuplot-nox, wrk, postgresql-contrib), builds consent-sync in
# release mode into .build-bench, starts a throwaway PostgreSQL (scripts/with-postgres.sh) and
# runs scripts/bench/bench.py under it. Results: bench-results/<timestamp>/ (table, CSV, JSON, PNG).
# Everything listens on 127.0.0.1 only; every process it starts is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"

for arg in "$@"; do
    case "$arg" in
        -h|--help) exec python3 "$root/scripts/bench/bench.py" --help ;;
    esac
done

# --- system packages, only when missing --------------------------------------------------
scripts/install-deps.sh
need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v gnuplot >/dev/null 2>&1 || need+=(gnuplot-nox)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v pgbench >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pgbench >/dev/null 2>&1 || need+=(postgresql-contrib)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ "${BENCH_PROFILE:-}" = 1 ] || printf '%s\n' "$@" | grep -qx -- '--profile'; then
    command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
    command -v perf >/dev/null 2>&1 || need+=(linux-perf)
fi
if [ ${#need[@]} -gt 0 ]; then
    echo "bench: installing ${need[*]}" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    # Installing nginx must not start the distribution's own nginx (it would listen on
    # 0.0.0.0:80): forbid service starts during the install, unless a policy already exists.
    policy_added=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
        $sudo chmod 755 /usr/sbin/policy-rc.d
        policy_added=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    status=0
    { $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; } || status=$?
    [ -z "$policy_added" ] || $sudo rm -f /usr/sbin/policy-rc.d
    [ $status -eq 0 ] || { echo "bench: apt-get install ${need[*]} failed" >&2; exit $status; }
fi
export PATH="$PATH:/usr/sbin:$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"

# --- build (its own scratch path, so it does not fight other builds) -------------------------
if [ -z "${BENCH_BINARY:-}" ]; then
    echo "bench: swift build -c release --product consent-sync --scratch-path .build-bench" >&2
    swift build -c release --product consent-sync --scratch-path .build-bench >&2
    BENCH_BINARY="$(swift build -c release --scratch-path .build-bench --show-bin-path)/consent-sync"
    # what was built: HEAD plus the uncommitted changes of the working tree, if any
    if [ -z "${BENCH_REVISION:-}" ] && command -v git >/dev/null 2>&1 && git rev-parse --git-dir >/dev/null 2>&1; then
        BENCH_REVISION="$(git rev-parse --short HEAD)"
        changed="$(git status --porcelain --untracked-files=no | wc -l)"
        [ "$changed" -eq 0 ] || BENCH_REVISION="$BENCH_REVISION + $changed uncommitted files"
        export BENCH_REVISION
    fi
else
    export BENCH_REVISION="${BENCH_REVISION:-unknown (BENCH_BINARY=$BENCH_BINARY)}"
fi
export BENCH_BINARY
[ -x "$BENCH_BINARY" ] || { echo "bench: $BENCH_BINARY is missing" >&2; exit 1; }

# --- run under a throwaway PostgreSQL ----------------------------------------------------------
exec scripts/with-postgres.sh python3 "$root/scripts/bench/bench.py" "$@"
