#!/usr/bin/env bash
# The miss path against the origin it fetches from, and the hit path against the base commit, in
# one run. Every figure is set beside a baseline measured in the same run, in ROUNDS rounds that
# measure every server back to back; the report gives the median of the per-round ratios (on two
# shared cores a burst of other work spoils a round, not a server).
#
#   origin  nginx static on the standard file set (bench/lib.sh make_fileset); any path under
#           /m/ is the 64 MiB file big/b0 and any path under /s/ the 1 KiB file small/f0000, so
#           every request can name a path no cache has seen. Its access log counts what
#           reaches it.
#   new     gfsupervisor of this tree: CACHES memory caches in front of the origin, http_listen.
#   base    the same config on gfsupervisor built from BASE_COMMIT (default: main).
#
#   a. 64 MiB misses: each run a fresh path under /m/ through gfcache, fetched by
#      bench/miss_client.py with `Connection: close`: gfcache closes the connection only once
#      the request is done, after the fill was committed, so the time to the close is the miss
#      *with its fill* (the fills stored are counted too). Against curl downloading the same
#      64 MiB from nginx in the same round (and miss_client.py from nginx, for reference).
#      Goal: new / curl >= 0.8. curl through gfcache on another fresh path (to the last byte,
#      as a client sees it) is reported beside it, and so is the CPU the new proxy, its caches
#      and the origin each spent per miss (utime + stime from /proc), the budget to work on.
#   b. 1 KiB misses, CONNECTIONS connections, keep-alive: wrk with every request a new path
#      under /s/, against gfcache (every request a miss: fetch, send, fill) and the same
#      requests straight to nginx. The ratio is reported.
#   c. Hits, new vs base: 1 KiB hits (wrk over the 1000 small files, CONNECTIONS connections)
#      and a 64 MiB hit (curl, big/b0). Goal >= 0.95.
#
# PROFILE=1 adds `perf record -g` of the new proxy during PROFILE_RUNS more 64 MiB misses and
# writes the report into the work directory (kept).
#
# Installs nginx-light, curl, wrk (and linux-perf with PROFILE=1) with apt-get when missing.
#
# usage: bench/miss.sh [FILESET_DIR]
# env:   ROUNDS (5)  SECS (5, each wrk run)  CONNECTIONS (32)  LOAD_THREADS (2)
#        THREADS (16, proxy workers)  CACHES (2)  NGINX_WORKERS (1)
#        BASE_COMMIT (main)  BASE_CACHE (/tmp/gfcache-bench-base: builds kept per commit)
#        GF_BIN_DIR (prebuilt binaries of this tree; default: cargo build --release)
#        CARGO (cargo; e.g. "flock /tmp/gfcache-cargo.lock cargo" on a shared machine)
#        PROFILE (set: perf profile of the new proxy)  PROFILE_RUNS (10)
#        KEEP_WORK (set: keep the work directory with the configs and logs)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/bench/lib.sh"

rounds=${ROUNDS:-5}
secs=${SECS:-5}
connections=${CONNECTIONS:-32}
load_threads=${LOAD_THREADS:-2}
threads=${THREADS:-16}
caches=${CACHES:-2}
nginx_workers=${NGINX_WORKERS:-1}
base_commit=${BASE_COMMIT:-main}
base_cache=${BASE_CACHE:-/tmp/gfcache-bench-base}
profile=${PROFILE:-}
profile_runs=${PROFILE_RUNS:-10}
cargo=${CARGO:-cargo}
big_bytes=$((64 << 20))

# ---------------------------------------------------------------------------------------------
# Tools and builds

profile_tool=()
[[ -z $profile ]] || profile_tool=(perf:linux-perf)
install_missing nginx:nginx-light wrk:wrk curl:curl "${profile_tool[@]}"

if [[ -z ${GF_BIN_DIR:-} ]]; then
    (cd "$root" && $cargo build --release --bin gfsupervisor)
    GF_BIN_DIR=$root/target/release
