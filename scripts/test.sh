#!/usr/bin/env bash
# The whole test suite, on a fresh machine: formatting, lints, every test.
# What the tests need beyond the Rust toolchain is installed here first.
set -euo pipefail
cd "$(dirname "$0")/.."

# python3 serves as a plain HTTP app in the platform's tests.
if ! command -v python3 >/dev/null; then
    sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
    sudo_if_needed apt-get update -q
    sudo_if_needed apt-get install -y -q python3
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast
fi
