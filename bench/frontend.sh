#!/usr/bin/env bash
# The front door against nginx, and the load tool against wrk, in one run. Every figure is a
# ratio to a baseline measured in the same run; sections a and b run in ROUNDS rounds, each
# measuring every server back to back, and report the median of the per-round ratios (on two
# shared cores a burst of other work spoils a round, not a server). CPU per request is that of
# the server processes only (utime + stime from /proc/PID/stat across the measurement), never
# the load tool's.
#
#   a. Load-tool ceiling: `gfclient load` against nginx's stream module answering every
#      connection with `GETFILE OK 0` vs wrk against nginx static (one 1 KiB file,
#      `Connection: close`). Goal >= 0.8. The load tool of BASE_COMMIT runs there too, for
#      reference.
#   b. 1 KiB files (the standard file set), one request per connection, CONNECTIONS connections:
#      gfserver vs nginx static under wrk (goal >= 0.8); gfserver vs gfserver built from
#      BASE_COMMIT, the last commit before the event-driven front door (goal >= 1.3), in req/s
#      and in requests per second of the server's own CPU (the load tool shares the two cores,
#      so req/s is capped by its cost); gfcache's hits (gfsupervisor, directory backend) vs
#      gfserver (goal >= 0.8).
#   c. Idle connections: IDLE_SILENT silent and IDLE_HALF half-header connections held open
#      against the proxy while 32 connections make 1 KiB requests: p99 (goal <= 50 ms) and
#      req/s vs the same load without them (goal >= 0.8); the proxy's RSS growth per idle
#      connection (goal <= 8 KiB).
#   d. Slow readers: SLOW_READERS readers of a 64 MiB object at SLOW_RATE bytes/s each while 32
#      connections make 1 KiB requests against the proxy: their p99 (goal <= 100 ms) and
#      failures (goal 0).
#
# Installs nginx-light, libnginx-mod-stream and wrk with apt-get when they are missing.
#
# usage: bench/frontend.sh [FILESET_DIR]
# env:   SECS (5, each measurement)  ROUNDS (3, of sections a and b)  CONNECTIONS (64)  LOAD_THREADS (2, gfclient and wrk)
#        SERVER_THREADS (16, gfserver and proxy workers)  NGINX_WORKERS (1)  CACHES (2)
#        IDLE_SILENT (5000)  IDLE_HALF (5000)  SLOW_READERS (200)  SLOW_RATE (100000)
#        BASE_COMMIT (77112fa)  BASE_CACHE (/tmp/gfcache-bench-base: builds kept per commit)
#        GF_BIN_DIR (prebuilt binaries; default: cargo build --release)
#        CARGO (cargo; e.g. "flock /tmp/gfcache-cargo.lock cargo" on a shared machine)
#        KEEP_WORK (set: keep the work directory with the configs and logs)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/bench/lib.sh"

secs=${SECS:-5}
rounds=${ROUNDS:-3}
connections=${CONNECTIONS:-64}
load_threads=${LOAD_THREADS:-2}
server_threads=${SERVER_THREADS:-16}
nginx_workers=${NGINX_WORKERS:-1}
caches=${CACHES:-2}
idle_silent=${IDLE_SILENT:-5000}
idle_half=${IDLE_HALF:-5000}
slow_readers=${SLOW_READERS:-200}
slow_rate=${SLOW_RATE:-100000}
base_commit=${BASE_COMMIT:-77112fa}
base_cache=${BASE_CACHE:-/tmp/gfcache-bench-base}
cargo=${CARGO:-cargo}
clk_tck=$(getconf CLK_TCK)

# ---------------------------------------------------------------------------------------------
# Tools and builds

