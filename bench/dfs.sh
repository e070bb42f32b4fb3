#!/usr/bin/env bash
# gfdfs: whole-file transfers against gfserver's GetFile, propagation between two mounts, and
# the initial sync of a mount, in one run on this machine.
#
#   transfer     a 64 MiB file: `gfdfs store` and `gfdfs fetch` (to a file) against
#                `gfclient get -o` from gfserver on the same file, in TRIES rounds that each
#                run all three back to back; the median MB/s of each and the ratios gfdfs /
#                GetFile (goal >= 0.8). Every store is of a new path, so none is skipped by its
#                checksum; the server fsyncs each store before its rename (gfclient and
#                `gfdfs fetch -o` leave the write-back to the kernel), so each round also
#                times `dd conv=fsync` of the same file: the disk's ceiling for a durable
#                write, which the store is read against. Each round also times both
#                downloads into /dev/null: the protocols without the disk.
#   propagation  EDITS edits of one small file in mount A, each timed from the write until
#                mount B holds the same bytes (polled every 0.5 ms): p50, p99, max (goal p50
#                <= 200 ms).
#   initial sync SMALL_FILES files of 1 KiB on a server, a mount started on an empty
#                directory: files/s until all are there (the mount's start and connect
#                included).
#
# usage: bench/dfs.sh
# env:   TRIES (5)  EDITS (100)  SMALL_FILES (1000)
#        GF_BIN_DIR (prebuilt binaries; default: cargo build --release)
#        CARGO (cargo; e.g. "flock /tmp/gfcache-cargo.lock cargo" on a shared machine)
#        KEEP_WORK (set: keep the work directory with the logs)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/bench/lib.sh"

tries=${TRIES:-5}
edits=${EDITS:-100}
small_files=${SMALL_FILES:-1000}
cargo=${CARGO:-cargo}

if [[ -z ${GF_BIN_DIR:-} ]]; then
    (cd "$root" && $cargo build --release --bin gfdfs --bin gfserver --bin gfclient)
    GF_BIN_DIR=$root/target/release
fi
gfdfs=$GF_BIN_DIR/gfdfs
gfserver=$GF_BIN_DIR/gfserver
gfclient=$GF_BIN_DIR/gfclient

work=$(mktemp -d)
pids=()
config=
trap bench_cleanup EXIT

now_ns() { date +%s%N; }

# mb_per_s BYTES START_NS END_NS
mb_per_s() {
    python3 -c 'import sys; b, s, e = map(int, sys.argv[1:]); print(b / ((e - s) / 1e9) / 1e6)' "$@"
}

# median X...: the median of the numbers.
median() {
    python3 -c 'import statistics, sys; print(statistics.median(map(float, sys.argv[1:])))' "$@"
}

# start_gfdfs_server ROOT NAME: starts a gfdfs server on a free port; sets $addr (not in a
# command substitution: its pid must reach $pids for the cleanup).
start_gfdfs_server() {
    "$gfdfs" server --root "$1" --listen 127.0.0.1:0 >"$work/$2.out" 2>"$work/$2.err" &
    pids+=($!)
    addr=$(wait_for_line "$work/$2.out" '^listening on ' | sed 's/^listening on //')
}

# ---------------------------------------------------------------------------------------------
# Transfer: 64 MiB

big=$work/big.bin
head -c $((64 << 20)) /dev/urandom >"$big"
size=$(stat -c %s "$big")
mkdir -p "$work/gfroot"
cp "$big" "$work/gfroot/big.bin"

"$gfserver" --root "$work/gfroot" --listen 127.0.0.1:0 >"$work/gfserver.out" 2>"$work/gfserver.err" &
pids+=($!)
gf_addr=$(wait_for_line "$work/gfserver.out" '^listening on ' | sed 's/^listening on //')
start_gfdfs_server "$work/dfsroot" dfs
dfs_addr=$addr

