#!/usr/bin/env bash
# bench/switch.sh: switching between two colors under load, teal against nginx and
# Caddy.
#
# crates/teal-proxy/examples/switch_bench.rs keeps CONNECTIONS keep-alive connections
# busy with GET / and checks every answer's color while it switches:
# - teal: an in-process teal_proxy::Proxy in front of two in-process backends, switched
#   with Proxy::set_routes SWITCHES times, then RSS_SWITCHES more to watch memory;
# - nginx: two bench_backend processes; a switch rewrites the upstream and runs
#   `nginx -s reload`;
# - Caddy: the same backends; a switch PATCHes the upstream through Caddy's admin API
#   (loopback).
# nginx and Caddy get EXTERNAL_SWITCHES switches (a reload takes far longer than a
# route swap), with PAUSE_MS between them.
#
# Settings (environment): CONNECTIONS (64), SWITCHES (1000), RSS_SWITCHES (10000),
# EXTERNAL_SWITCHES (50), PAUSE_MS (200), KEEP_TMP=1 keeps the run's directory.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

CONNECTIONS=${CONNECTIONS:-64}
SWITCHES=${SWITCHES:-1000}
RSS_SWITCHES=${RSS_SWITCHES:-10000}
EXTERNAL_SWITCHES=${EXTERNAL_SWITCHES:-50}
PAUSE_MS=${PAUSE_MS:-200}

need nginx:nginx caddy:caddy curl:curl
build
run_dir
# The report names the machine and when the run started.
STARTED=$(machine)
say "machine: $STARTED"
busy_check

status=0
port=""
say "teal: $SWITCHES switches, then $RSS_SWITCHES more for memory"
"$SWITCH_BIN" teal --connections "$CONNECTIONS" --switches "$SWITCHES" \
    --rss-switches "$RSS_SWITCHES" | tee "$RUN_DIR/teal.out" || status=1

# Two backends for the external proxies.
for color in blue green; do
    free_port port
    echo "$port" >"$RUN_DIR/port-$color"
    start "$RUN_DIR/backend-$color.log" "$BACKEND_BIN" --port "$port" --color "$color"
    wait_http "http://127.0.0.1:$port/ready"
done
BLUE="127.0.0.1:$(cat "$RUN_DIR/port-blue")"

# Runs switch_bench against a proxy that serves blue now; RSS of PIDS_CMD's processes
# before and after.
external() {
    local name=$1 url=$2 command=$3 pids_cmd=$4
    wait_http "$url"
    [ "$(curl -sf "$url")" = "hello from blue" ] || die "$name does not serve blue at $url"
    local before after
    # shellcheck disable=SC2046 # a list of pids
    before=$(status_kib VmRSS $($pids_cmd))
    "$SWITCH_BIN" external --name "$name" --url "$url" --switch-cmd "$command" \
        --connections "$CONNECTIONS" --switches "$EXTERNAL_SWITCHES" --pause-ms "$PAUSE_MS" \
        | tee "$RUN_DIR/$name.out" || true
    # shellcheck disable=SC2046
    after=$(status_kib VmRSS $($pids_cmd))
    printf 'RSS of %s (all its processes) before %s switches: %.1f MiB, after: %.1f MiB\n' \
        "$name" "$EXTERNAL_SWITCHES" "$(echo "$before" | awk '{ print $1 / 1024 }')" \
        "$(echo "$after" | awk '{ print $1 / 1024 }')" | tee -a "$RUN_DIR/$name.out"
    echo "RSS name=$name rss_before_kib=$before rss_after_kib=$after" >>"$RUN_DIR/$name.out"
}

say "nginx: $EXTERNAL_SWITCHES switches (upstream rewritten, then nginx -s reload)"
free_port port
NGINX="127.0.0.1:$port"
render "$BENCH/nginx.conf" "$RUN_DIR/nginx.conf" "LISTEN=$NGINX"
echo "server $BLUE;" >"$RUN_DIR/nginx-upstream.conf"
NGINX_ARGS="-p $RUN_DIR -c $RUN_DIR/nginx.conf -e $RUN_DIR/nginx-error.log"
# shellcheck disable=SC2086 # NGINX_ARGS: several words, no spaces inside them
start "$RUN_DIR/nginx.out.log" nginx $NGINX_ARGS -g 'daemon off;'
NGINX_PID=$LAST_PID
# shellcheck disable=SC2317 # called through external's argument
nginx_pids() { with_children "$NGINX_PID"; }
external nginx "http://$NGINX/" \
    "echo \"server 127.0.0.1:\$(cat $RUN_DIR/port-{color});\" > $RUN_DIR/nginx-upstream.conf && nginx $NGINX_ARGS -s reload" \
    nginx_pids
