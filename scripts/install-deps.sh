#!/usr/bin/env bash
# Installs the system packages consent-sync needs to build, test and run its demo,
# when they are missing. Uses sudo when not root.
set -euo pipefail

need=()
[ -f /usr/include/postgresql/libpq-fe.h ] || need+=(libpq-dev)
[ -f /usr/include/x86_64-linux-gnu/curl/curl.h ] || [ -f /usr/include/curl/curl.h ] || [ -f /usr/include/aarch64-linux-gnu/curl/curl.h ] || need+=(libcurl4-openssl-dev)
command -v pkg-config >/dev/null || need+=(pkg-config)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v python3 >/dev/null || need+=(python3)
python3 -m pip --version >/dev/null 2>&1 || python3 -c "import prometheus_client" 2>/dev/null || need+=(python3-pip)

command -v systemd-analyze >/dev/null || need+=(systemd)

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The tests check /metrics with a real Prometheus text parser.
if ! python3 -c 'import prometheus_client' 2>/dev/null; then
    echo "installing: prometheus_client (Python)" >&2
    python3 -m pip install --quiet prometheus_client 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages prometheus_client 2>/dev/null \
        || { export DEBIAN_FRONTEND=noninteractive; $sudo apt-get install -y -qq python3-prometheus-client >/dev/null; }
fi
