#!/usr/bin/env bash
# End-to-end benchmark of gfcache against gfserver, measured in the same run on the same files.
#
#   1. gfserver on the file set: 1 KiB hits x 32 client connections (req/s, p50, p99), 1 KiB x
#      1 connection (p50: the baseline for the cache hop), 64 MiB x 1 connection (MB/s).
#   2. For each backend (directory, memory, pack): gfsupervisor with the proxy and the caches,
#      the same three loads, and the ratios to gfserver. The memory backend starts empty and is
#      warmed through an origin (python3 -m http.server on the file set) before it is measured.
#   3. A miss-heavy run: the memory backend in front of the origin, every request a path never
#      asked before (miss -> origin -> fill).
#
# Goals (ratios to gfserver in the same run): >= 0.7 for 1 KiB x 32, >= 0.85 for 64 MiB x 1,
# and a cache hop of at most 100 us at p50 (proxy p50 - gfserver p50, 1 KiB x 1 connection).
#
# usage: bench/e2e.sh [FILESET_DIR]
# env:   SMALL_SECS (10) LATENCY_SECS (5) BIG_SECS (10) MISS_REQUESTS (5000)
#        BACKENDS ("directory memory pack") THREADS (16, server and proxy workers)
#        CACHES (2) SEGMENTS (16) SEGMENT_SIZE (1MiB)
#        GF_BIN_DIR (prebuilt binaries; default: cargo build --release)
#        PROFILE (unset; set to 1 to record `perf record -g` of the proxy during the 1 KiB run
#                 of each backend into the work directory, kept with KEEP_WORK=1)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

small_secs=${SMALL_SECS:-10}
latency_secs=${LATENCY_SECS:-5}
big_secs=${BIG_SECS:-10}
miss_requests=${MISS_REQUESTS:-5000}
backends=${BACKENDS:-directory memory pack}
threads=${THREADS:-16}
caches=${CACHES:-2}
segments=${SEGMENTS:-16}
segment_size=${SEGMENT_SIZE:-1MiB}

# ---------------------------------------------------------------------------------------------
# Helpers: make_fileset, free_port, wait_for_line, wait_http, json_field, machine_json

. "$root/bench/lib.sh"

# ---------------------------------------------------------------------------------------------
# Build, file set, cleanup

if [[ -z ${GF_BIN_DIR:-} ]]; then
    (cd "$root" && cargo build --release --bin gfserver --bin gfclient --bin gfsupervisor \
        --bin gfpack)
    GF_BIN_DIR=$root/target/release
fi
gfserver=$GF_BIN_DIR/gfserver
gfclient=$GF_BIN_DIR/gfclient
gfsupervisor=$GF_BIN_DIR/gfsupervisor
gfpack=$GF_BIN_DIR/gfpack

work=$(mktemp -d)
fileset=${1:-$work/fileset}
pids=()
configs=()
cleanup() {
    local config pid
    for config in "${configs[@]}"; do
        "$gfsupervisor" stop -c "$config" >/dev/null 2>&1 || true
    done
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n ${KEEP_WORK:-} ]]; then
        echo "work directory kept: $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

echo "making the file set in $fileset" >&2
make_fileset "$fileset"

# The miss set: MISS_REQUESTS files of 1 KiB that no run asked before (under the origin only).
missdir=$work/miss-origin
mkdir -p "$missdir/miss"
python3 - "$missdir" "$miss_requests" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
with open(os.path.join(root, "miss.txt"), "w") as workload:
    for i in range(n):
        with open(os.path.join(root, "miss", f"m{i:06d}"), "wb") as f:
            f.write(os.urandom(1024))
        workload.write(f"/miss/m{i:06d}\n")
PY
# The origin serves the file set plus the miss set.
ln -s "$fileset/small" "$missdir/small"
ln -s "$fileset/big" "$missdir/big"
origin_port=$(free_port)
(cd "$missdir" && exec python3 -m http.server "$origin_port" --bind 127.0.0.1) \
    >"$work/origin.log" 2>&1 &
pids+=($!)
origin=http://127.0.0.1:$origin_port
wait_http "$origin/small/f0000" 30

# run_load ADDR WORKLOAD CONNECTIONS LIMIT...: prints the JSON summary line.
run_load() {
    local addr=$1 workload=$2 connections=$3
    shift 3
    "$gfclient" load --server "$addr" --workload "$workload" --connections "$connections" "$@" \
        --json | tail -n 1
}

# check_pass ADDR WORKLOAD CONNECTIONS LIMIT...: a load run that verifies every body; exits on a
# failure.
check_pass() {
    local addr=$1 workload=$2
    local summary
    summary=$(run_load "$@" --verify "$(dirname "$workload")")
    if [[ $(json_field "$summary" ok) != $(json_field "$summary" requests) ]]; then
        echo "verification run on $addr failed: $summary" >&2
        exit 1
    fi
}

