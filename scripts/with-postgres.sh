#!/usr/bin/env bash
# Starts a throwaway PostgreSQL on 127.0.0.1 (a random free port, data in a temp folder),
# runs the given command with DATABASE_URL and PG* pointing at it, then stops and removes
# the cluster, even when the command fails. Exits with the command's status.
#
#   scripts/with-postgres.sh swift test
#   KEEP_PGDATA=/path scripts/with-postgres.sh ...   # keep the cluster's folder there
set -euo pipefail

bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
if [ -z "$bindir" ] && command -v pg_config >/dev/null; then bindir="$(pg_config --bindir)"; fi
[ -x "$bindir/initdb" ] || { echo "with-postgres: initdb not found; run scripts/install-deps.sh" >&2; exit 1; }

base="${KEEP_PGDATA:-$(mktemp -d /tmp/consent-sync-pg.XXXXXX)}"
mkdir -p "$base"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"

# initdb refuses to run as root: run the cluster as an unprivileged user.
as_user=()
if [ "$(id -u)" -eq 0 ]; then
    user="postgres"
    id "$user" >/dev/null 2>&1 || useradd --system --no-create-home "$user"
    chown "$user" "$base"
    chmod 700 "$base"
    as_user=(runuser -u "$user" --)
fi

cleanup() {
    "${as_user[@]}" "$bindir/pg_ctl" -D "$base/data" -m immediate stop >/dev/null 2>&1 || true
    [ -n "${KEEP_PGDATA:-}" ] || rm -rf "$base"
}
trap cleanup EXIT INT TERM

"${as_user[@]}" "$bindir/initdb" -D "$base/data" -U postgres --auth=trust -E UTF8 --no-locale >"$base/initdb.log" 2>&1 \
    || { cat "$base/initdb.log" >&2; exit 1; }
"${as_user[@]}" "$bindir/pg_ctl" -D "$base/data" -l "$base/server.log" -w -t 60 start -o \
    "-p $port -k $base -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c wal_level=logical -c max_replication_slots=100 -c wal_writer_delay=10ms" >/dev/null \
    || { cat "$base/server.log" >&2; exit 1; }

export PGHOST=127.0.0.1 PGPORT="$port" PGUSER=postgres PGDATABASE=postgres
export DATABASE_URL="postgresql://postgres@127.0.0.1:$port/postgres"
export CONSENT_SYNC_TEST_PGDATA="$base/data" CONSENT_SYNC_TEST_PGBIN="$bindir"
echo "with-postgres: PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$port" >&2

set +e
"$@"
status=$?
set -e
exit $status
