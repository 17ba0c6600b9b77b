#!/usr/bin/env bash
# Runs every tocsin test: unit tests, the SQL logic tests (sql/tests/slt/*.slt and the examples
# of docs/sql.md, docs/rules.md and docs/ingest.md), the subscription tests, the
# incremental-vs-batch oracle and the end-to-end tests against the tocsin binary. First installs
# the test peers the end-to-end tests talk to when they are missing: Python's aiosmtpd (a real SMTP server), psycopg (a PostgreSQL client),
# influxdb-client and the OpenTelemetry SDK with its OTLP/HTTP exporter with pip; Prometheus
# Alertmanager, Prometheus, node_exporter, psql, net-snmp (snmpd, snmpbulkwalk, snmptrap,
# snmpinform) and Chromium (the console's browser tests) with apt-get. Ends with one line that
# adds up every test binary's results.
set -euo pipefail
cd "$(dirname "$0")"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! python3 -c 'import aiosmtpd' 2>/dev/null; then
  python3 -m pip install --quiet aiosmtpd
fi
if ! python3 -c 'import psycopg' 2>/dev/null; then
  python3 -m pip install --quiet 'psycopg[binary]'
fi
if ! python3 -c 'import influxdb_client' 2>/dev/null; then
  python3 -m pip install --quiet influxdb-client
fi
if ! python3 -c 'import opentelemetry.exporter.otlp.proto.http, opentelemetry.sdk' 2>/dev/null; then
  python3 -m pip install --quiet opentelemetry-sdk opentelemetry-exporter-otlp-proto-http
fi
packages=()
command -v prometheus-alertmanager >/dev/null || packages+=(prometheus-alertmanager)
command -v prometheus >/dev/null || packages+=(prometheus)
command -v prometheus-node-exporter >/dev/null || packages+=(prometheus-node-exporter)
command -v psql >/dev/null || packages+=(postgresql-client)
command -v snmpd >/dev/null || packages+=(snmpd)
command -v snmpbulkwalk >/dev/null || packages+=(snmp)
command -v chromium >/dev/null || packages+=(chromium chromium-driver)
if [ ${#packages[@]} -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
  # The tests run private snmpd instances on their own ports; the packaged service is not needed.
  # The same for Prometheus and node_exporter, which the tests start on free ports.
  for service in snmpd prometheus prometheus-node-exporter; do
    if [[ " ${packages[*]} " == *" $service "* ]]; then
      as_root service "$service" stop >/dev/null 2>&1 || true
    fi
  done
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
