#!/usr/bin/env bash
# Runs every tocsin test: unit tests, the SQL logic tests (sql/tests/slt/*.slt and the examples
# of docs/sql.md), the subscription tests, the incremental-vs-batch oracle and the end-to-end tests
# against the tocsin binary. First installs the test peers the end-to-end tests talk to when they
# are missing: Python's aiosmtpd (a real SMTP server) and psycopg (a PostgreSQL client) with pip,
# Prometheus Alertmanager, psql, net-snmp (snmpd, snmpbulkwalk, snmptrap, snmpinform) and
# Chromium (the console's browser tests) with apt-get. Ends with one line that adds up every test
# binary's results.
set -euo pipefail
cd "$(dirname "$0")"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! python3 -c 'import aiosmtpd' 2>/dev/null; then
  python3 -m pip install --quiet aiosmtpd
fi
if ! python3 -c 'import psycopg' 2>/dev/null; then
  python3 -m pip install --quiet 'psycopg[binary]'
fi
packages=()
command -v prometheus-alertmanager >/dev/null || packages+=(prometheus-alertmanager)
command -v psql >/dev/null || packages+=(postgresql-client)
command -v snmpd >/dev/null || packages+=(snmpd)
command -v snmpbulkwalk >/dev/null || packages+=(snmp)
command -v chromium >/dev/null || packages+=(chromium chromium-driver)
if [ ${#packages[@]} -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
  # The tests run private snmpd instances on their own ports; the packaged service is not needed.
  if [[ " ${packages[*]} " == *" snmpd "* ]]; then
    as_root service snmpd stop >/dev/null 2>&1 || true
  fi
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace "$@" 2>&1 | tee "$log" || status=$?
awk '
  /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
  /^[0-9]+ passed, [0-9]+ failed$/ { p += $1; f += $3 }
  END { printf "\ntotal: %d passed, %d failed\n", p, f }
' "$log"
exit "$status"
