#!/usr/bin/env bash
# What freshness costs on the hit path, and what a revalidation costs, in one run.
#
#   origin   nginx static on the standard file set (bench/lib.sh make_fileset). It sends ETag
#            and Last-Modified and no Cache-Control; its access log records each answer's status
#            and body bytes.
#   fresh    gfcache (memory caches) with proxy.default_ttl = 1d: every hit is fresh.
#   base     the same config on BASE_COMMIT, the landed code before freshness (no metadata, no
#            freshness check), built once into BASE_CACHE.
#   reval    gfcache with proxy.default_ttl = 0s: every hit is a stale copy, revalidated with a
#            conditional request that nginx answers 304.
#
# Measures, in ROUNDS rounds (each measuring every server back to back; medians reported):
#   a. 1 KiB hits, wrk -t LOAD_THREADS -c CONNECTIONS over the 1000 files: fresh vs base req/s
#      (goal >= 0.95);
#   b. a 64 MiB hit with curl: fresh vs base time (goal: fresh MB/s >= 0.95x base);
#   c. a 64 MiB revalidated hit with curl: time vs a fresh hit (goal <= 2x), and what the
#      origin sent for it (one 304, no body byte);
#   d. 1 KiB revalidated hits at CONNECTIONS: req/s beside fresh hits (reported).
#
# Installs nginx-light, wrk and curl with apt-get when they are missing.
#
# usage: bench/freshness.sh [FILESET_DIR]
# env:   SECS (5)  ROUNDS (3)  CONNECTIONS (32)  LOAD_THREADS (2)  BIG_TRIES (5)  THREADS (16)
#        CACHES (2)  BASE_COMMIT (55e6e05)  BASE_CACHE (/tmp/gfcache-bench-base)
#        GF_BIN_DIR (prebuilt binaries; default: cargo build --release)  CARGO  KEEP_WORK
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/bench/lib.sh"

secs=${SECS:-5}
rounds=${ROUNDS:-3}
connections=${CONNECTIONS:-32}
load_threads=${LOAD_THREADS:-2}
big_tries=${BIG_TRIES:-5}
threads=${THREADS:-16}
caches=${CACHES:-2}
base_commit=${BASE_COMMIT:-55e6e05}
base_cache=${BASE_CACHE:-/tmp/gfcache-bench-base}
cargo=${CARGO:-cargo}

install_missing nginx:nginx-light wrk:wrk curl:curl

if [[ -z ${GF_BIN_DIR:-} ]]; then
    (cd "$root" && $cargo build --release --bin gfsupervisor)
    GF_BIN_DIR=$root/target/release
fi
gfsupervisor=$GF_BIN_DIR/gfsupervisor

base_bin=$(build_at_commit "$base_commit" "$base_cache" gfsupervisor)
base_rev=$(basename "$base_bin")

work=$(mktemp -d)
chmod 755 "$work"
fileset=${1:-$work/fileset}
pids=()
configs=()
config=
cleanup() {
    local c
    for c in "${configs[@]}"; do
        "${c%%|*}" stop -c "${c#*|}" >/dev/null 2>&1 || true
    done
    bench_cleanup
}
trap cleanup EXIT
echo "making the file set in $fileset" >&2
make_fileset "$fileset"

# The origin, logging every answer's status and body bytes.
origin_dir=$work/origin
mkdir -p "$origin_dir/logs"
origin_port=$(free_port)
origin_log=$origin_dir/logs/access.log
user=
[[ $(id -u) == 0 ]] && user="user root;"
cat >"$origin_dir/nginx.conf" <<EOF
$user
worker_processes $(nproc);
daemon off;
pid $origin_dir/nginx.pid;
error_log $origin_dir/logs/error.log warn;
events { worker_connections 16384; }
http {
    log_format answers '\$request_uri \$status \$body_bytes_sent';
    access_log $origin_log answers;
    sendfile on;
    default_type application/octet-stream;
    server { listen 127.0.0.1:$origin_port backlog=4096; root $fileset; }
}
EOF
nginx -p "$origin_dir" -c "$origin_dir/nginx.conf" -e "$origin_dir/logs/error.log" \
    >"$origin_dir/out.log" 2>&1 &
pids+=($!)
origin=http://127.0.0.1:$origin_port
wait_http "$origin/small/f0000" 10

# start_gfcache NAME BINARY EXTRA: a gfsupervisor run with memory caches in front of the
# origin; sets NAME_url and NAME_pids.
start_gfcache() {
    local name=$1 binary=$2 extra=$3 http metrics cfg status
    http=127.0.0.1:$(free_port)
    metrics=127.0.0.1:$(free_port)
    cfg=$work/$name.toml
    memory_config "$cfg" "$http" "$origin" "$work/run-$name" "$metrics" "$extra"
    "$binary" start -c "$cfg" >"$work/$name.out" 2>"$work/$name.err" &
    pids+=($!)
    configs+=("$binary|$cfg")
    if ! wait_http "http://$metrics/readyz" 60; then
        tail -n 20 "$work/$name.err" >&2
        exit 1
    fi
    printf -v "${name}_url" 'http://%s' "$http"
    status=$("$binary" status --json -c "$cfg")
    printf -v "${name}_pids" '%s' "$(python3 -c 'import json,sys; print(" ".join(str(c["pid"]) for c in json.loads(sys.argv[1])["children"] if c.get("pid")))' "$status")"
}
start_gfcache fresh "$gfsupervisor" 'default_ttl = "1d"'
start_gfcache base "$base_bin/gfsupervisor" ''
start_gfcache reval "$gfsupervisor" 'default_ttl = "0s"'