fi
new_bin=$GF_BIN_DIR/gfsupervisor

base_dir=$(build_at_commit "$base_commit" "$base_cache" gfsupervisor)
base_rev=$(basename "$base_dir")
base_bin=$base_dir/gfsupervisor
gfsupervisor=$new_bin # for bench_cleanup

# ---------------------------------------------------------------------------------------------
# Work directory, file set, cleanup

work=$(mktemp -d)
chmod 755 "$work"
fileset=${1:-$work/fileset}
pids=()
config=
cleanup() {
    [[ -z ${base_config:-} ]] || "$base_bin" stop -c "$base_config" >/dev/null 2>&1 || true
    [[ -n $profile ]] && KEEP_WORK=1
    bench_cleanup
}
trap cleanup EXIT

echo "making the file set in $fileset" >&2
make_fileset "$fileset"

# wait_port PORT SECONDS PID: polls until 127.0.0.1:PORT accepts, while PID lives.
wait_port() {
    local port=$1 deadline=$((SECONDS + $2)) pid=$3
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        if ((SECONDS > deadline)) || ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        sleep 0.05
    done
}

# ---------------------------------------------------------------------------------------------
# The origin

origin_dir=$work/nginx-origin
origin_log=$origin_dir/logs/access.log
mkdir -p "$origin_dir/logs"
origin_port=$(free_port)
user=
[[ $(id -u) == 0 ]] && user="user root;"
cat >"$origin_dir/nginx.conf" <<EOF
$user
worker_processes $nginx_workers;
daemon off;
pid $origin_dir/nginx.pid;
error_log $origin_dir/logs/error.log warn;
events { worker_connections 16384; }
http {
    access_log $origin_log;
    sendfile on;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    server {
        listen 127.0.0.1:$origin_port backlog=4096;
        root $fileset;
        location /m/ { rewrite ^ /big/b0 break; }
        location /s/ { rewrite ^ /small/f0000 break; }
    }
}
EOF
nginx -p "$origin_dir" -c "$origin_dir/nginx.conf" -e "$origin_dir/logs/error.log" \
    >"$origin_dir/out.log" 2>&1 &
origin_pid=$!
pids+=("$origin_pid")
if ! wait_port "$origin_port" 10 "$origin_pid"; then
    cat "$origin_dir/out.log" "$origin_dir/logs/error.log" >&2 || true
    exit 1
fi
origin=127.0.0.1:$origin_port
wait_http "http://$origin/small/f0000" 10
origin_workers=$(pgrep -P "$origin_pid" | tr '\n' ' ')

origin_requests() {
    wc -l <"$origin_log"
}

# ---------------------------------------------------------------------------------------------
# gfcache, new and base

# start_gfcache NAME BINARY [EXTRA]: a supervisor with memory caches in front of the origin
# (EXTRA: more [proxy] lines); sets
# NAME_http, NAME_metrics, NAME_config and NAME_proxy (the proxy's pid).
start_gfcache() {
    local name=$1 bin=$2 dir=$work/$1 http metrics status
    mkdir -p "$dir"
    http=127.0.0.1:$(free_port)
    metrics=127.0.0.1:$(free_port)
    memory_config "$dir/gfcache.toml" "$http" "http://$origin" "$dir/run" "$metrics" "${3:-}"
    "$bin" start -c "$dir/gfcache.toml" >"$dir/out.log" 2>"$dir/err.log" &
    pids+=($!)
    if ! wait_http "http://$metrics/readyz" 60; then
        tail -n 20 "$dir/err.log" >&2
        exit 1
    fi
    status=$("$bin" status --json -c "$dir/gfcache.toml")
    printf -v "${name}_http" '%s' "$http"
    printf -v "${name}_metrics" '%s' "$metrics"
    printf -v "${name}_config" '%s' "$dir/gfcache.toml"
    printf -v "${name}_proxy" '%s' "$(python3 -c 'import json,sys; print(next(c["pid"] for c in json.loads(sys.argv[1])["children"] if c["role"] == "proxy"))' "$status")"
    printf -v "${name}_caches" '%s' "$(python3 -c 'import json,sys; print(" ".join(str(c["pid"]) for c in json.loads(sys.argv[1])["children"] if c["role"] == "cache"))' "$status")"
}
# Hits are timed too: the origin sends no Cache-Control, so its answers are kept a day (a base
# before freshness, d30c7bd, keeps them for ever and knows no such key; a later base gets it
# too, or its every hit would be a revalidation).
start_gfcache new "$new_bin" 'default_ttl = "1d"'
config=$new_config
if git -C "$root" merge-base --is-ancestor d30c7bd "$base_rev" 2>/dev/null; then
    start_gfcache base "$base_bin" 'default_ttl = "1d"'