stop "$NGINX_PID"

say "Caddy: $EXTERNAL_SWITCHES switches (upstream PATCHed through the admin API)"
free_port port
CADDY="127.0.0.1:$port"
free_port port
ADMIN="127.0.0.1:$port"
render "$BENCH/caddy.json" "$RUN_DIR/caddy.json" "LISTEN=$CADDY" "ADMIN=$ADMIN" "BACKEND=$BLUE"
mkdir -p "$RUN_DIR/caddy-home"
# Caddy keeps its state under HOME/XDG directories: all in the run's directory.
start "$RUN_DIR/caddy.log" env HOME="$RUN_DIR/caddy-home" XDG_DATA_HOME="$RUN_DIR/caddy-home" \
    XDG_CONFIG_HOME="$RUN_DIR/caddy-home" caddy run --config "$RUN_DIR/caddy.json"
CADDY_PID=$LAST_PID
# shellcheck disable=SC2317 # called through external's argument
caddy_pids() { echo "$CADDY_PID"; }
external caddy "http://$CADDY/" \
    "curl -fsS -X PATCH -H 'Content-Type: application/json' -d \"\\\"127.0.0.1:\$(cat $RUN_DIR/port-{color})\\\"\" http://$ADMIN/config/apps/http/servers/bench/routes/0/handle/0/upstreams/0/dial" \
    caddy_pids
stop "$CADDY_PID"

# The summary, from the RESULT lines.
echo
echo "## bench/switch.sh: $STARTED"
echo
echo "$CONNECTIONS keep-alive connections sending GET / back to back; teal: $SWITCHES switches" \
    "(Proxy::set_routes), then $RSS_SWITCHES more for memory; nginx and Caddy: $EXTERNAL_SWITCHES switches" \
    "each (a reload is slow), ${PAUSE_MS} ms apart. Times from the start of the switch call, in ms."
echo
echo "| proxy | switches | requests | failed | old color after the switch returned | switch call p50 / p99 | first new-color answer p50 / p99 | last old-color answer p50 / p99 | RSS before -> after (MiB) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for name in teal nginx caddy; do
    [ -f "$RUN_DIR/$name.out" ] || continue
    grep -h -E '^(RESULT|RSS) ' "$RUN_DIR/$name.out" | tr ' ' '\n' | awk -F= -v n="$name" '
        NF == 2 { v[$1] = $2 }
        END {
            if (!("switches" in v)) { printf "| %s | did not run | | | | | | | |\n", n; exit }
            rss = ("rss_switches" in v) ? sprintf("%.1f -> %.1f (over %d more switches)", v["rss_before_kib"] / 1024, v["rss_after_kib"] / 1024, v["rss_switches"]) \
                : sprintf("%.1f -> %.1f", v["rss_before_kib"] / 1024, v["rss_after_kib"] / 1024)
            failed = v["failed"]
            if (v["conn_errors_reused"] > 0) failed = failed " (" v["conn_errors_reused"] " on closed keep-alive connections)"
            if ("rss_failed" in v) failed = failed " (+" v["rss_failed"] " in the memory phase)"
            printf "| %s | %d | %d | %s | %d of %d | %s / %s | %s / %s | %s / %s | %s |\n", n, v["switches"], v["requests"],
                failed, v["stale"], v["checked"], v["call_p50_ms"], v["call_p99_ms"], v["first_new_p50_ms"],
                v["first_new_p99_ms"], v["last_old_p50_ms"], v["last_old_p99_ms"], rss
        }'
done
echo
echo "teal's RSS is the whole switch_bench process (proxy, clients and both backends); nginx's is master + workers; Caddy's its one process."
exit "$status"