gets=() stores=() fetches=() gets_null=() fetches_null=() durables=()
for i in $(seq 1 "$tries"); do
    rm -f "$work/get.out" "$work/fetch.out" "$work/durable.out"
    # Each timed step starts with no dirty pages of an earlier one: none pays another's
    # write-back.
    sync
    start=$(now_ns)
    "$gfclient" get --server "$gf_addr" -o "$work/get.out" /big.bin
    gets+=("$(mb_per_s "$size" "$start" "$(now_ns)")")

    # The disk's own ceiling for a durable 64 MiB write (what every store must pay: the
    # server fsyncs before its rename), so the store's figure can be read against it.
    sync
    start=$(now_ns)
    dd if="$big" of="$work/durable.out" bs=1M conv=fsync status=none
    durables+=("$(mb_per_s "$size" "$start" "$(now_ns)")")

    sync
    start=$(now_ns)
    "$gfdfs" store "$big" --as "big-$i.bin" --server "$dfs_addr" 2>/dev/null
    stores+=("$(mb_per_s "$size" "$start" "$(now_ns)")")

    sync
    start=$(now_ns)
    "$gfdfs" fetch "big-$i.bin" -o "$work/fetch.out" --server "$dfs_addr"
    fetches+=("$(mb_per_s "$size" "$start" "$(now_ns)")")
    cmp -s "$big" "$work/fetch.out" || { echo "fetched bytes differ" >&2; exit 1; }

    # The same two downloads into /dev/null: the protocols without the disk.
    start=$(now_ns)
    "$gfclient" get --server "$gf_addr" /big.bin >/dev/null
    gets_null+=("$(mb_per_s "$size" "$start" "$(now_ns)")")
    start=$(now_ns)
    "$gfdfs" fetch "big-$i.bin" -o - --server "$dfs_addr" >/dev/null
    fetches_null+=("$(mb_per_s "$size" "$start" "$(now_ns)")")
    # Each round leaves the machine as it found it: the stored file goes as the downloads do
    # (rm above). On this VM, memory the guest has not touched lately costs the host's page
    # faults first: 64 MiB of new page cache took 600-780 ms instead of 80-110 ms when every
    # round's store stayed while every download's file was removed and its pages reused.
    "$gfdfs" delete "big-$i.bin" --server "$dfs_addr"
done
get_best=$(median "${gets[@]}") store_best=$(median "${stores[@]}") fetch_best=$(median "${fetches[@]}")
get_null=$(median "${gets_null[@]}") fetch_null=$(median "${fetches_null[@]}")
durable_best=$(median "${durables[@]}")
echo "rounds (MB/s): get ${gets[*]}; store ${stores[*]}; fetch ${fetches[*]}; dd conv=fsync ${durables[*]}" >&2
echo "64 MiB (medians of $tries): GetFile ${get_best} MB/s, gfdfs store ${store_best} MB/s, fetch ${fetch_best} MB/s, dd conv=fsync ${durable_best} MB/s; into /dev/null: GetFile ${get_null} MB/s, gfdfs fetch ${fetch_null} MB/s" >&2

# ---------------------------------------------------------------------------------------------
# Propagation: mount A -> mount B, on a server of their own (the 64 MiB files above would
# have the mounts busy downloading them during the first edits)

start_gfdfs_server "$work/proproot" prop
prop_addr=$addr
mount_a=$work/mount-a mount_b=$work/mount-b
"$gfdfs" mount "$mount_a" --server "$prop_addr" 2>"$work/mount-a.log" &
pids+=($!)
"$gfdfs" mount "$mount_b" --server "$prop_addr" 2>"$work/mount-b.log" &
pids+=($!)
wait_for_line "$work/mount-a.log" 'server listing received' >/dev/null
wait_for_line "$work/mount-b.log" 'server listing received' >/dev/null

