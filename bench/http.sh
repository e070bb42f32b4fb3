#!/usr/bin/env bash
# gfcache's HTTP front end against nginx proxy_cache and Varnish, in one run, on the same origin
# and the same files. Every figure is set beside the others measured in the same run; the timed
# loads run in ROUNDS rounds, each measuring every server back to back, and the report gives the
# median of the per-round figures and ratios (on two shared cores a burst of other work spoils a
# round, not a server). CPU per request is that of the server's processes only (utime + stime
# from /proc/PID/stat across the run), never wrk's.
#
#   origin   nginx static on the standard file set (bench/lib.sh make_fileset); its access log
#            counts what reaches it: after the warm-up, nothing must (every request a hit).
#   gfcache  gfsupervisor: memory caches in front of the origin, proxy.http_listen.
#   nginx    nginx with proxy_cache (on disk, so in the page cache) in front of the origin.
#   varnish  varnishd -b origin -s malloc in front of the origin.
#   gfserver gfserver --http-listen on the file set itself: no cache hop (for reference).
#
# Loads (wrk -t LOAD_THREADS, a Lua script rotating over the 1000 1 KiB paths):
#   1 KiB hits, CONNECTIONS connections, keep-alive: req/s, p50/p99, server CPU us per hit;
#   the same with `Connection: close` (a connection per request);
#   1 KiB hits over 1 keep-alive connection: p50/p99 (the latency of one hit);
#   a 64 MiB hit with curl, best of BIG_TRIES: MB/s.
#
# Installs nginx-light, varnish and wrk with apt-get when they are missing.
#
# usage: bench/http.sh [FILESET_DIR]
# env:   SECS (5, each timed load)  ROUNDS (3)  CONNECTIONS (32)  LOAD_THREADS (2)
#        PROXIES (proxy processes, default one per CPU like nginx's workers)
#        BIG_TRIES (3)  THREADS (16, proxy and gfserver workers)  CACHES (2)
#        NGINX_WORKERS (the CPU count)  VARNISH_MEMORY (256m)
#        GF_BIN_DIR (prebuilt binaries; default: cargo build --release)
#        CARGO (cargo; e.g. "flock /tmp/gfcache-cargo.lock cargo" on a shared machine)
#        KEEP_WORK (set: keep the work directory with the configs and logs)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/bench/lib.sh"

secs=${SECS:-5}
rounds=${ROUNDS:-3}
connections=${CONNECTIONS:-32}
load_threads=${LOAD_THREADS:-2}
big_tries=${BIG_TRIES:-3}
threads=${THREADS:-16}
caches=${CACHES:-2}
# Proxy processes sharing the port (SO_REUSEPORT), as nginx runs one worker per CPU.
proxies=${PROXIES:-$(nproc)}
nginx_workers=${NGINX_WORKERS:-$(nproc)}
varnish_memory=${VARNISH_MEMORY:-256m}
cargo=${CARGO:-cargo}
clk_tck=$(getconf CLK_TCK)

# ---------------------------------------------------------------------------------------------
# Tools and builds

install_missing nginx:nginx-light varnishd:varnish wrk:wrk curl:curl
varnishd=$(command -v varnishd || echo /usr/sbin/varnishd)

if [[ -z ${GF_BIN_DIR:-} ]]; then
    (cd "$root" && $cargo build --release --bin gfserver --bin gfsupervisor)
    GF_BIN_DIR=$root/target/release
fi
gfserver=$GF_BIN_DIR/gfserver
gfsupervisor=$GF_BIN_DIR/gfsupervisor

# ---------------------------------------------------------------------------------------------
# Work directory, file set, cleanup

work=$(mktemp -d)
chmod 755 "$work"
fileset=${1:-$work/fileset}
pids=()
config=
trap bench_cleanup EXIT

echo "making the file set in $fileset" >&2
make_fileset "$fileset"

# ---------------------------------------------------------------------------------------------
# Measuring

# with_cpu "PIDS" COMMAND...: runs COMMAND, which prints one JSON summary with `requests` on
# its last line; prints that summary with the server CPU per request added.
with_cpu() {
    local server_pids=$1 before after summary
    shift
    # shellcheck disable=SC2086
    before=$(cpu_ticks $server_pids)
    summary=$("$@" | tail -n 1)
    # shellcheck disable=SC2086
    after=$(cpu_ticks $server_pids)
    python3 - "$summary" "$((after - before))" "$clk_tck" <<'PY'
import json, sys
summary, ticks, hz = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
n = summary.get("requests", 0)
summary["server_cpu_us_per_req"] = ticks * 1e6 / hz / n if n else None
print(json.dumps(summary))
PY
}

