#!/usr/bin/env bash
# The dashboard's browser tests: a real `teal server` with real demo-app instances,
# driven in headless Chromium by playwright-core under node's test runner.
#
#   crates/teal/tests/browser/run.sh [TEAL_BIN]
#
# Builds nothing: it takes the teal binary from its argument, $TEAL_BIN, or
# target/debug/teal. Needs /usr/bin/chromium (or $CHROMIUM) and `npm ci` done here.
# Screenshots go to target/screenshots/.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../../.." && pwd)"
teal_bin="${1:-${TEAL_BIN:-$root/target/debug/teal}}"
teal_bin="$(cd "$(dirname "$teal_bin")" && pwd)/$(basename "$teal_bin")"
[ -x "$teal_bin" ] || { echo "run.sh: no teal binary at $teal_bin (run cargo build -p teal)" >&2; exit 1; }
[ -d "$here/node_modules/playwright-core" ] || { echo "run.sh: run npm ci in $here first" >&2; exit 1; }

tmp="$(mktemp -d "${TMPDIR:-/tmp}/teal-browser-XXXXXX")"
data="$tmp/data"
pid_file="$tmp/daemon.pid"   # the tests restart the daemon and write the new pid here
mkdir -p "$data"

# Stops the daemon (SIGTERM stops its instances), then anything it left behind.
cleanup() {
    local status=$?
    if [ -s "$pid_file" ]; then
        local pid
        pid="$(cat "$pid_file")"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 150); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    # Instances are process groups of their own; a killed daemon leaves them running.
    for record in "$data"/run/instances/*.json; do
        [ -e "$record" ] || continue
        local instance
        instance="$(grep -o '"pid": *[0-9]*' "$record" | grep -o '[0-9]*$' || true)"
        if [ -n "$instance" ]; then
            kill -KILL -- "-$instance" 2>/dev/null || true
        fi
    done
    if [ "$status" -ne 0 ]; then
        echo "--- daemon log (last 80 lines) ---" >&2
        tail -n 80 "$tmp"/daemon*.log >&2 2>/dev/null || true
    fi
    rm -rf "$tmp"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$teal_bin" server --data-dir "$data" --api 127.0.0.1:0 >"$tmp/daemon.log" 2>&1 &
echo $! >"$pid_file"
disown  # the tests kill and restart it; bash need not report that
for _ in $(seq 1 200); do
    [ -s "$data/api.addr" ] && break
    kill -0 "$(cat "$pid_file")" 2>/dev/null || { echo "run.sh: the daemon exited" >&2; exit 1; }
    sleep 0.1
done
[ -s "$data/api.addr" ] || { echo "run.sh: the daemon wrote no api.addr" >&2; exit 1; }

# The first revisions: "shop" for the cycle, "broken" gets a bad second revision.
{
    TEAL_BIN="$teal_bin" node "$here/spec.mjs" shop v1
    echo "---"
    TEAL_BIN="$teal_bin" node "$here/spec.mjs" broken v1 5
} >"$tmp/rollouts.yaml"
"$teal_bin" --data-dir "$data" apply -f "$tmp/rollouts.yaml" >/dev/null

mkdir -p "$root/target/screenshots"
export TEAL_BIN="$teal_bin" TEAL_DATA_DIR="$data" TEAL_TMP="$tmp" TEAL_PID_FILE="$pid_file"
export TEAL_DAEMON_LOG_DIR="$tmp" SCREENSHOT_DIR="$root/target/screenshots"
# Not TEAL_API: the CLI reads that variable as an address of its own.
TEAL_URL="http://$(cat "$data/api.addr")"
export TEAL_URL
export TEAL_TOKEN_FILE="$data/token"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

cd "$here"
node --test --test-reporter=spec "$here"/*.test.mjs
