#!/usr/bin/env bash
# Runs inside scripts/with-postgres.sh: see scripts/demo.sh.
set -euo pipefail
bin="$1"
dir="$2"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }
new_secret() { python3 -c 'import base64, os; print("whsec_" + base64.b64encode(os.urandom(32)).decode())' > "$1"; chmod 600 "$1"; }

export CONSENT_SYNC_LOG_LEVEL="${CONSENT_SYNC_LOG_LEVEL:-info}"
export CONSENT_SYNC_RELAY_POLL_INTERVAL_MS=1000
# The sample receivers are plain http on loopback, which a production setup refuses.
export CONSENT_SYNC_HTTP_ALLOWED_SCHEMES="https, http"
export CONSENT_SYNC_HTTP_ALLOW_NETWORKS="127.0.0.0/8"
# Signing secrets are stored encrypted under a master key: 32 random bytes as base64.
python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())' > "$dir/master.key"; chmod 600 "$dir/master.key"
export CONSENT_SYNC_SECRETS_MASTER_KEY_FILE="$dir/master.key"

echo "== migrate"
"$bin" migrate

crm_port="$(free_port)"; email_port="$(free_port)"
new_secret "$dir/crm.secret"; new_secret "$dir/email.secret"
"$bin" receive --port "$crm_port" --secret-file "$dir/crm.secret" --name crm > "$dir/crm.log" &
pids+=($!)
"$bin" receive --port "$email_port" --secret-file "$dir/email.secret" --name email-platform > "$dir/email.log" &
pids+=($!)

echo "== register two downstream systems"
"$bin" subscriber add crm --url "http://127.0.0.1:$crm_port/hooks/consent" --secret-file "$dir/crm.secret"
"$bin" subscriber add email-platform --url "http://127.0.0.1:$email_port/hooks/consent" \
    --purpose marketing_email --secret-file "$dir/email.secret"
"$bin" subscriber list

echo "== start the daemon"
"$bin" run 2> "$dir/daemon.log" &
pids+=($!)

echo "== an application changes consent"
psql -q -v ON_ERROR_STOP=1 <<'SQL'
INSERT INTO consent_sync.consents (subject_id, purpose, status, source) VALUES
    ('customer-1001', 'marketing_email', 'granted', 'signup-form'),
    ('customer-1001', 'ad_personalisation', 'denied', 'signup-form'),
    ('customer-1002', 'marketing_email', 'granted', 'mobile-app');
UPDATE consent_sync.consents SET status = 'withdrawn', source = 'preference-centre'
    WHERE subject_id = 'customer-1001' AND purpose = 'marketing_email';
DELETE FROM consent_sync.consents WHERE subject_id = 'customer-1002';
SQL

echo "== waiting for the webhooks"
for _ in $(seq 1 100); do
    crm=$(grep -c '"type"' "$dir/crm.log" || true)
    email=$(grep -c '"type"' "$dir/email.log" || true)
    [ "$crm" -ge 5 ] && [ "$email" -ge 3 ] && break
    sleep 0.2
done
echo "-- crm received (all purposes):"
cat "$dir/crm.log"
echo "-- email-platform received (marketing_email only):"
cat "$dir/email.log"
echo "== consent-sync status"
"$bin" status

if [ "${crm:-0}" -lt 5 ] || [ "${email:-0}" -lt 3 ]; then
    echo "demo: not every change arrived; daemon log:" >&2
    tail -n 30 "$dir/daemon.log" >&2
    exit 1
fi
echo "demo: all changes arrived (crm: $crm, email-platform: $email)"
if [ -n "${DEMO_EXIT:-}" ] || [ ! -t 0 ]; then
    exit 0
fi
echo "The daemon keeps running; try: psql \"$DATABASE_URL\" -c \"UPDATE consent_sync.consents SET status='granted'\""
echo "Logs in $dir. Press Ctrl-C to stop everything."
tail -f "$dir/crm.log" "$dir/email.log"