# The wrk script: the 1000 1 KiB paths in turn (each thread from its own offset), and the
# summary as one JSON line.
write_fileset_lua "$work/fileset.lua"

# wrk_load URL THREADS CONNECTIONS [ARGS...]: a timed wrk run over the file set; its summary.
wrk_load() {
    local url=$1 t=$2 c=$3
    shift 3
    wrk -t "$t" -c "$c" -d "${secs}s" --latency -s "$work/fileset.lua" "$@" "$url" | tail -n 1
}

# big_mb_per_s URL: the best of BIG_TRIES curl downloads of URL, in MB/s.
big_mb_per_s() {
    local best=0 speed
    for _ in $(seq 1 "$big_tries"); do
        speed=$(curl -sf -o /dev/null -w '%{speed_download}' "$1")
        best=$(python3 -c 'import sys; print(max(float(sys.argv[1]), float(sys.argv[2]) / 1e6))' "$best" "$speed")
    done
    echo "$best"
}

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
# Servers

# start_nginx NAME BODY: nginx in the foreground with a config in the work directory; sets
# nginx_pids (the master and its workers) and nginx_port.
start_nginx() {
    local name=$1 body=$2 dir=$work/nginx-$1 user=
    mkdir -p "$dir/logs"
    nginx_port=$(free_port)
    [[ $(id -u) == 0 ]] && user="user root;"
    cat >"$dir/nginx.conf" <<EOF
$user
worker_processes $nginx_workers;
daemon off;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 16384; }
${body//@PORT@/$nginx_port}
EOF
    nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/logs/error.log" >"$dir/out.log" 2>&1 &
    local master=$!
    pids+=("$master")
    if ! wait_port "$nginx_port" 10 "$master"; then
        echo "nginx ($name) did not start:" >&2
        cat "$dir/out.log" "$dir/logs/error.log" >&2 || true
        exit 1
    fi
    # The master listens before it forks its workers.
    local deadline=$((SECONDS + 10))
    until (($(pgrep -c -P "$master" || true) >= nginx_workers)); do
        if ((SECONDS > deadline)); then
            echo "nginx ($name): no workers" >&2
            exit 1
        fi
        sleep 0.05
    done
    nginx_pids="$master $(pgrep -P "$master" | tr '\n' ' ')"
}

# The origin, counting every request it answers in its access log.
origin_log=$work/nginx-origin/logs/access.log
start_nginx origin 'http {
    access_log '"$origin_log"';
    sendfile on;
    default_type application/octet-stream;
    server { listen 127.0.0.1:@PORT@ backlog=4096; root '"$fileset"'; }
}'
origin=http://127.0.0.1:$nginx_port
wait_http "$origin/small/f0000" 10

start_nginx cache 'http {
    access_log off;
    sendfile on;
    proxy_cache_path '"$work"'/nginx-cache/store levels=1:2 keys_zone=hits:16m max_size=1g inactive=1d use_temp_path=off;
    upstream origin { server '"${origin#http://}"'; keepalive 32; }
    server {
        listen 127.0.0.1:@PORT@ backlog=4096;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache hits;
            proxy_cache_valid 200 1d;
            proxy_cache_lock on;
            add_header X-Cache $upstream_cache_status;
        }
    }
}'
nginx_url=http://127.0.0.1:$nginx_port nginx_cache_pids=$nginx_pids

varnish_port=$(free_port)
mkdir -p "$work/varnish"
"$varnishd" -F -j none -n "$work/varnish" -a "127.0.0.1:$varnish_port" -b "${origin#http://}" \
    -s "malloc,$varnish_memory" -t 86400 -p default_grace=0 \
    >"$work/varnish.log" 2>&1 &
varnish_manager=$!
pids+=("$varnish_manager")
varnish_url=http://127.0.0.1:$varnish_port
# The manager listens; its child answers once it has started.
if ! wait_port "$varnish_port" 30 "$varnish_manager" || ! wait_http "$varnish_url/small/f0000" 30; then
    echo "varnishd did not start:" >&2
    cat "$work/varnish.log" >&2
    exit 1
fi
varnish_pids="$varnish_manager $(pgrep -P "$varnish_manager" | tr '\n' ' ')"

gfserver_http=127.0.0.1:$(free_port)
"$gfserver" --root "$fileset" --listen 127.0.0.1:0 --http-listen "$gfserver_http" \
    --threads "$threads" >"$work/gfserver.out" 2>"$work/gfserver.err" &
gfserver_pid=$!
pids+=("$gfserver_pid")
wait_for_line "$work/gfserver.out" '^http listening on ' >/dev/null
gfserver_url=http://$gfserver_http