else
    start_gfcache base "$base_bin"
fi

# metric NAME SERIES: one series of a gfcache's /metrics, summed over its lines.
metric() {
    local metrics_var=${1}_metrics
    curl -sf "http://${!metrics_var}/metrics" |
        awk -v s="$2" 'index($0, s) == 1 { sum += $NF } END { print sum + 0 }'
}

# ---------------------------------------------------------------------------------------------
# Warm-up for the hits: every file of the set through both, every body checked.

warm() {
    python3 - "$1" "$fileset" <<'PY'
import http.client, sys
host, port = sys.argv[1].rsplit(":", 1)
fileset = sys.argv[2]
paths = [f"/small/f{i:04d}" for i in range(1000)] + ["/big/b0"]
for attempt in range(3):
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    misses = 0
    for path in paths:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        with open(fileset + path, "rb") as f:
            if response.status != 200 or body != f.read():
                sys.exit(f"{sys.argv[1]}{path}: status {response.status}, {len(body)} bytes: not the file")
        misses += response.getheader("X-Cache", "") != "HIT"
    if misses == 0:
        break
PY
}
for name in new base; do
    http_var=${name}_http
    warm "${!http_var}"
done
echo "warmed new and base" >&2

# ---------------------------------------------------------------------------------------------
# Measuring

runs=$work/runs.jsonl
: >"$runs"

# big_miss NAME PATH: one 64 MiB miss with its fill through gfcache NAME; its JSON with mb_per_s
# (to the close, fill included) and client_mb_per_s (to the last byte).
big_miss() {
    local http_var=${1}_http result
    result=$(python3 "$root/bench/miss_client.py" "${!http_var}" "$2")
    python3 - "$result" "$big_bytes" <<'PY'
import json, sys
r, size = json.loads(sys.argv[1]), int(sys.argv[2])
if r["status"] != 200 or r["bytes"] != size:
    sys.exit(f"a 64 MiB miss answered {r}")
r["mb_per_s"] = size / r["eof_s"] / 1e6
r["client_mb_per_s"] = size / r["client_s"] / 1e6
print(json.dumps(r))
PY
}

# curl_mb_per_s URL: one curl download of URL, in MB/s.
curl_mb_per_s() {
    curl -sf -o /dev/null -w '%{speed_download}' "$1" |
        python3 -c 'import sys; print(f"{{\"mb_per_s\": {float(sys.stdin.read()) / 1e6}}}")'
}

# The wrk scripts: fresh paths under /s/ (a run id, the thread, a counter) for the misses; the
# 1000 small files in turn for the hits.
cat >"$work/misses.lua" <<'LUA'
local counter = 0
local threads = 0
setup = function(thread)
    thread:set("id", threads)
    threads = threads + 1
end
init = function(args)
    run = args[1] or "r"
end
request = function()
    counter = counter + 1
    return wrk.format(nil, string.format("/s/%s-%d-%d", run, id or 0, counter))
end
LUA
wrk_json_summary >>"$work/misses.lua"
write_fileset_lua "$work/hits.lua"