# Warm-up: every file through each run, each body checked against the file set.
warm() {
    python3 - "$1" "$fileset" <<'PY'
import http.client, sys, urllib.parse
url, fileset = urllib.parse.urlsplit(sys.argv[1]), sys.argv[2]
paths = [f"/small/f{i:04d}" for i in range(1000)] + ["/big/b0"]
conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
for _ in range(2):
    for path in paths:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        with open(fileset + path, "rb") as f:
            if response.status != 200 or body != f.read():
                sys.exit(f"{sys.argv[1]}{path}: status {response.status}: not the file")
PY
}
for name in fresh base reval; do
    url_var=${name}_url
    warm "${!url_var}"
done
echo "warmed fresh, base and reval" >&2

write_fileset_lua "$work/fileset.lua"

runs=$work/runs.jsonl
: >"$runs"

# big_seconds URL: the median of BIG_TRIES curl downloads of URL, in seconds; checks the bytes.
big_seconds() {
    local times=() t
    for _ in $(seq 1 "$big_tries"); do
        t=$(curl -sf -o "$work/big.out" -w '%{time_total}' "$1")
        cmp -s "$work/big.out" "$fileset/big/b0" || { echo "$1: wrong bytes" >&2; exit 1; }
        times+=("$t")
    done
    python3 -c 'import statistics,sys; print(statistics.median(map(float, sys.argv[1:])))' "${times[@]}"
}

for round in $(seq 1 "$rounds"); do
    echo "round $round of $rounds" >&2
    for name in fresh base reval; do
        url_var=${name}_url
        result=$(wrk -t "$load_threads" -c "$connections" -d "${secs}s" --latency \
            -s "$work/fileset.lua" "${!url_var}/" | tail -n 1)
        keep "$name.small" "$round" "$result"
        echo "  $name 1 KiB x $connections: $(json_field "$result" req_per_s) req/s" >&2
        before=$(wc -l <"$origin_log")
        seconds=$(big_seconds "${!url_var}/big/b0")
        origin_lines=$(tail -n +"$((before + 1))" "$origin_log" | grep -c '^/big/b0 ' || true)
        origin_bytes=$(tail -n +"$((before + 1))" "$origin_log" | awk '$1 == "/big/b0" { s += $3 } END { print s + 0 }')
        origin_304=$(tail -n +"$((before + 1))" "$origin_log" | awk '$1 == "/big/b0" && $2 == 304' | wc -l)
        keep "$name.big" "$round" "{\"seconds\": $seconds, \"origin_requests\": $origin_lines, \"origin_304\": $origin_304, \"origin_body_bytes\": $origin_bytes, \"tries\": $big_tries}"
        echo "  $name 64 MiB: $seconds s; origin: $origin_lines requests, $origin_304 304s, $origin_bytes body bytes" >&2
    done
done

mkdir -p "$root/bench/results"
out=$root/bench/results/freshness-$(date -u +%Y%m%dT%H%M%SZ).json
python3 - "$runs" "$out" "$(machine_json)" "$secs" "$rounds" "$connections" "$base_rev" <<'PY'
import datetime, json, statistics, sys
runs, out, machine = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
secs, rounds, connections, base_rev = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
measured = {}
for line in open(runs):
    entry = json.loads(line)
    measured.setdefault(entry["key"], []).append(entry["value"])
def per_round(num, den, field, invert=False):
    values = [(b[field] / a[field]) if invert else (a[field] / b[field])
              for a, b in zip(measured[num], measured[den]) if a.get(field) and b.get(field)]
    return statistics.median(values), values
small, small_rounds = per_round("fresh.small", "base.small", "req_per_s")
big, big_rounds = per_round("fresh.big", "base.big", "seconds", invert=True)
reval, reval_rounds = per_round("reval.big", "fresh.big", "seconds")
reval_small, _ = per_round("reval.small", "fresh.small", "req_per_s")
date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
ratios = {"hit_1k_fresh_vs_base": small, "hit_64m_fresh_vs_base": big,
          "reval_64m_time_vs_fresh": reval, "reval_1k_req_per_s_vs_fresh": reval_small}
with open(out, "w") as f:
    json.dump({"bench": "freshness", "date": date, "machine": machine, "secs": secs,
               "rounds": rounds, "connections": connections, "base_commit": base_rev,
               "ratios": ratios, "measurements": measured}, f)
    f.write("\n")
reval_big = measured["reval.big"]
print(f"\nfreshness, {date}, {machine['cpus']} CPUs, base {base_rev}, medians of {rounds} rounds")
print(f"a. 1 KiB hits x{connections}, fresh / base req/s:   {small:.3f}  (rounds {', '.join(f'{v:.3f}' for v in small_rounds)}; goal >= 0.95)")
print(f"b. 64 MiB hit, fresh / base MB/s:            {big:.3f}  (rounds {', '.join(f'{v:.3f}' for v in big_rounds)}; goal >= 0.95)")
print(f"c. 64 MiB revalidated / fresh hit time:      {reval:.3f}  (rounds {', '.join(f'{v:.3f}' for v in reval_rounds)}; goal <= 2)")
print(f"   origin per revalidation round: {[r['origin_requests'] for r in reval_big]} requests, "
      f"{[r['origin_304'] for r in reval_big]} of them 304, {[r['origin_body_bytes'] for r in reval_big]} body bytes")
print(f"d. 1 KiB revalidated / fresh hits req/s:     {reval_small:.3f}  (reported)")
print(f"results: {out}")
PY