gfcache_http=127.0.0.1:$(free_port)
metrics=127.0.0.1:$(free_port)
config=$work/gfcache.toml
# As nginx's proxy_cache_valid 200 1d and Varnish's -t 86400: the origin sends no Cache-Control.
memory_config "$config" "$gfcache_http" "$origin" "$work/run" "$metrics" "default_ttl = \"1d\"
processes = $proxies"
"$gfsupervisor" start -c "$config" >"$work/gfsupervisor.out" 2>"$work/gfsupervisor.err" &
pids+=($!)
if ! wait_http "http://$metrics/readyz" 60; then
    tail -n 20 "$work/gfsupervisor.err" >&2
    exit 1
fi
gfcache_url=http://$gfcache_http
status=$("$gfsupervisor" status --json -c "$config")
gfcache_pids=$(python3 -c 'import json,sys; print(" ".join(str(c["pid"]) for c in json.loads(sys.argv[1])["children"] if c.get("pid")))' "$status")

# ---------------------------------------------------------------------------------------------
# Warm-up: every file through every cache until a whole pass reaches the origin no more, and
# every body is checked against the file set.

warm() {
    python3 - "$1" "$fileset" <<'PY'
import http.client, sys, urllib.parse
url, fileset = urllib.parse.urlsplit(sys.argv[1]), sys.argv[2]
paths = [f"/small/f{i:04d}" for i in range(1000)] + ["/big/b0", "/big/b1"]
conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
for path in paths:
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    with open(fileset + path, "rb") as f:
        if response.status != 200 or body != f.read():
            sys.exit(f"{sys.argv[1]}{path}: status {response.status}, {len(body)} bytes: not the file")
PY
}

origin_requests() {
    wc -l <"$origin_log"
}

for name in gfcache nginx varnish; do
    url_var=${name}_url
    passes=0
    while :; do
        before=$(origin_requests)
        warm "${!url_var}"
        passes=$((passes + 1))
        if (($(origin_requests) == before)); then
            break
        fi
        if ((passes >= 5)); then
            echo "$name still sends requests to the origin after $passes passes" >&2
            exit 1
        fi
    done
    echo "warmed $name in $passes passes (the last one all hits)" >&2
done
warm "$gfserver_url"
origin_after_warm=$(origin_requests)

# ---------------------------------------------------------------------------------------------
# The timed loads, in rounds

runs=$work/runs.jsonl
: >"$runs"

# show KEY JSON: one line of progress.
show() {
    echo "  $1: $(python3 -c 'import json,sys; s=json.loads(sys.argv[1]); print(", ".join(f"{k} {s[k]:.1f}" if isinstance(s[k], float) else f"{k} {s[k]}" for k in ("req_per_s","p50_us","p99_us","failed","server_cpu_us_per_req","mb_per_s") if s.get(k) is not None))' "$2")" >&2
}

servers="gfcache nginx varnish gfserver"
pids_of() {
    case $1 in
    gfcache) echo "$gfcache_pids" ;;
    nginx) echo "$nginx_cache_pids" ;;
    varnish) echo "$varnish_pids" ;;
    gfserver) echo "$gfserver_pid" ;;
    esac
}

for round in $(seq 1 "$rounds"); do
    echo "round $round of $rounds" >&2
    for name in $servers; do
        url_var=${name}_url
        url=${!url_var}/
        server_pids=$(pids_of "$name")
        result=$(with_cpu "$server_pids" wrk_load "$url" "$load_threads" "$connections")
        keep "$name.keepalive" "$round" "$result"
        show "$name keep-alive x $connections" "$result"
        result=$(with_cpu "$server_pids" wrk_load "$url" "$load_threads" "$connections" \
            -H 'Connection: close')
        keep "$name.close" "$round" "$result"
        show "$name close x $connections" "$result"
        result=$(with_cpu "$server_pids" wrk_load "$url" 1 1)
        keep "$name.single" "$round" "$result"
        show "$name keep-alive x 1" "$result"
    done
done
for name in $servers; do
    url_var=${name}_url
    result="{\"mb_per_s\": $(big_mb_per_s "${!url_var}/big/b0")}"
    keep "$name.big" 0 "$result"
    show "$name 64 MiB" "$result"
done
origin_after_loads=$(origin_requests)

# ---------------------------------------------------------------------------------------------
# Report

mkdir -p "$root/bench/results"
out=$root/bench/results/http-$(date -u +%Y%m%dT%H%M%SZ).json
python3 - "$runs" "$out" "$(machine_json)" "$secs" "$rounds" "$connections" "$load_threads" \
    "$threads" "$caches" "$nginx_workers" "$((origin_after_loads - origin_after_warm))" "$proxies" <<'PY'
import datetime, json, statistics, sys

runs, out, machine = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
secs, rounds, connections, load_threads, threads, caches, nginx_workers, origin_hits, proxies = map(int, sys.argv[4:13])
measured = {}
for line in open(runs):
    entry = json.loads(line)
    measured.setdefault(entry["key"], []).append(entry["value"])