# wrk_run URL SCRIPT [ARGS...]: a timed wrk run; its summary.
wrk_run() {
    local url=$1 script=$2
    shift 2
    wrk -t "$load_threads" -c "$connections" -d "${secs}s" --latency -s "$script" "$url" "$@" |
        tail -n 1
}

show() {
    echo "  $1: $(python3 -c 'import json,sys; s=json.loads(sys.argv[1]); print(", ".join(f"{k} {s[k]:.1f}" if isinstance(s[k], float) else f"{k} {s[k]}" for k in ("mb_per_s","client_mb_per_s","req_per_s","p50_us","p99_us","failed") if s.get(k) is not None))' "$2")" >&2
}

stored_before_new=$(metric new 'gfcache_fills_total{result="stored"')
stored_before_base=$(metric base 'gfcache_fills_total{result="stored"')
origin_before=$(origin_requests)
tag=$(date +%s)
for round in $(seq 1 "$rounds"); do
    echo "round $round of $rounds" >&2
    # a. 64 MiB misses with their fill, vs curl from nginx.
    result=$(curl_mb_per_s "http://$origin/big/b0")
    keep curl.big "$round" "$result"
    show "curl from nginx, 64 MiB" "$result"
    result=$(python3 "$root/bench/miss_client.py" "$origin" /big/b0)
    result=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r["mb_per_s"]=r["bytes"]/r["eof_s"]/1e6; print(json.dumps(r))' "$result")
    keep client.big "$round" "$result"
    show "miss_client.py from nginx, 64 MiB" "$result"
    for name in new base; do
        # Where the new miss's CPU goes: the proxy, the caches, the origin (from /proc).
        if [[ $name == new ]]; then
            # shellcheck disable=SC2086 # the pid lists split on purpose
            cpu_before=("$(cpu_ticks "$new_proxy")" "$(cpu_ticks $new_caches)" "$(cpu_ticks $origin_workers)")
        fi
        result=$(big_miss "$name" "/m/$tag-$round-$name")
        keep "$name.big_miss" "$round" "$result"
        show "$name 64 MiB miss (fill included)" "$result"
        if [[ $name == new ]]; then
            # shellcheck disable=SC2086
            keep new.big_miss_cpu "$round" "$(python3 -c 'import json,sys; t=int(sys.argv[1]); b=list(map(int,sys.argv[2:5])); a=list(map(int,sys.argv[5:8])); print(json.dumps({k: (y-x)*1000/t for k,x,y in zip(("proxy_ms","caches_ms","origin_ms"),b,a)}))' \
                "$(getconf CLK_TCK)" "${cpu_before[@]}" "$(cpu_ticks "$new_proxy")" "$(cpu_ticks $new_caches)" "$(cpu_ticks $origin_workers)")"
        fi
    done
    # The same with curl, as a client sees it (curl stops at the last byte, before the fill's
    # commit; the wait for the fill's count keeps it out of the next measurement).
    for name in new base; do
        http_var=${name}_http
        stored=$(metric "$name" 'gfcache_fills_total{result="stored"')
        result=$(curl_mb_per_s "http://${!http_var}/m/$tag-$round-$name-curl")
        keep "$name.big_miss_curl" "$round" "$result"
        show "$name 64 MiB miss with curl (to the last byte)" "$result"
        for _ in $(seq 1 100); do
            (($(metric "$name" 'gfcache_fills_total{result="stored"') > stored)) && break
            sleep 0.05
        done
    done
    # b. 1 KiB misses, every request a new path.
    result=$(wrk_run "http://$origin/" "$work/misses.lua" -- "$tag-$round-nginx")
    keep nginx.small_miss "$round" "$result"
    show "nginx, 1 KiB x $connections" "$result"
    for name in new base; do
        http_var=${name}_http
        result=$(wrk_run "http://${!http_var}/" "$work/misses.lua" -- "$tag-$round-$name")
        keep "$name.small_miss" "$round" "$result"
        show "$name 1 KiB misses x $connections" "$result"
    done
    # c. Hits, new vs base.
    for name in new base; do
        http_var=${name}_http
        result=$(wrk_run "http://${!http_var}/" "$work/hits.lua")
        keep "$name.small_hit" "$round" "$result"
        show "$name 1 KiB hits x $connections" "$result"
        result=$(curl_mb_per_s "http://${!http_var}/big/b0")
        keep "$name.big_hit" "$round" "$result"
        show "$name 64 MiB hit" "$result"
    done