install_missing() {
    local missing=()
    command -v nginx >/dev/null || missing+=(nginx-light)
    [[ -n $(stream_module) ]] || missing+=(libnginx-mod-stream)
    command -v wrk >/dev/null || missing+=(wrk)
    if ((${#missing[@]})); then
        echo "installing ${missing[*]}" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
    fi
}

stream_module() {
    ls /usr/lib/nginx/modules/ngx_stream_module.so 2>/dev/null || true
}

install_missing

if [[ -z ${GF_BIN_DIR:-} ]]; then
    (cd "$root" && $cargo build --release --bin gfserver --bin gfclient --bin gfsupervisor)
    GF_BIN_DIR=$root/target/release
fi
gfserver=$GF_BIN_DIR/gfserver
gfclient=$GF_BIN_DIR/gfclient
gfsupervisor=$GF_BIN_DIR/gfsupervisor

# The base commit's gfserver and gfclient (bench/lib.sh build_at_commit: once per commit).
base_bin=$(build_at_commit "$base_commit" "$base_cache" gfserver gfclient)
base_rev=$(basename "$base_bin")

# ---------------------------------------------------------------------------------------------
# Work directory, file set, cleanup

work=$(mktemp -d)
fileset=${1:-$work/fileset}
pids=()
config=
trap bench_cleanup EXIT

echo "making the file set in $fileset" >&2
make_fileset "$fileset"
printf '/x\n' >"$work/one.txt"

# ---------------------------------------------------------------------------------------------
# Measuring

# with_cpu "PIDS" COMMAND...: runs COMMAND, which prints one JSON summary with `requests` on
# its last line; prints that summary with the server CPU per request added.
with_cpu() {
    local server_pids=$1 before after summary
    shift
    # shellcheck disable=SC2086
    before=$(cpu_ticks $server_pids)
    # A run with failures exits 1; its summary counts them.
    summary=$("$@" | tail -n 1) || true
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

# gf_load ADDR WORKLOAD CONNECTIONS [ARGS...]: a timed gfclient load run; its JSON summary.
gf_load() {
    local addr=$1 workload=$2 conns=$3
    shift 3
    "$gfclient" load --server "$addr" --workload "$workload" --connections "$conns" \
        --threads "$load_threads" --duration "$secs" --json "$@" | tail -n 1
}

# base_gf_load ADDR WORKLOAD THREADS: the same with the base commit's load tool (one blocking
# client per thread).
base_gf_load() {
    "$base_bin/gfclient" load --server "$1" --workload "$2" --threads "$3" --duration "$secs" \
        --json | tail -n 1
}

# check_pass ADDR: every 1 KiB file once, verified (also warms the server); exits on a failure.
check_pass() {
    local summary
    summary=$("$gfclient" load --server "$1" --workload "$fileset/small.txt" --connections 8 \
        --requests 1000 --verify "$fileset" --json | tail -n 1) || true
    if [[ $(json_field "$summary" ok) != 1000 ]]; then
        echo "verification run on $1 failed: $summary" >&2
        exit 1
    fi
}

# The wrk script: rotates over PATHS (a Lua list, or empty for the URL's path) and prints the
# summary as one JSON line, in the fields of gfclient's.
write_wrk_script() {
    local file=$1 rotate=$2
    {
        if [[ -n $rotate ]]; then
            cat <<'LUA'
local counter = 0
request = function()
    local path = string.format("/small/f%04d", counter % 1000)
    counter = counter + 1
    return wrk.format(nil, path)
end
LUA
        fi
        wrk_json_summary
    } >"$file"
}
write_wrk_script "$work/one.lua" ""
write_wrk_script "$work/fileset.lua" rotate

# wrk_load URL SCRIPT: a timed wrk run with `Connection: close`; its JSON summary.
wrk_load() {
    wrk -t "$load_threads" -c "$connections" -d "${secs}s" -H 'Connection: close' -s "$2" "$1" |
        tail -n 1
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
$(if [[ $name == stream ]]; then echo "load_module $(stream_module);"; fi)
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
    local deadline=$((SECONDS + 10))
    until (exec 3<>"/dev/tcp/127.0.0.1/$nginx_port") 2>/dev/null; do
        if ((SECONDS > deadline)) || ! kill -0 "$master" 2>/dev/null; then
            echo "nginx ($name) did not start:" >&2
            cat "$dir/out.log" "$dir/logs/error.log" >&2 || true
            exit 1
        fi
        sleep 0.05
    done
    # The master listens before it forks its workers.
    until (($(pgrep -c -P "$master" || true) >= nginx_workers)); do
        if ((SECONDS > deadline)); then
            echo "nginx ($name): no workers" >&2
            exit 1
        fi
        sleep 0.05
    done
    nginx_pids="$master $(pgrep -P "$master" | tr '\n' ' ')"
}

# start_gfserver BINARY NAME: sets server_pid and addr.
start_gfserver() {
    "$1" --root "$fileset" --listen 127.0.0.1:0 --threads "$server_threads" \
        >"$work/gfserver-$2.out" 2>"$work/gfserver-$2.err" &
    server_pid=$!
    pids+=("$server_pid")
    addr=$(wait_for_line "$work/gfserver-$2.out" '^listening on ' | sed 's/^listening on //')
}

# fd_count PID: open descriptors of the process.
fd_count() {
    find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l
}

# wait_fds PID AT_LEAST|AT_MOST N SECONDS: polls the process's descriptor count.
wait_fds() {
    local pid=$1 how=$2 n=$3 deadline=$((SECONDS + $4)) count
    while ((SECONDS < deadline)); do
        count=$(fd_count "$pid")
        if [[ $how == at_least && $count -ge $n ]] || [[ $how == at_most && $count -le $n ]]; then
            return 0
        fi
        sleep 0.1
    done
    echo "proxy descriptors: $(fd_count "$pid"), wanted $how $n" >&2
    return 1
}

rss_kib() {
    awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

runs=$work/runs.jsonl
: >"$runs"
round=0
# keep KEY JSON: keeps one measurement (of the current round).
keep() {
    python3 - "$1" "$round" "$2" >>"$runs" <<'PY'
import json, sys
print(json.dumps({"key": sys.argv[1], "round": int(sys.argv[2]), "value": json.loads(sys.argv[3])}))
PY
}

# record KEY JSON: keeps a load run's summary and shows it.
record() {
    keep "$1" "$2"
    echo "  $1: $(python3 -c 'import json,sys; s=json.loads(sys.argv[1]); print(", ".join(f"{k} {s[k]:.0f}" if isinstance(s[k], float) else f"{k} {s[k]}" for k in ("req_per_s","p50_us","p99_us","failed","server_cpu_us_per_req") if s.get(k) is not None))' "$2")" >&2
}

# ---------------------------------------------------------------------------------------------
# Every server of sections a and b runs from the start (an idle one costs nothing), so that
# each round measures them back to back and a noisy moment spoils one round, not one server.

start_nginx stream 'stream { server { listen 127.0.0.1:@PORT@ backlog=4096; return "GETFILE OK 0\r\n\r\n"; } }'
stream_addr=127.0.0.1:$nginx_port stream_pids=$nginx_pids
http_body='http {
    access_log off;
    sendfile on;
    default_type application/octet-stream;
    server { listen 127.0.0.1:@PORT@ backlog=4096; root '"$fileset"'; }
}'
start_nginx http "$http_body"
nginx_url=http://127.0.0.1:$nginx_port http_pids=$nginx_pids
curl -sf -o /dev/null "$nginx_url/small/f0000"

start_gfserver "$gfserver" new
new_addr=$addr new_pid=$server_pid
start_gfserver "$base_bin/gfserver" base
base_addr=$addr base_pid=$server_pid

addr=127.0.0.1:$(free_port)
metrics=127.0.0.1:$(free_port)
config=$work/gfcache.toml
cat >"$config" <<TOML
[proxy]
listen = "$addr"
threads = $server_threads
# The held idle connections of section c stay open through its measurement.
header_timeout = "60s"
max_connections = $((idle_silent + idle_half + 2000))
listen_backlog = 4096

[cache]
processes = $caches
backend = "directory"
directory = { root = "$fileset" }

[supervisor]
run_dir = "$work/run"
metrics_listen = "$metrics"
TOML
"$gfsupervisor" start -c "$config" >"$work/gfsupervisor.out" 2>"$work/gfsupervisor.err" &
pids+=($!)
if ! wait_http "http://$metrics/readyz" 60; then
    tail -n 20 "$work/gfsupervisor.err" >&2
    exit 1
fi
status=$("$gfsupervisor" status --json -c "$config")
gfcache_pids=$(python3 -c 'import json,sys; print(" ".join(str(c["pid"]) for c in json.loads(sys.argv[1])["children"] if c.get("pid")))' "$status")
proxy_pid=$(python3 -c 'import json,sys; print(next(c["pid"] for c in json.loads(sys.argv[1])["children"] if c["role"] == "proxy"))' "$status")

# Verified passes over every file (they also warm the page cache and the servers).
for server in "$new_addr" "$base_addr" "$addr"; do
    check_pass "$server"
done
# A warm-up of the stream responder (a fixed number of requests, not the timed run).
"$gfclient" load --server "$stream_addr" --workload "$work/one.txt" --connections "$connections" \
    --threads "$load_threads" --requests 2000 --json >/dev/null || true

# ---------------------------------------------------------------------------------------------
# a. The load tool's ceiling, and b. 1 KiB files, one request per connection, in rounds

for round in $(seq 1 "$rounds"); do
    echo "round $round of $rounds: a. load-tool ceiling, b. 1 KiB files x $connections connections" >&2
    record a_gfclient_stream "$(with_cpu "$stream_pids" gf_load "$stream_addr" "$work/one.txt" "$connections")"
    record a_base_gfclient_stream "$(with_cpu "$stream_pids" base_gf_load "$stream_addr" "$work/one.txt" "$connections")"
    record a_wrk_nginx_1k "$(with_cpu "$http_pids" wrk_load "$nginx_url/small/f0000" "$work/one.lua")"
    record b_wrk_nginx_fileset "$(with_cpu "$http_pids" wrk_load "$nginx_url/" "$work/fileset.lua")"
    record b_gfserver "$(with_cpu "$new_pid" gf_load "$new_addr" "$fileset/small.txt" "$connections")"
    record b_gfserver_base "$(with_cpu "$base_pid" gf_load "$base_addr" "$fileset/small.txt" "$connections")"
    record b_gfcache_hits "$(with_cpu "$gfcache_pids" gf_load "$addr" "$fileset/small.txt" "$connections")"
done
for pid in $stream_pids $http_pids $new_pid $base_pid; do
    kill -TERM "$pid" 2>/dev/null || true
done
round=0

# ---------------------------------------------------------------------------------------------
# c. Idle connections

echo "c. $idle_silent silent + $idle_half half-header connections held" >&2
record c_proxy_32 "$(with_cpu "$gfcache_pids" gf_load "$addr" "$fileset/small.txt" 32)"
fds_before=$(fd_count "$proxy_pid")
rss_before=$(rss_kib "$proxy_pid")
python3 "$root/bench/idle_holder.py" 127.0.0.1 "${addr##*:}" "$idle_silent" "$idle_half" \
    >"$work/holder.out" 2>"$work/holder.err" &
holder_pid=$!
pids+=("$holder_pid")
wait_for_line "$work/holder.out" '^holding ' 120 >/dev/null
idle_total=$((idle_silent + idle_half))
wait_fds "$proxy_pid" at_least $((fds_before + idle_total)) 30 || true
rss_held=$(rss_kib "$proxy_pid")
record c_proxy_32_idle "$(with_cpu "$gfcache_pids" gf_load "$addr" "$fileset/small.txt" 32)"
kill -TERM "$holder_pid"
wait "$holder_pid" || true
holder=$(tail -n 1 "$work/holder.out")
keep c_idle "{\"held\": $idle_total, \"proxy_fds_before\": $fds_before, \"proxy_rss_kib_before\": $rss_before, \"proxy_rss_kib_held\": $rss_held, \"holder\": $holder}"
echo "  held: $holder; proxy RSS $rss_before -> $rss_held KiB" >&2
# The proxy closes them (INVALID, linger) before the next section.
wait_fds "$proxy_pid" at_most $((fds_before + 50)) 30 || true

# ---------------------------------------------------------------------------------------------
# d. Slow readers

echo "d. $slow_readers slow readers of /big/b0 at $slow_rate B/s" >&2
python3 "$root/bench/slow_reader.py" 127.0.0.1 "${addr##*:}" /big/b0 "$slow_readers" \
    "$slow_rate" >"$work/slow.out" 2>"$work/slow.err" &
slow_pid=$!
pids+=("$slow_pid")
wait_for_line "$work/slow.out" '^started ' 60 >/dev/null
record d_proxy_32_slow "$(with_cpu "$gfcache_pids" gf_load "$addr" "$fileset/small.txt" 32 \
    --timeout 10)"
kill -TERM "$slow_pid"
wait "$slow_pid" || true
slow=$(tail -n 1 "$work/slow.out")
keep d_slow_readers "$slow"
echo "  slow readers: $slow" >&2
"$gfsupervisor" stop -c "$config" >/dev/null 2>&1 || true
config=

# ---------------------------------------------------------------------------------------------
# Report

mkdir -p "$root/bench/results"
out=$root/bench/results/frontend-$(date -u +%Y%m%dT%H%M%SZ).json
python3 - "$runs" "$out" "$(machine_json)" "$secs" "$rounds" "$connections" "$load_threads" \
    "$server_threads" "$nginx_workers" "$caches" "$base_rev" <<'PY'
import datetime, json, statistics, sys

runs, out, machine = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
secs, rounds, connections, load_threads, server_threads, nginx_workers, caches = map(int, sys.argv[4:11])
base = sys.argv[11]
measured = {}
for line in open(runs):
    entry = json.loads(line)
    measured.setdefault(entry["key"], []).append(entry["value"])
date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
# Keys measured in rounds keep a list (round 1 first); the others their one value.
report = {"bench": "frontend", "date": date, "machine": machine, "secs": secs, "rounds": rounds,
          "connections": connections, "load_threads": load_threads,
          "server_threads": server_threads, "nginx_workers": nginx_workers, "caches": caches,
          "base_commit": base,
          "measurements": {k: (v if k.startswith(("a_", "b_")) else v[0]) for k, v in measured.items()}}
with open(out, "w") as f:
    json.dump(report, f)
    f.write("\n")

m = report["measurements"]
def runs_of(key):
    v = m[key]
    return v if isinstance(v, list) else [v]
def median(key, field):
    values = [s[field] for s in runs_of(key) if s.get(field) is not None]
    return statistics.median(values) if values else None

print(f"\nfront door vs nginx, {date}, {machine['cpus']} CPUs, load average {machine['loadavg_1m']:.2f} at the end, "
      f"{connections} connections, {load_threads} load threads, {secs} s per run, {rounds} rounds of a and b, base {base}")
print(f"{'(medians over the rounds)':<38} {'req/s':>9} {'p50 us':>8} {'p99 us':>8} {'failed':>7} {'server CPU us/req':>18}")
labels = [
    ("a_gfclient_stream", "a. gfclient load -> nginx stream OK 0"),
    ("a_base_gfclient_stream", "a. base gfclient (threads) -> same"),
    ("a_wrk_nginx_1k", "a. wrk -> nginx static 1 KiB"),
    ("b_wrk_nginx_fileset", "b. wrk -> nginx static, file set"),
    ("b_gfserver", "b. gfserver"),
    ("b_gfserver_base", "b. gfserver at base"),
    ("b_gfcache_hits", "b. gfcache hits (directory)"),
    ("c_proxy_32", "c. gfcache, 32 connections"),
    ("c_proxy_32_idle", "c. ... with the idle connections"),
    ("d_proxy_32_slow", "d. ... with the slow readers"),
]
for key, label in labels:
    cpu = median(key, "server_cpu_us_per_req")
    failed = sum(s["failed"] for s in runs_of(key))
    print(f"{label:<38} {median(key, 'req_per_s'):>9.0f} {median(key, 'p50_us'):>8.0f} {median(key, 'p99_us'):>8.0f} "
          f"{failed:>7} {cpu if cpu is None else round(cpu, 1):>18}")

rows = []
def line(name, value, ok, goal, detail=""):
    shown = f"{value:8d}" if isinstance(value, int) else f"{value:8.2f}"
    rows.append(f"  {name:<52} {shown}{'  ' if ok else ' !'}  ({goal}){detail}")
def ratio(name, num, den, goal=None):
    per_round = [a["req_per_s"] / b["req_per_s"] for a, b in zip(runs_of(num), runs_of(den)) if b["req_per_s"]]
    value = statistics.median(per_round) if per_round else 0.0
    detail = "  rounds: " + " ".join(f"{x:.2f}" for x in per_round) if len(per_round) > 1 else ""
    ok = goal is None or value >= goal
    line(name, value, ok, "no goal" if goal is None else f"goal >= {goal}", detail)

print("ratios (a and b: the median of the per-round ratios; '!' marks a missed goal):")
ratio("a. load tool: gfclient->stream / wrk->nginx 1 KiB", "a_gfclient_stream", "a_wrk_nginx_1k", 0.8)
ratio("a. (for reference) gfclient / base gfclient", "a_gfclient_stream", "a_base_gfclient_stream")
ratio("b. gfserver / nginx static (wrk)", "b_gfserver", "b_wrk_nginx_fileset", 0.8)
ratio("b. gfserver / gfserver at base", "b_gfserver", "b_gfserver_base", 1.3)
# The load tool shares the two cores with the server it measures, so a server that spends less
# CPU per request gains little req/s once the load tool takes most of the machine: the requests
# each server answers per second of its own CPU say what the front door itself costs.
def cpu_ratio(name, num, den, goal):
    per_round = [b["server_cpu_us_per_req"] / a["server_cpu_us_per_req"]
                 for a, b in zip(runs_of(num), runs_of(den)) if a.get("server_cpu_us_per_req")]
    value = statistics.median(per_round) if per_round else 0.0
    detail = "  rounds: " + " ".join(f"{x:.2f}" for x in per_round) if len(per_round) > 1 else ""
    line(name, value, value >= goal, f"goal >= {goal}", detail)
cpu_ratio("b. ... requests per server CPU second, / base", "b_gfserver", "b_gfserver_base", 1.3)
ratio("b. gfcache hits / gfserver", "b_gfcache_hits", "b_gfserver", 0.8)
ratio("c. req/s with idle connections / without", "c_proxy_32_idle", "c_proxy_32", 0.8)
p99 = m["c_proxy_32_idle"]["p99_us"] / 1000
line("c. p99 with idle connections (ms)", p99, p99 <= 50, "goal <= 50")
idle = m["c_idle"]
per_conn = (idle["proxy_rss_kib_held"] - idle["proxy_rss_kib_before"]) / idle["held"]
line("c. proxy RSS per idle connection (KiB)", per_conn, per_conn <= 8, "goal <= 8")
h = idle["holder"]
rows.append(f"     held open to the end: silent {h['silent_open']}/{h['silent']}, half-header {h['half_open']}/{h['half']}")
# The issue sets no throughput goal here: the slow readers' own transfers share the 2 cores.
ratio("d. req/s with slow readers / without (c)", "d_proxy_32_slow", "c_proxy_32")
p99 = m["d_proxy_32_slow"]["p99_us"] / 1000
line("d. p99 with slow readers (ms)", p99, p99 <= 100, "goal <= 100")
failed = m["d_proxy_32_slow"]["failed"]
line("d. failures with slow readers", failed, failed == 0, "goal 0")
s = m["d_slow_readers"]
rows.append(f"     slow readers: {s['got_bytes']}/{s['readers']} got bytes, those at {s['mean_rate_of_those_bytes_per_s'] / 1000:.1f} kB/s "
            f"on average; {s['closed_by_server']} closed by the server")
print("\n".join(rows))
PY
echo "results: $out" >&2
