#!/usr/bin/env bash
# The whole test suite, on a fresh machine: formatting, lints, every test.
# What the tests need beyond the Rust toolchain is installed here first.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=
apt_install() {
    if [ -z "$apt_updated" ]; then
        sudo_if_needed apt-get update -q
        apt_updated=1
    fi
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

# python3 serves as a plain HTTP app in the platform's tests.
if ! command -v python3 >/dev/null; then
    apt_install python3
fi
# The dashboard's browser tests drive Debian's Chromium (never a downloaded browser)
# with playwright-core from npm, which needs node 20 or newer.
# The prometheus provider is tested against a real Prometheus scraping teal.
if ! command -v prometheus >/dev/null; then
    apt_install prometheus
fi
if [ ! -x /usr/bin/chromium ]; then
    apt_install chromium
fi
if ! command -v npm >/dev/null; then
    apt_install nodejs npm
fi
if ! node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)'; then
    echo "test.sh: the browser tests need node 20 or newer (found $(node --version))" >&2
    exit 1
fi

# The shell scripts (this one, CI's, the benchmarks', the release build's, the browser
# tests' runner) are linted like the Rust code.
if ! command -v shellcheck >/dev/null; then
    apt_install shellcheck
fi
shellcheck -x .ci/run scripts/*.sh bench/*.sh crates/teal/tests/browser/run.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The Kubernetes controller is behind the `kubernetes` feature: lint that build too.
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
# --all-features: the Kubernetes controller's tests (teal-k8s, and the teal binary
# built with `kubernetes` driven through a kubeconfig) run with everything else.
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --all-features --locked --no-fail-fast
else
    cargo test --workspace --all-features --locked --no-fail-fast
fi

# The dashboard in real headless Chromium against a real daemon and demo-apps.
(cd crates/teal/tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
cargo build -p teal --all-features --locked
crates/teal/tests/browser/run.sh "${CARGO_TARGET_DIR:-target}/debug/teal"
