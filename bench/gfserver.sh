#!/usr/bin/env bash
# gfserver baseline: req/s for 1 KiB files with 32 client connections, MB/s for 64 MiB files
# with one connection, for sendfile and for read+write bodies. Later benchmarks divide by these.
#
# usage: bench/gfserver.sh [FILESET_DIR]
# env:   SMALL_SECS (10)  BIG_REQUESTS (20)  SERVER_THREADS (16)
#        GF_BIN_DIR (prebuilt gfserver/gfclient; default: cargo build --release)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/bench/lib.sh"

small_secs=${SMALL_SECS:-10}
big_requests=${BIG_REQUESTS:-20}
server_threads=${SERVER_THREADS:-16}

if [[ -z ${GF_BIN_DIR:-} ]]; then
    (cd "$root" && cargo build --release --bin gfserver --bin gfclient)
    GF_BIN_DIR=$root/target/release
fi
gfserver=$GF_BIN_DIR/gfserver
gfclient=$GF_BIN_DIR/gfclient

work=$(mktemp -d)
fileset=${1:-$work/fileset}
server_pid=
cleanup() {
    if [[ -n $server_pid ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

echo "making the file set in $fileset" >&2
make_fileset "$fileset"

# start_server MODE: starts gfserver on a free port; sets server_pid and addr.
start_server() {
    "$gfserver" --root "$fileset" --listen 127.0.0.1:0 --threads "$server_threads" \
        --send-mode "$1" >"$work/server.out" 2>"$work/server.err" &
    server_pid=$!
    addr=$(wait_for_line "$work/server.out" '^listening on ' | sed 's/^listening on //')
}

stop_server() {
    kill -TERM "$server_pid"
    wait "$server_pid" || true
    server_pid=
}

# run_load WORKLOAD CONNECTIONS LIMIT...: prints the JSON summary line.
run_load() {
    local workload=$1 connections=$2
    shift 2
    "$gfclient" load --server "$addr" --workload "$workload" --connections "$connections" "$@" --json |
        tail -n 1
}

results=()
for mode in sendfile read-write; do
    start_server "$mode"
    # Warm the page cache and the server.
    run_load "$fileset/small.txt" 8 --requests 2000 >/dev/null
    run_load "$fileset/big.txt" 1 --requests 2 >/dev/null
    small=$(run_load "$fileset/small.txt" 32 --duration "$small_secs")
    big=$(run_load "$fileset/big.txt" 1 --requests "$big_requests")
    stop_server
    printf '%-10s 1 KiB x 32 conns:  %8.0f req/s  p50 %s us  p99 %s us  failed %s\n' "$mode" \
        "$(json_field "$small" req_per_s)" "$(json_field "$small" p50_us)" \
        "$(json_field "$small" p99_us)" "$(json_field "$small" failed)"
    printf '%-10s 64 MiB x 1 conn:   %8.1f MB/s   p50 %s us  p99 %s us  failed %s\n' "$mode" \
        "$(json_field "$big" mb_per_s)" "$(json_field "$big" p50_us)" \
        "$(json_field "$big" p99_us)" "$(json_field "$big" failed)"
    results+=("\"$mode\": {\"small_1k_32t\": $small, \"big_64m_1t\": $big}")
done

mkdir -p "$root/bench/results"
out=$root/bench/results/gfserver-$(date -u +%Y%m%dT%H%M%SZ).json
{
    printf '{"bench": "gfserver", "date": "%s", "machine": %s, "server_threads": %s, ' \
        "$(date -u +%FT%TZ)" "$(machine_json)" "$server_threads"
    (IFS=,; printf '%s' "${results[*]}")
    printf '}\n'
} >"$out"
echo "results: $out" >&2