# measure NAME ADDR: the three hit loads against ADDR; sets small, latency and big.
measure() {
    local name=$1 addr=$2 perf_pid=
    # A verified pass over every file first (it also warms the page cache and the server); the
    # timed runs below do not verify, so that the client's comparing does not eat the CPUs.
    check_pass "$addr" "$fileset/small.txt" 8 --requests 2000
    check_pass "$addr" "$fileset/big.txt" 1 --requests 2
    if [[ -n ${PROFILE:-} && $name != gfserver ]]; then
        local proxy_pid
        proxy_pid=$(pgrep -f "gfsupervisor.*role proxy" | head -n 1 || true)
        if [[ -n $proxy_pid ]]; then
            perf record -g -o "$work/perf-$name.data" -p "$proxy_pid" >/dev/null 2>&1 &
            perf_pid=$!
        fi
    fi
    small=$(run_load "$addr" "$fileset/small.txt" 32 --duration "$small_secs")
    if [[ -n $perf_pid ]]; then
        kill -INT "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" 2>/dev/null || true
        perf report -i "$work/perf-$name.data" --no-children --percent-limit 1 --stdio \
            >"$work/perf-$name.txt" 2>/dev/null || true
        echo "profile of the proxy ($name, 1 KiB x 32): $work/perf-$name.txt" >&2
    fi
    latency=$(run_load "$addr" "$fileset/small.txt" 1 --duration "$latency_secs")
    big=$(run_load "$addr" "$fileset/big.txt" 1 --duration "$big_secs")
    printf '%-10s 1 KiB x 32: %8.0f req/s p50 %6s us p99 %6s us | 1 KiB x 1: p50 %5s us | 64 MiB x 1: %7.1f MB/s | failed %s/%s/%s\n' \
        "$name" "$(json_field "$small" req_per_s)" "$(json_field "$small" p50_us)" \
        "$(json_field "$small" p99_us)" "$(json_field "$latency" p50_us)" \
        "$(json_field "$big" mb_per_s)" "$(json_field "$small" failed)" \
        "$(json_field "$latency" failed)" "$(json_field "$big" failed)" >&2
}

# ---------------------------------------------------------------------------------------------
# 1. gfserver baseline

"$gfserver" --root "$fileset" --listen 127.0.0.1:0 --threads "$threads" \
    >"$work/gfserver.out" 2>"$work/gfserver.err" &
server_pid=$!
pids+=("$server_pid")
addr=$(wait_for_line "$work/gfserver.out" '^listening on ' | sed 's/^listening on //')
measure gfserver "$addr"
base_small=$small base_latency=$latency base_big=$big
kill -TERM "$server_pid"
wait "$server_pid" || true

# ---------------------------------------------------------------------------------------------
# 2. gfsupervisor per backend

pack=$work/content.pack
if [[ " $backends " == *" pack "* ]]; then
    "$gfpack" build "$fileset" -o "$pack" >&2
fi

# write_config FILE BACKEND LISTEN METRICS [ORIGIN]
write_config() {
    local file=$1 backend=$2 listen=$3 metrics=$4 with_origin=${5:-}
    {
        echo "[proxy]"
        echo "listen = \"$listen\""
        echo "threads = $threads"
        echo "max_object_size = \"128MiB\""
        [[ -n $with_origin ]] && echo "origin = \"$with_origin\""
        echo
        echo "[ipc]"
        echo "segments = $segments"
        echo "segment_size = \"$segment_size\""
        echo
        echo "[cache]"
        echo "processes = $caches"
        echo "backend = \"$backend\""
        echo "directory = { root = \"$fileset\" }"
        echo "memory = { capacity = \"512MiB\", max_object_size = \"128MiB\" }"
        echo "pack = { path = \"$pack\" }"
        echo
        echo "[supervisor]"
        echo "run_dir = \"$work/run-$backend\""
        echo "metrics_listen = \"$metrics\""
    } >"$file"
}

# start_supervisor NAME BACKEND [ORIGIN]: sets addr, metrics and config.
start_supervisor() {
    local name=$1 backend=$2 with_origin=${3:-}
    addr=127.0.0.1:$(free_port)
    metrics=127.0.0.1:$(free_port)
    config=$work/$name.toml
    write_config "$config" "$backend" "$addr" "$metrics" "$with_origin"
    configs+=("$config")
    "$gfsupervisor" start -c "$config" >"$work/$name.out" 2>"$work/$name.err" &
    pids+=($!)
    if ! wait_http "http://$metrics/readyz" 60; then
        tail -n 20 "$work/$name.err" >&2
        exit 1
    fi
}

stop_supervisor() {
    "$gfsupervisor" stop -c "$config" >/dev/null 2>&1 || true
}

# metric NAME [LABEL]: the sum of a metric's samples at /metrics (those with LABEL if given).
metric() {
    curl -sf "http://$metrics/metrics" |
        awk -v name="$1" -v label="${2:-}" '
            ($1 == name || index($1, name "{") == 1) && index($1, label) > 0 { sum += $NF }
            END { printf "%d\n", sum }'
}

