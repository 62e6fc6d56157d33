#!/usr/bin/env bash
# scripts/build-release.sh: teal's release binary, built with profile-guided
# optimization (PGO). Prints the binary's path on standard output.
#
# Three steps, each in its own target directory under target/ so the plain build in
# target/release is never touched:
#   1. an instrumented build (target/pgo-generate), which counts what runs;
#   2. training: that binary runs a daemon proxying a rollout of
#      crates/teal-proxy/examples/bench_backend.rs, loaded with wrk (keep-alive
#      connections, then a new connection per request) and HTTP/2 requests from
#      curl; the counts are merged by llvm-profdata;
#   3. the build that uses them (target/pgo).
# The request path then takes about a quarter fewer instructions (callgrind, README
# Performance). Needs the llvm-tools rustup component (installed when missing), wrk
# and curl (Debian packages, installed when missing).
#
# Settings (environment): TRAIN_SECONDS (the keep-alive load, default 10).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TRAIN_SECONDS=${TRAIN_SECONDS:-10}
HOST=$(rustc -vV | sed -n 's/^host: //p')
PROFDATA="$(rustc --print sysroot)/lib/rustlib/$HOST/bin/llvm-profdata"
GENERATE_DIR="$ROOT/target/pgo-generate"
USE_DIR="$ROOT/target/pgo"
PROFILES="$ROOT/target/pgo-profiles"
# A plain build of the backend the training proxies (not instrumented: its counts
# would be hyper's server side, which teal's profile must not take for its own).
BACKEND_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/bench_backend"

say() { printf '== %s\n' "$*" >&2; }
die() {
    printf 'build-release.sh: %s\n' "$*" >&2
    exit 1
}

# Cargo's own output goes to standard error: standard output carries only the path.
cargo_build() { (cd "$ROOT" && cargo build --release --locked "$@") >&2; }

need_tools() {
    if [ ! -x "$PROFDATA" ]; then
        say "adding the llvm-tools component (llvm-profdata, matching rustc's LLVM)"
        rustup component add llvm-tools >&2 || die "cannot add the llvm-tools component; without llvm-profdata there is no PGO build"
        [ -x "$PROFDATA" ] || die "llvm-tools is installed but $PROFDATA is missing"
    fi
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    command -v curl >/dev/null || missing+=(curl)
    if [ "${#missing[@]}" -gt 0 ]; then
        local sudo=()
        [ "$(id -u)" = 0 ] || sudo=(sudo)
        say "installing ${missing[*]}"
        "${sudo[@]}" apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    fi
}

# --target makes RUSTFLAGS apply to teal alone, not to build scripts and proc macros
# (which would otherwise be instrumented too, and write profiles as they run).
build_with() {
    local flags=$1 dir=$2
    RUSTFLAGS="${RUSTFLAGS:-} $flags" CARGO_TARGET_DIR=$dir cargo_build -p teal --bin teal --target "$HOST"
}

# Runs the instrumented daemon under proxy traffic; leaves its counts in $PROFILES/raw.
train() {
    local teal="$GENERATE_DIR/$HOST/release/teal" work
    work=$(mktemp -d "${TMPDIR:-/tmp}/teal-pgo.XXXXXX")
    rm -rf "$PROFILES/raw"
    mkdir -p "$PROFILES/raw"
    export LLVM_PROFILE_FILE="$PROFILES/raw/teal-%m-%p.profraw"
    "$teal" server --data-dir "$work/teal" --api 127.0.0.1:0 >"$work/server.log" 2>&1 &
    local server=$!
    # Whatever happens, the daemon (and with it the backend it runs) is stopped.
    trap 'kill -TERM '"$server"' 2>/dev/null || true' EXIT
    for _ in $(seq 100); do
        [ -s "$work/teal/api.addr" ] && break
        sleep 0.1
    done
    [ -s "$work/teal/api.addr" ] || die "the instrumented daemon did not start; see $work/server.log"
    sed -e 's#@NAME@#train#' -e "s#@COMMAND@#\"$BACKEND_BIN\", \"--port\", \"\$(PORT)\"#" \
        "$ROOT/bench/rollout.yaml" >"$work/rollout.yaml"
    "$teal" --data-dir "$work/teal" apply -f "$work/rollout.yaml" --wait --timeout 60s >&2
    local url
    url="http://$("$teal" --data-dir "$work/teal" get train -o json | sed -n 's/.*"active_listen": *"\([^"]*\)".*/\1/p')/"
    [ "$url" != "http:///" ] || die "the training rollout has no active address"
    say "training on $url for $((TRAIN_SECONDS + 4)) s"
    # Not the benchmark's load (bench/proxy.sh: 64 connections, `GET /` with wrk's
    # bare headers): fewer connections, and requests with a query and the headers a
    # browser sends.
    wrk -t2 -c24 -d"${TRAIN_SECONDS}s" -H 'User-Agent: Mozilla/5.0 (X11; Linux x86_64)' \
        -H 'Accept: text/html,application/xhtml+xml;q=0.9,*/*;q=0.8' -H 'Accept-Encoding: gzip, br' \
        -H 'Accept-Language: en-GB,en;q=0.7' -H 'Cookie: session=8c1f0e; theme=dark' \
        "${url}shop/items?page=2" >&2
    wrk -t1 -c8 -d2s -H 'Connection: close' "$url" >&2
    for _ in $(seq 200); do
        curl -s -o /dev/null --http2-prior-knowledge "$url" || break
    done
    kill -TERM "$server"
    # The counts are written as the process exits normally.
    wait "$server" || die "the instrumented daemon exited with an error; see $work/server.log"
    trap - EXIT
    rm -rf "$work"
    unset LLVM_PROFILE_FILE
    compgen -G "$PROFILES/raw/*.profraw" >/dev/null || die "the training wrote no profile"
}

need_tools
say "building the training backend"
cargo_build -p teal-proxy --example bench_backend
say "building teal instrumented ($GENERATE_DIR)"
build_with "-Cprofile-generate=$PROFILES/raw" "$GENERATE_DIR"
# The profile is kept while the instrumented binary and this script are the same: a new profile makes
# cargo build every crate again.
stamp=$(cat "$GENERATE_DIR/$HOST/release/teal" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)
if [ -s "$PROFILES/teal.profdata" ] && [ "$(cat "$PROFILES/trained-on" 2>/dev/null)" = "$stamp" ]; then
    say "teal is unchanged since the last training: its profile is used again"
else
    train
    "$PROFDATA" merge -o "$PROFILES/teal.profdata" "$PROFILES"/raw/*.profraw
    echo "$stamp" >"$PROFILES/trained-on"
fi
say "building teal with the profile ($USE_DIR)"
build_with "-Cprofile-use=$PROFILES/teal.profdata" "$USE_DIR"
echo "$USE_DIR/$HOST/release/teal"