date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
report = {"bench": "http", "date": date, "machine": machine, "secs": secs, "rounds": rounds,
          "connections": connections, "load_threads": load_threads, "threads": threads,
          "caches": caches, "proxies": proxies, "nginx_workers": nginx_workers,
          "origin_requests_during_loads": origin_hits, "measurements": measured}
with open(out, "w") as f:
    json.dump(report, f)
    f.write("\n")

servers = ["gfcache", "nginx", "varnish", "gfserver"]
def median(key, field):
    values = [s[field] for s in measured.get(key, []) if s.get(field) is not None]
    return statistics.median(values) if values else None
def ratio(num, den, load, field):
    pairs = zip(measured[f"{num}.{load}"], measured[f"{den}.{load}"])
    per_round = [a[field] / b[field] for a, b in pairs if a.get(field) and b.get(field)]
    return statistics.median(per_round) if per_round else None, per_round

print(f"\ngfcache HTTP vs nginx proxy_cache and Varnish, {date}, {machine['cpus']} CPUs, "
      f"load average {machine['loadavg_1m']:.2f} at the end; wrk -t{load_threads} over 1000 1 KiB hits, "
      f"{secs} s per run, medians of {rounds} rounds; gfcache: {proxies} proxies, {caches} memory caches, {threads} threads; "
      f"nginx: {nginx_workers} workers")
print(f"{'':<9} {'keep-alive x' + str(connections):>32} {'close x' + str(connections):>24} {'keep-alive x1':>15} {'64 MiB':>8}")
print(f"{'':<9} {'req/s':>8} {'p50 us':>7} {'p99 us':>7} {'CPU us':>7} {'req/s':>8} {'p99 us':>7} {'CPU us':>7} "
      f"{'p50 us':>7} {'p99 us':>7} {'MB/s':>8} {'failed':>6}")
for name in servers:
    failed = sum(s["failed"] for load in ("keepalive", "close", "single") for s in measured[f"{name}.{load}"])
    k, c, s = (f"{name}.{load}" for load in ("keepalive", "close", "single"))
    print(f"{name:<9} {median(k, 'req_per_s'):>8.0f} {median(k, 'p50_us'):>7.0f} {median(k, 'p99_us'):>7.0f} "
          f"{median(k, 'server_cpu_us_per_req'):>7.1f} {median(c, 'req_per_s'):>8.0f} {median(c, 'p99_us'):>7.0f} "
          f"{median(c, 'server_cpu_us_per_req'):>7.1f} {median(s, 'p50_us'):>7.0f} {median(s, 'p99_us'):>7.0f} "
          f"{median(f'{name}.big', 'mb_per_s'):>8.0f} {failed:>6}")
print("(CPU us: server CPU per 1 KiB hit: gfcache's proxy and caches, nginx's master and workers, "
      "Varnish's manager and child, gfserver)")

print("ratios, gfcache / other (median of the per-round ratios; for CPU and latency lower is better):")
rows = [("keep-alive req/s", "keepalive", "req_per_s"), ("close req/s", "close", "req_per_s"),
        ("keep-alive CPU per hit", "keepalive", "server_cpu_us_per_req"),
        ("close CPU per hit", "close", "server_cpu_us_per_req"),
        ("keep-alive x32 p50", "keepalive", "p50_us"), ("keep-alive x32 p99", "keepalive", "p99_us"),
        ("keep-alive x1 p50", "single", "p50_us"), ("keep-alive x1 p99", "single", "p99_us")]
print(f"  {'':<24} {'/ nginx':>8} {'/ varnish':>10} {'/ gfserver':>11}   rounds (/ nginx)")
for label, load, field in rows:
    cells, nginx_rounds = [], []
    for other in ("nginx", "varnish", "gfserver"):
        value, per_round = ratio("gfcache", other, load, field)
        cells.append(value)
        if other == "nginx":
            nginx_rounds = per_round
    shown = " ".join(f"{'-' if v is None else f'{v:.2f}':>{w}}" for v, w in zip(cells, (8, 10, 11)))
    print(f"  {label:<24} {shown}   {' '.join(f'{x:.2f}' for x in nginx_rounds)}")
big = {name: median(f"{name}.big", "mb_per_s") for name in servers}
print(f"  {'64 MiB MB/s':<24} {big['gfcache'] / big['nginx']:>8.2f} {big['gfcache'] / big['varnish']:>10.2f} "
      f"{big['gfcache'] / big['gfserver']:>11.2f}")
print(f"origin requests during the timed loads: {origin_hits} (0: every request was a hit)")
print(f"results: {out}")
PY