# lookups: cache lookups by result and fallbacks so far, as one line.
lookups() {
    printf 'lookups: hit %s, miss %s, error %s; fallbacks %s; origin fetches %s; fills stored %s, dropped %s' \
        "$(metric gfcache_cache_lookups_total 'result="hit"')" \
        "$(metric gfcache_cache_lookups_total 'result="miss"')" \
        "$(metric gfcache_cache_lookups_total 'result="error"')" \
        "$(metric gfcache_origin_fallbacks_total)" "$(metric gfcache_origin_fetches_total)" \
        "$(metric gfcache_fills_total 'result="stored"')" \
        "$(metric gfcache_fills_total 'result="dropped"')"
}

results=("\"gfserver\": {\"small_1k_32t\": $base_small, \"small_1k_1t\": $base_latency, \"big_64m_1t\": $base_big}")
rows=()
notes=()
for backend in $backends; do
    if [[ $backend == memory ]]; then
        start_supervisor "$backend" memory "$origin"
        # Warm: every file once, through the origin, into the caches.
        run_load "$addr" "$fileset/small.txt" 4 --requests 1000 >/dev/null
        run_load "$addr" "$fileset/big.txt" 1 --requests 2 >/dev/null
    else
        start_supervisor "$backend" "$backend"
    fi
    measure "$backend" "$addr"
    echo "$backend $(lookups)" >&2
    notes+=("$backend $(lookups)")
    stop_supervisor
    results+=("\"$backend\": {\"small_1k_32t\": $small, \"small_1k_1t\": $latency, \"big_64m_1t\": $big}")
    rows+=("$(python3 - "$backend" "$base_small" "$base_latency" "$base_big" "$small" "$latency" "$big" <<'PY'
import json, sys
name = sys.argv[1]
bs, bl, bb, s, l, b = (json.loads(a) for a in sys.argv[2:])
ratio_small = s["req_per_s"] / bs["req_per_s"] if bs["req_per_s"] else 0
ratio_big = b["mb_per_s"] / bb["mb_per_s"] if bb["mb_per_s"] else 0
hop = l["p50_us"] - bl["p50_us"]
print(f'{name:<10} {s["req_per_s"]:>9.0f} {s["p50_us"]:>7} {s["p99_us"]:>7} {ratio_small:>6.2f}'
      f'{"" if ratio_small >= 0.7 else "!":1} {b["mb_per_s"]:>8.1f} {ratio_big:>6.2f}'
      f'{"" if ratio_big >= 0.85 else "!":1} {l["p50_us"]:>7} {hop:>6}{"" if hop <= 100 else "!":1}')
PY
)")
done

# ---------------------------------------------------------------------------------------------
# 3. Miss-heavy: memory backend in front of the origin, every path new

start_supervisor miss memory "$origin"
miss=$(run_load "$addr" "$missdir/miss.txt" 32 --requests "$miss_requests" --verify "$missdir")
origin_fetches=$(metric gfcache_origin_fetches_total)
notes+=("miss $(lookups)")
stop_supervisor
results+=("\"miss_memory_origin\": $miss")

# ---------------------------------------------------------------------------------------------
# Report

{
    echo
    echo "gfcache end-to-end, $(date -u +%FT%TZ), $(nproc) CPUs, $caches caches, $threads threads, $segments x $segment_size segments"
    printf '%-10s %9s %7s %7s %7s %8s %7s %7s %7s\n' "" "1K req/s" "p50 us" "p99 us" "ratio" \
        "64M MB/s" "ratio" "1K p50" "hop us"
    printf '%-10s %9.0f %7s %7s %7s %8.1f %7s %7s %7s\n' gfserver \
        "$(json_field "$base_small" req_per_s)" "$(json_field "$base_small" p50_us)" \
        "$(json_field "$base_small" p99_us)" "1.00" "$(json_field "$base_big" mb_per_s)" "1.00" \
        "$(json_field "$base_latency" p50_us)" "-"
    for row in "${rows[@]}"; do
        echo "$row"
    done
    echo "(goals: 1K ratio >= 0.7, 64M ratio >= 0.85, hop <= 100 us; '!' marks a miss)"
    for note in "${notes[@]}"; do
        echo "  $note"
    done
    printf 'miss-heavy (memory + origin, %s unique 1 KiB paths, 32 connections): %.0f req/s p50 %s us p99 %s us, ok %s, failed %s, origin fetches counted %s\n' \
        "$miss_requests" "$(json_field "$miss" req_per_s)" "$(json_field "$miss" p50_us)" \
        "$(json_field "$miss" p99_us)" "$(json_field "$miss" ok)" "$(json_field "$miss" failed)" \
        "$origin_fetches"
}

mkdir -p "$root/bench/results"
out=$root/bench/results/e2e-$(date -u +%Y%m%dT%H%M%SZ).json
{
    printf '{"bench": "e2e", "date": "%s", "machine": %s, "threads": %s, "caches": %s, "segments": %s, "segment_size": "%s", ' \
        "$(date -u +%FT%TZ)" "$(machine_json)" "$threads" "$caches" "$segments" "$segment_size"
    (IFS=,; printf '%s' "${results[*]}")
    printf '}\n'
} >"$out"
echo "results: $out" >&2