done
fills_new=$(($(metric new 'gfcache_fills_total{result="stored"') - stored_before_new))
fills_base=$(($(metric base 'gfcache_fills_total{result="stored"') - stored_before_base))
origin_during=$(($(origin_requests) - origin_before))

if [[ -n $profile ]]; then
    echo "profiling the new proxy (pid $new_proxy) during $profile_runs 64 MiB misses" >&2
    perf record -g -o "$work/perf.data" -p "$new_proxy" >"$work/perf.log" 2>&1 &
    perf_pid=$!
    sleep 0.5
    for i in $(seq 1 "$profile_runs"); do
        big_miss new "/m/$tag-profile-$i" >/dev/null
    done
    kill -INT "$perf_pid"
    wait "$perf_pid" || true
    perf report -i "$work/perf.data" --no-children --sort comm,dso,symbol --stdio \
        >"$work/perf-report.txt" 2>/dev/null || true
    perf report -i "$work/perf.data" --no-children --sort symbol --stdio -g none \
        --percent-limit 0.5 >"$work/perf-flat.txt" 2>/dev/null || true
    echo "profile: $work/perf-flat.txt, $work/perf-report.txt" >&2
fi

# ---------------------------------------------------------------------------------------------
# Report

mkdir -p "$root/bench/results"
out=$root/bench/results/miss-$(date -u +%Y%m%dT%H%M%SZ).json
python3 - "$runs" "$out" "$(machine_json)" "$rounds" "$secs" "$connections" "$load_threads" \
    "$threads" "$caches" "$nginx_workers" "$fills_new" "$fills_base" "$origin_during" \
    "$base_rev" "$(git -C "$root" rev-parse --short=12 HEAD)" <<'PY'
import datetime, json, statistics, sys

runs, out, machine = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
rounds, secs, connections, load_threads, threads, caches, nginx_workers, fills_new, fills_base, origin_during = map(int, sys.argv[4:14])
base_rev, head_rev = sys.argv[14], sys.argv[15]
measured = {}
for line in open(runs):
    entry = json.loads(line)
    measured.setdefault(entry["key"], []).append(entry["value"])
date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

def per_round(num, den, field, den_field=None):
    return [a[field] / b[den_field or field] for a, b in zip(measured[num], measured[den])
            if a.get(field) and b.get(den_field or field)]
def med(values):
    return statistics.median(values) if values else None
def median_of(key, field):
    return med([s[field] for s in measured.get(key, []) if s.get(field) is not None])

