#!/usr/bin/env bash
# The sanitizer and fuzzing step of `make test` (docs/testing.md, "Sanitizers" and "Fuzzing"):
#   1. a short bounded libFuzzer run of every target in scripts/fuzz/run.sh (FUZZ_SECONDS each,
#      default 20), linking what they need from the main debug build (.build, made by
#      `swift test` just before);
#   2. the AddressSanitizer run of a documented subset of the tests (ASAN_FILTER): the pure
#      core, and the HTTP and PostgreSQL layers with real libcurl, libpq and PostgreSQL (run
#      under scripts/with-postgres.sh, as `make test` does).
# Thread sanitizer is not run here: see docs/testing.md for why.
#
#   scripts/with-postgres.sh scripts/sanitize-and-fuzz.sh
#   FUZZ_SECONDS=0 scripts/sanitize-and-fuzz.sh      # ASan only
#   ASAN=0 scripts/sanitize-and-fuzz.sh              # fuzzing only
set -euo pipefail
cd "$(dirname "$0")/.."
SWIFT="${SWIFT:-swift}"
fuzz_seconds="${FUZZ_SECONDS:-20}"
asan_filter="${ASAN_FILTER:-ConsentSyncCoreTests|ConsentSyncHTTPTests|ConsentSyncPostgresTests}"
asan_scratch="${ASAN_SCRATCH:-.build-asan}"
main_scratch="${SCRATCH:-.build}"
status=0

now() { date +%s; }

if [ "$fuzz_seconds" != 0 ]; then
    started=$(now)
    if ! FUZZ_SECONDS="$fuzz_seconds" SCRATCH="$main_scratch" scripts/fuzz/run.sh 2>&1 | grep -v "ld.gold: warning: Cannot export local symbol"; then
        status=1
    fi
    echo "sanitize-and-fuzz: fuzzing took $(( $(now) - started )) s (${fuzz_seconds} s per target)" >&2
fi

if [ "${ASAN:-1}" != 0 ]; then
    started=$(now)
    mkdir -p "$asan_scratch"
    if ! "$SWIFT" build --scratch-path "$asan_scratch" --build-tests --sanitize=address >"$asan_scratch/build.log" 2>&1; then
        tail -n 60 "$asan_scratch/build.log" >&2
        echo "sanitize-and-fuzz: the ASan build failed (log: $asan_scratch/build.log)" >&2
        exit 1
    fi
    built=$(now)
    echo "sanitize-and-fuzz: ASan build took $(( built - started )) s" >&2
    # LeakSanitizer reports memory the test runner itself keeps (144 bytes, XCTest): off.
    if ! ASAN_OPTIONS="detect_leaks=0:halt_on_error=1" "$SWIFT" test --scratch-path "$asan_scratch" --skip-build --sanitize=address --filter "$asan_filter"; then
        status=1
    fi
    echo "sanitize-and-fuzz: ASan tests ($asan_filter) took $(( $(now) - built )) s" >&2
fi
exit $status
