#!/usr/bin/env bash
# The whole test suite: every crate's unit and integration tests (release
# build: the power-cut and emulator tests run many thousands of commands),
# then the durability contract under 1,000 random power cuts with
# power-loss protection on and off, at both sector sizes.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== power-cut torture (1,000 cuts per setting)"
cargo build --release -q -p iomem
./target/release/iomem torture --new-card 64MiB --cuts 1000 --seed 1 --powerloss-protection on
./target/release/iomem torture --new-card 64MiB --cuts 1000 --seed 2 --powerloss-protection off
./target/release/iomem torture --new-card 64MiB --cuts 1000 --seed 3 --powerloss-protection off --sector-size 512

echo "== cargo test (workspace, release)"
cargo test --workspace --release
