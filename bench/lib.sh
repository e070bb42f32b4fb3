#!/usr/bin/env bash
# Shared helpers for the gfcache benchmarks. Source it: `. bench/lib.sh`.

# make_fileset DIR: fills DIR with the standard file set (idempotent):
#   DIR/small/f0000 .. f0999   1000 files of 1 KiB
#   DIR/big/b0, DIR/big/b1     two files of 64 MiB
#   DIR/small.txt, DIR/big.txt workloads (one path per line, as the course's workload.txt)
make_fileset() {
    local dir=$1 i
    if [[ -f $dir/.fileset-complete ]]; then
        return 0
    fi
    mkdir -p "$dir/small" "$dir/big"
    : >"$dir/small.txt"
    for i in $(seq -f '%04g' 0 999); do
        head -c 1024 /dev/urandom >"$dir/small/f$i"
        echo "/small/f$i" >>"$dir/small.txt"
    done
    for i in 0 1; do
        head -c $((64 << 20)) /dev/urandom >"$dir/big/b$i"
    done
    printf '/big/b0\n/big/b1\n' >"$dir/big.txt"
    touch "$dir/.fileset-complete"
}

# free_port: prints a TCP port on 127.0.0.1 that was free a moment ago.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for_line FILE PATTERN [SECONDS]: polls FILE until a line matches PATTERN; prints it.
wait_for_line() {
    local file=$1 pattern=$2 deadline=$((SECONDS + ${3:-30})) line
    while ((SECONDS < deadline)); do
        if line=$(grep -m1 -- "$pattern" "$file" 2>/dev/null); then
            echo "$line"
            return 0
        fi
        sleep 0.05
    done
    echo "timed out waiting for '$pattern' in $file" >&2
    return 1
}

# json_field JSON KEY: prints one top-level field of a JSON object.
json_field() {
    python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"
}

# machine_json: a JSON object describing this machine.
machine_json() {
    python3 - <<'PY'
import json, os, platform
cpu = ""
try:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
except OSError:
    pass
print(json.dumps({"kernel": platform.release(), "cpus": os.cpu_count(), "cpu": cpu, "loadavg_1m": os.getloadavg()[0]}))
PY
}

# wait_http URL [SECONDS]: polls URL until it answers 2xx.
wait_http() {
    local url=$1 deadline=$((SECONDS + ${2:-60}))
    until curl -sf -o /dev/null "$url"; do
        if ((SECONDS > deadline)); then
            echo "timed out waiting for $url" >&2
            return 1
        fi
        sleep 0.1
    done
}

# cpu_ticks PID...: utime + stime of the processes (all their threads), in clock ticks.
cpu_ticks() {
    local pid total=0 fields
    for pid in "$@"; do
        # The fields after the command name, which may contain spaces: utime is the 12th.
        fields=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
        total=$((total + $(awk '{ print $12 + $13 }' <<<"$fields")))
    done
    echo "$total"
}