propagation=$(python3 - "$mount_a" "$mount_b" "$edits" <<'PY'
import json, os, statistics, sys, time
a, b, edits = sys.argv[1], sys.argv[2], int(sys.argv[3])

def wait_same(path, data, limit=30.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with open(path, "rb") as f:
                if f.read() == data:
                    return True
        except OSError:
            pass
        time.sleep(0.0005)
    return False

latencies = []
for i in range(edits):
    data = f"edit {i} {os.urandom(8).hex()}\n".encode() * 20
    start = time.monotonic()
    with open(os.path.join(a, "edited.txt"), "wb") as f:
        f.write(data)
    if not wait_same(os.path.join(b, "edited.txt"), data):
        sys.exit(f"edit {i} did not reach mount B")
    latencies.append((time.monotonic() - start) * 1000)
latencies.sort()
pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
print(json.dumps({"edits": edits, "p50_ms": pick(0.50), "p99_ms": pick(0.99),
                  "max_ms": latencies[-1], "mean_ms": statistics.mean(latencies)}))
PY
)
echo "propagation: $propagation" >&2

# ---------------------------------------------------------------------------------------------
# Initial sync: SMALL_FILES files into an empty mount

mkdir -p "$work/smallroot/small"
python3 - "$work/smallroot/small" "$small_files" <<'PY'
import os, sys
for i in range(int(sys.argv[2])):
    with open(os.path.join(sys.argv[1], f"f{i:04d}"), "wb") as f:
        f.write(os.urandom(1024))
PY
start_gfdfs_server "$work/smallroot" small
small_addr=$addr
start=$(now_ns)
"$gfdfs" mount "$work/mount-c" --server "$small_addr" 2>"$work/mount-c.log" &
pids+=($!)
initial=$(python3 - "$work/mount-c/small" "$small_files" "$start" <<'PY'
import json, os, sys, time
target, count, start_ns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + 300
while time.monotonic() < deadline:
    try:
        done = sum(1 for e in os.scandir(target) if e.is_file() and not e.name.startswith(".gfdfs"))
    except OSError:
        done = 0
    if done >= count:
        seconds = (time.time_ns() - start_ns) / 1e9
        print(json.dumps({"files": count, "seconds": seconds, "files_per_s": count / seconds}))
        sys.exit(0)
    time.sleep(0.002)
sys.exit("the initial sync did not finish")
PY
)
echo "initial sync: $initial" >&2

# ---------------------------------------------------------------------------------------------
# Result

mkdir -p "$root/bench/results"
out=$root/bench/results/dfs-$(date -u +%Y%m%dT%H%M%SZ).json
python3 - "$out" "$(machine_json)" "$get_best" "$store_best" "$fetch_best" "$propagation" \
    "$initial" "$tries" "$get_null" "$fetch_null" "${gets[*]}" "${stores[*]}" "${fetches[*]}" "$durable_best" <<'PY'
import datetime, json, sys
out, machine = sys.argv[1], json.loads(sys.argv[2])
get, store, fetch = map(float, sys.argv[3:6])
get_null, fetch_null = map(float, sys.argv[9:11])
per_round = lambda text: [round(float(x), 1) for x in text.split()]
result = {
    "bench": "dfs",
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "machine": machine,
    "transfer_64mib": {
        "rounds": int(sys.argv[8]),
        "statistic": "median",
        "getfile_mb_per_s": get,
        "store_mb_per_s": store,
        "fetch_mb_per_s": fetch,
        "store_ratio": store / get,
        "fetch_ratio": fetch / get,
        # The disk's ceiling for a durable write (dd conv=fsync of the same file).
        "durable_copy_mb_per_s": float(sys.argv[14]),
        "store_to_durable_copy_ratio": store / float(sys.argv[14]),
        "rounds_mb_per_s": {
            "getfile": per_round(sys.argv[11]),
            "store": per_round(sys.argv[12]),
            "fetch": per_round(sys.argv[13]),
        },
        "to_dev_null": {
            "getfile_mb_per_s": get_null,
            "fetch_mb_per_s": fetch_null,
            "fetch_ratio": fetch_null / get_null,
        },
    },
    "propagation": json.loads(sys.argv[6]),
    "initial_sync": json.loads(sys.argv[7]),
}
with open(out, "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")
print(json.dumps(result, indent=2))
PY
echo "wrote $out" >&2
