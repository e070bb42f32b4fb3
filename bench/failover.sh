#!/usr/bin/env bash
# Failover under fire: gfcache with a shared (read-only) directory backend and no origin, under
# verified load, while a random cache process is SIGKILLed every KILL_EVERY seconds. Reports the
# share of requests answered OK with every byte, and the wrong bytes (which must be 0). The same
# run without kills is the baseline.
#
# usage: bench/failover.sh [FILESET_DIR]
# env:   SECS (30)  KILL_EVERY (2)  CACHES (3)  LOAD_CONNECTIONS (16)
#        GF_BIN_DIR (prebuilt binaries; default: cargo build --release)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/bench/lib.sh"

secs=${SECS:-30}
kill_every=${KILL_EVERY:-2}
caches=${CACHES:-3}
load_connections=${LOAD_CONNECTIONS:-16}

if [[ -z ${GF_BIN_DIR:-} ]]; then
    (cd "$root" && cargo build --release --bin gfclient --bin gfsupervisor)
    GF_BIN_DIR=$root/target/release
fi
gfclient=$GF_BIN_DIR/gfclient
gfsupervisor=$GF_BIN_DIR/gfsupervisor

work=$(mktemp -d)
fileset=${1:-$work/fileset}
config=$work/gfcache.toml
supervisor_pid=
cleanup() {
    if [[ -n $supervisor_pid ]]; then
        "$gfsupervisor" stop -c "$config" >/dev/null 2>&1 || true
        wait "$supervisor_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

echo "making the file set in $fileset" >&2
make_fileset "$fileset"
# The workload: every small file, and a big one now and then, so kills land mid-transfer too.
workload=$work/mixed.txt
{ cat "$fileset/small.txt"; echo /big/b0; } >"$workload"

addr=127.0.0.1:$(free_port)
metrics=127.0.0.1:$(free_port)
cat >"$config" <<EOF
[proxy]
listen = "$addr"
threads = 16
cache_timeout = "500ms"

[ipc]
segments = 64
segment_size = "1MiB"

[cache]
processes = $caches
workers = 4
backend = "directory"
directory = { root = "$fileset" }

[supervisor]
run_dir = "$work/run"
metrics_listen = "$metrics"
max_restarts = 1000
backoff_initial = "50ms"
backoff_max = "200ms"
EOF
"$gfsupervisor" start -c "$config" >"$work/supervisor.out" 2>"$work/supervisor.err" &
supervisor_pid=$!
deadline=$((SECONDS + 60))
until curl -sf -o /dev/null "http://$metrics/readyz"; do
    if ((SECONDS > deadline)); then
        tail -n 20 "$work/supervisor.err" >&2
        exit 1
    fi
    sleep 0.1
done

# load SECONDS: a verified load run; prints its JSON summary.
load() {
    "$gfclient" load --server "$addr" --workload "$workload" --connections "$load_connections" \
        --duration "$1" --verify "$fileset" --json | tail -n 1
}

# cache_pids: the running cache processes' pids, one per line.
cache_pids() {
    "$gfsupervisor" status -c "$config" --json | python3 -c '
import json, sys
for child in json.load(sys.stdin).get("children", []):
    if child.get("role") == "cache" and child.get("pid"):
        print(child["pid"])'
}

echo "baseline: $secs s of verified load, no kills" >&2
baseline=$(load "$secs")

echo "chaos: $secs s of verified load, a random cache SIGKILLed every $kill_every s" >&2
load "$secs" >"$work/chaos.json" &
load_pid=$!
kills=0
end=$((SECONDS + secs))
while ((SECONDS + kill_every <= end)); do
    sleep "$kill_every"
    mapfile -t pids < <(cache_pids)
    if ((${#pids[@]} > 0)); then
        victim=${pids[RANDOM % ${#pids[@]}]}
        kill -KILL "$victim" 2>/dev/null && kills=$((kills + 1))
    fi
done
wait "$load_pid" || true
chaos=$(tail -n 1 "$work/chaos.json")

python3 - "$baseline" "$chaos" "$kills" "$root/bench/results" <<'PY'
import datetime, json, os, sys
baseline, chaos = json.loads(sys.argv[1]), json.loads(sys.argv[2])
kills, results = int(sys.argv[3]), sys.argv[4]
def share(s):
    return s["ok"] / max(s["requests"], 1)
report = {
    "bench": "failover",
    "kills": kills,
    "baseline": baseline,
    "chaos": chaos,
    "ok_share_chaos": share(chaos),
    "ok_share_baseline": share(baseline),
    "wrong_bytes_requests": chaos.get("verify_failed", 0),
    "throughput_ratio": chaos["requests"] / max(baseline["requests"], 1),
}
print(f"baseline: {baseline['requests']} requests, {share(baseline):.5%} OK")
print(f"chaos:    {chaos['requests']} requests, {share(chaos):.5%} OK, "
      f"{report['wrong_bytes_requests']} with wrong bytes, {kills} cache SIGKILLs "
      f"(throughput {report['throughput_ratio']:.2f}x the baseline)")
print(f"failures by reason: {chaos.get('failures', {})}")
os.makedirs(results, exist_ok=True)
stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
with open(os.path.join(results, f"failover-{stamp}.json"), "w") as f:
    json.dump(report, f, indent=2)
PY
curl -sf "http://$metrics/metrics" | grep -E '^gfcache_(failovers|resumed_hits|requests)_total' || true