# bench_cleanup: the EXIT trap of a benchmark that sets $work, $pids and $config: stops the
# supervisor of $config (if set), kills and reaps $pids, removes $work unless KEEP_WORK is set.
# shellcheck disable=SC2154 # the caller's globals
bench_cleanup() {
    local pid
    if [[ -n ${config:-} ]]; then
        "$gfsupervisor" stop -c "$config" >/dev/null 2>&1 || true
    fi
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

# wrk_json_summary: prints a wrk Lua `done` function that writes the run's summary as one JSON
# line, in the fields of `gfclient load --json`; append it to a wrk script.
wrk_json_summary() {
    cat <<'LUA'
done = function(summary, latency, requests)
    local e = summary.errors
    local failed = e.connect + e.read + e.write + e.timeout + e.status
    local seconds = summary.duration / 1e6
    io.write(string.format(
        '{"requests": %d, "failed": %d, "seconds": %.3f, "req_per_s": %.1f, ' ..
        '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "bytes": %d, ' ..
        '"errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d, "status": %d}}\n',
        summary.requests, failed, seconds, summary.requests / seconds,
        latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
        summary.bytes, e.connect, e.read, e.write, e.timeout, e.status))
end
LUA
}

# install_missing COMMAND:PACKAGE...: installs with apt-get the Debian packages whose command is
# not on the PATH (a command given as an absolute path counts when it is executable).
install_missing() {
    local pair command package missing=()
    for pair in "$@"; do
        command=${pair%%:*} package=${pair#*:}
        command -v "$command" >/dev/null || [[ -x $command ]] || missing+=("$package")
    done
    if ((${#missing[@]})); then
        echo "installing ${missing[*]}" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >&2
    fi
}

# build_at_commit COMMIT CACHE BINARY...: builds the release BINARYs of COMMIT once, in a
# scratch worktree with its own target directory under CACHE (the main target is not disturbed),
# and prints the directory that holds them ($CARGO, default cargo, does the build).
build_at_commit() {
    local commit=$1 cache=$2 rev dir tree bin missing=() args=()
    shift 2
    rev=$(git -C "$root" rev-parse --short=12 "$commit^{commit}")
    dir=$cache/$rev
    for bin in "$@"; do
        [[ -x $dir/$bin ]] || missing+=("$bin")
    done
    if ((${#missing[@]})); then
        echo "building ${missing[*]} at $rev (once; kept in $dir)" >&2
        tree=$cache/tree-$rev
        mkdir -p "$cache" "$dir"
        git -C "$root" worktree remove --force "$tree" 2>/dev/null || true
        git -C "$root" worktree add --detach "$tree" "$rev" >&2
        for bin in "${missing[@]}"; do args+=(--bin "$bin"); done
        (cd "$tree" && CARGO_TARGET_DIR=$cache/target ${CARGO:-cargo} build --release "${args[@]}") >&2
        for bin in "${missing[@]}"; do cp "$cache/target/release/$bin" "$dir/"; done
        git -C "$root" worktree remove --force "$tree"
    fi
    echo "$dir"
}

# memory_config FILE HTTP ORIGIN RUN_DIR METRICS [EXTRA]: a gfsupervisor config with memory caches
# in front of ORIGIN ($threads proxy threads, $caches caches of 512 MiB, 16 segments of 1 MiB,
# objects up to 128 MiB), the HTTP front end on HTTP, EXTRA lines in [proxy].
memory_config() {
    cat >"$1" <<TOML
[proxy]
listen = "127.0.0.1:$(free_port)"
http_listen = "$2"
threads = ${threads:-16}
origin = "$3"
max_object_size = "128MiB"
${6:-}

[ipc]
segments = 16
segment_size = "1MiB"

[cache]
processes = ${caches:-2}
backend = "memory"
memory = { capacity = "512MiB", max_object_size = "128MiB" }

[supervisor]
run_dir = "$4"
metrics_listen = "$5"
TOML
}

# write_fileset_lua FILE: a wrk script that requests the file set's 1000 1 KiB paths in turn
# (each thread from its own offset) and prints the summary as one JSON line.
write_fileset_lua() {
    {
        cat <<'LUA'
local counter = 0
local threads = 0
setup = function(thread)
    -- A global of the thread's own Lua state.
    thread:set("offset", threads * 337)
    threads = threads + 1
end
request = function()
    local path = string.format("/small/f%04d", ((offset or 0) + counter) % 1000)
    counter = counter + 1
    return wrk.format(nil, path)
end
LUA
        wrk_json_summary
    } >"$1"
}

# keep KEY ROUND JSON: appends one measurement to the benchmark's $runs file (JSON lines).
# shellcheck disable=SC2154 # the caller's global
keep() {
    python3 - "$1" "$2" "$3" >>"$runs" <<'PY'
import json, sys
print(json.dumps({"key": sys.argv[1], "round": int(sys.argv[2]), "value": json.loads(sys.argv[3])}))
PY
}
