#!/usr/bin/env bash
# Runs every tocsin test: unit tests, the SQL logic tests (sql/tests/slt/*.slt and the examples
# of docs/sql.md), the subscription tests and the incremental-vs-batch oracle. Installs whatever
# test peers the suite needs before running it (none yet beyond cargo: the end-to-end tests use
# the tocsin binary that cargo builds, and Rust HTTP and WebSocket clients). Ends with one line that
# adds up every test binary's results.
set -euo pipefail
cd "$(dirname "$0")"
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
