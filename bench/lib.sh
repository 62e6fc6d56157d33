# Shared by bench/proxy.sh and bench/switch.sh: installing tools, building, free
# ports, starting and always stopping the processes a run starts, /proc readings.
# Sourced, not run.
# shellcheck shell=bash
# shellcheck disable=SC2034 # the paths below are used by the scripts that source this

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$ROOT/bench"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TEAL="$TARGET_DIR/release/teal"
BACKEND_BIN="$TARGET_DIR/release/examples/bench_backend"
SWITCH_BIN="$TARGET_DIR/release/examples/switch_bench"

# Every process a run starts, stopped (TERM, then KILL) at exit whatever happens.
PIDS=()
RUN_DIR=""

say() { printf '\n== %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

cleanup() {
    local status=$?
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    # Up to 10 s for a graceful exit (teal stops its instances on SIGTERM).
    for _ in $(seq 100); do
        local alive=0
        for pid in "${PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [ -n "$RUN_DIR" ] && [ -d "$RUN_DIR" ]; then
        if [ "$status" != 0 ] || [ "${KEEP_TMP:-0}" = 1 ]; then
            echo "logs and configs kept in $RUN_DIR" >&2
        else
            rm -rf "$RUN_DIR"
        fi
    fi
    exit "$status"
}

# Starts a command in the background, logging to FILE; its pid is in $LAST_PID.
start() {
    local log=$1
    shift
    "$@" >"$log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# Stops one process started with `start` (TERM, then KILL after 10 s) and waits for it.
stop() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

run_dir() {
    RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/teal-bench.XXXXXX")
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}

# Installs the Debian packages that provide the given commands, when missing.
# Arguments are command:package pairs.
need() {
    local missing=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    [ "${#missing[@]}" = 0 ] && return 0
    local sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    say "installing ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    # policy-rc.d or not, the packages' own services are never used: every proxy here
    # runs in the foreground with its files in the run's temporary directory.
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Builds the bench examples and teal's plain release binary.
build() {
    say "building teal and the bench examples (release)"
    local log
    log=$(mktemp)
    if ! (cd "$ROOT" && cargo build --release -p teal -p teal-proxy --bin teal \
        --example bench_backend --example switch_bench) >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        rm -f "$log"
        die "the release build failed"
    fi
    tail -n 1 "$log" >&2
    rm -f "$log"
}

# Points TEAL at the binary to measure: by default the release binary of
# scripts/build-release.sh (profile-guided optimization, as teal is meant to be
# shipped); with PGO=0 the plain one of `build`. TEAL_BUILD says which, for the report.
build_release() {
    if [ "${PGO:-1}" = 0 ]; then
        TEAL_BUILD="cargo build --release (PGO=0)"
        return
    fi
    say "building teal's release binary with PGO (scripts/build-release.sh)"
    local log
    log=$(mktemp)
    if ! TEAL=$(bash "$ROOT/scripts/build-release.sh" 2>"$log"); then
        tail -n 40 "$log" >&2
        rm -f "$log"
        die "the PGO build failed (PGO=0 measures the plain release build)"
    fi
    rm -f "$log"
    TEAL_BUILD="scripts/build-release.sh (profile-guided)"
    echo "teal binary: $TEAL" >&2
}

# A free TCP port on 127.0.0.1: nothing accepts a connection there now, and this run
# has not handed it out before (its user may not have bound it yet). Writes the port
# to the variable named by $1 (a command substitution would forget the ports given).
GIVEN_PORTS=" "
free_port() {
    local candidate
    while :; do
        candidate=$((20000 + RANDOM % 20000))
        case "$GIVEN_PORTS" in *" $candidate "*) continue ;; esac
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then
            GIVEN_PORTS="$GIVEN_PORTS$candidate "
            printf -v "$1" '%s' "$candidate"
            return
        fi
    done
}

# Waits until URL answers (any HTTP status), up to 10 s.
wait_http() {
    local url=$1
    for _ in $(seq 100); do
        curl -s -o /dev/null --max-time 1 "$url" && return 0
        sleep 0.1
    done
    die "nothing answers on $url"
}

# Renders a config template: every @KEY@ given as KEY=VALUE, then @TMP@ as the run's
# directory unless given.
render() {
    local template=$1 out=$2
    shift 2
    local script="" pair
    for pair in "$@"; do
        script="${script}s#@${pair%%=*}@#${pair#*=}#g;"
    done
    sed -e "${script}s#@TMP@#$RUN_DIR#g" "$template" >"$out"
}

# A pid and its children (nginx's master and workers).
with_children() {
    local pid
    for pid in "$@"; do
        echo "$pid"
        pgrep -P "$pid" 2>/dev/null || true
    done
}

# Sum of a /proc/PID/status field (VmHWM, VmRSS) over the pids, in KiB.
status_kib() {
    local field=$1
    shift
    local pid total=0 value
    for pid in "$@"; do
        value=$(awk -v f="$field:" '$1 == f { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
        total=$((total + ${value:-0}))
    done
    echo "$total"
}

# CPU time (user + system) of the pids, in clock ticks.
cpu_ticks() {
    local pid total=0 ticks
    for pid in "$@"; do
        # Fields after the command name, which may hold spaces: utime is 14, stime 15.
        ticks=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{ print $12 + $13 }' || true)
        total=$((total + ${ticks:-0}))
    done
    echo "$total"
}

machine() {
    printf '%s, %s cores (%s), %s GiB, %s' \
        "$(date -u '+%Y-%m-%d %H:%M UTC')" "$(nproc)" \
        "$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)" \
        "$(awk '/MemTotal/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo)" \
        "$(uname -sr)"
}

# Warns when something else keeps the CPUs busy (a build, a test run): the figures
# would then say more about that than about the proxies. Call it before starting.
busy_check() {
    local a1 a2 a3 a4 a5 a6 a7 a8 b1 b2 b3 b4 b5 b6 b7 b8
    read -r _ a1 a2 a3 a4 a5 a6 a7 a8 _ </proc/stat
    sleep 1
    read -r _ b1 b2 b3 b4 b5 b6 b7 b8 _ </proc/stat
    local busy=$(((b1 + b2 + b3 + b6 + b7 + b8) - (a1 + a2 + a3 + a6 + a7 + a8)))
    local total=$(((b1 + b2 + b3 + b4 + b5 + b6 + b7 + b8) - (a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8)))
    local percent=$((100 * busy / (total > 0 ? total : 1)))
    if [ "$percent" -gt 10 ]; then
        echo "WARNING: the machine was ${percent}% busy before the run started; the figures are not comparable with a quiet machine's:" >&2
        ps -eo pcpu,comm --sort=-pcpu | head -n 6 >&2
    else
        echo "machine idle before the run (${percent}% busy)" >&2
    fi
}

# Busy and total CPU ticks of the whole machine (all cores), from /proc/stat.
machine_ticks() {
    awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit }' /proc/stat
}

# CPU ticks of this shell's finished children (wrk, once it has been waited for).
children_ticks() {
    sed 's/.*) //' "/proc/$$/stat" | awk '{ print $14 + $15 }'
}
