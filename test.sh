#!/usr/bin/env bash
# Runs every tocsin test: unit tests, the SQL logic tests (sql/tests/slt/*.slt) and the
# incremental-vs-batch oracle. Installs whatever test peers the suite needs before running it.
set -euo pipefail
cd "$(dirname "$0")"
cargo test --workspace "$@"