ratios = {
    "new_big_miss_vs_curl": per_round("new.big_miss", "curl.big", "mb_per_s"),
    "base_big_miss_vs_curl": per_round("base.big_miss", "curl.big", "mb_per_s"),
    "new_big_miss_client_vs_curl": per_round("new.big_miss", "curl.big", "client_mb_per_s", "mb_per_s"),
    "new_big_miss_vs_client": per_round("new.big_miss", "client.big", "mb_per_s"),
    "new_big_miss_curl_vs_curl": per_round("new.big_miss_curl", "curl.big", "mb_per_s"),
    "base_big_miss_curl_vs_curl": per_round("base.big_miss_curl", "curl.big", "mb_per_s"),
    "new_big_miss_vs_base": per_round("new.big_miss", "base.big_miss", "mb_per_s"),
    "new_small_miss_vs_nginx": per_round("new.small_miss", "nginx.small_miss", "req_per_s"),
    "base_small_miss_vs_nginx": per_round("base.small_miss", "nginx.small_miss", "req_per_s"),
    "new_small_miss_vs_base": per_round("new.small_miss", "base.small_miss", "req_per_s"),
    "new_small_hit_vs_base": per_round("new.small_hit", "base.small_hit", "req_per_s"),
    "new_big_hit_vs_base": per_round("new.big_hit", "base.big_hit", "mb_per_s"),
}
report = {"bench": "miss", "date": date, "machine": machine, "head": head_rev, "base": base_rev,
          "rounds": rounds, "secs": secs, "connections": connections, "load_threads": load_threads,
          "threads": threads, "caches": caches, "nginx_workers": nginx_workers,
          "fills_stored": {"new": fills_new, "base": fills_base},
          "origin_requests_during_rounds": origin_during,
          "ratios": {k: {"median": med(v), "rounds": v} for k, v in ratios.items()},
          "measurements": measured}
with open(out, "w") as f:
    json.dump(report, f)
    f.write("\n")

print(f"\ngfcache misses, {date}, {machine['cpus']} CPUs, load average {machine['loadavg_1m']:.2f} at the end; "
      f"new {head_rev} (working tree), base {base_rev}; {caches} memory caches, {threads} threads; "
      f"medians of {rounds} rounds")
print("a. 64 MiB miss, fill included (MB/s):")
print(f"   curl from nginx {median_of('curl.big', 'mb_per_s'):.0f}, miss_client.py from nginx "
      f"{median_of('client.big', 'mb_per_s'):.0f}")
for name in ("new", "base"):
    print(f"   {name:<4} through gfcache: {median_of(f'{name}.big_miss', 'mb_per_s'):.0f} to the close (fill committed), "
          f"{median_of(f'{name}.big_miss', 'client_mb_per_s'):.0f} to the last byte; "
          f"curl {median_of(f'{name}.big_miss_curl', 'mb_per_s'):.0f}")
cpu = measured.get("new.big_miss_cpu", [])
if cpu:
    mean = lambda k: sum(c[k] for c in cpu) / len(cpu)
    print(f"   CPU per new 64 MiB miss (mean of {len(cpu)}, /proc ticks): proxy {mean('proxy_ms'):.0f} ms, "
          f"caches {mean('caches_ms'):.0f} ms, origin {mean('origin_ms'):.0f} ms")
print(f"   fills stored during the rounds: new {fills_new}, base {fills_base} (of {2 * rounds} 64 MiB misses "
      f"and every 1 KiB miss)")
print(f"b. 1 KiB misses x {connections} (req/s): nginx {median_of('nginx.small_miss', 'req_per_s'):.0f}, "
      f"new {median_of('new.small_miss', 'req_per_s'):.0f} (p99 {median_of('new.small_miss', 'p99_us'):.0f} us), "
      f"base {median_of('base.small_miss', 'req_per_s'):.0f} (p99 {median_of('base.small_miss', 'p99_us'):.0f} us)")
print(f"c. hits: 1 KiB x {connections} new {median_of('new.small_hit', 'req_per_s'):.0f} req/s, "
      f"base {median_of('base.small_hit', 'req_per_s'):.0f}; 64 MiB new {median_of('new.big_hit', 'mb_per_s'):.0f} MB/s, "
      f"base {median_of('base.big_hit', 'mb_per_s'):.0f}")
failed = {k: sum(s.get("failed", 0) for s in v) for k, v in measured.items() if k.endswith(("small_miss", "small_hit"))}
print(f"   wrk failures: {failed}")
print("ratios (median of the per-round ratios; rounds):")
for key, values in ratios.items():
    m = med(values)
    print(f"   {key:<30} {'-' if m is None else f'{m:.2f}':>6}   {' '.join(f'{x:.2f}' for x in values)}")
print(f"origin requests during the rounds: {origin_during}")
print(f"results: {out}")
PY
