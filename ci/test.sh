#!/usr/bin/env bash
# The whole test suite: every crate's unit and integration tests (release
# build: the power-cut and emulator tests run many thousands of commands).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test (workspace, release)"
cargo test --workspace --release
