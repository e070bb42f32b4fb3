#!/usr/bin/env bash
# Pack backend before/after, in one run: builds `cargo bench -p cache-backends --bench backends`
# from a base commit (in a scratch checkout with its own target dir) and from this tree, then
# runs the two alternately ROUNDS times on the same machine and prints, per run, the pack row
# (1 KiB gets/s, 64 MiB GB/s, the memcpy baseline measured beside it), then the best 64 MiB
# figure of each side and their ratio (the goal for the change-detection work: >= 0.9).
#
# usage: bench/pack-compare.sh [BASE_COMMIT (4a45b97)]
# env:   ROUNDS (3), WORK (a temp dir; the scratch checkout and target dirs go there),
#        CARGO (cargo; e.g. "flock /tmp/gfcache-cargo.lock cargo" on a shared machine)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
base=${1:-4a45b97}
rounds=${ROUNDS:-3}
work=${WORK:-$(mktemp -d)}
cargo=${CARGO:-cargo}

build() { # build SOURCE_DIR TARGET_DIR: prints the bench executable
    (cd "$1" && CARGO_TARGET_DIR=$2 $cargo bench -p cache-backends --bench backends --no-run \
        --message-format=json 2>/dev/null) |
        python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "backends":
        print(m["executable"])' | tail -1
}

mkdir -p "$work/base"
git -C "$root" archive "$base" | tar -x -C "$work/base"
old=$(build "$work/base" "$work/target-base")
new=$(build "$root" "${CARGO_TARGET_DIR:-$root/target}")
cp "$old" "$work/bench-base"
cp "$new" "$work/bench-new"
echo "base $base: $work/bench-base; new $(git -C "$root" rev-parse --short HEAD) (+ work tree): $work/bench-new"

printf '%-6s %-5s %14s %12s %12s\n' round side "1 KiB gets/s" "64 MiB GB/s" "memcpy GB/s"
for round in $(seq 1 "$rounds"); do
    for side in base new; do
        row=$("$work/bench-$side" --bench | awk '$1 == "pack" { print $2, $3, $4 }')
        printf '%-6s %-5s %14s %12s %12s\n' "$round" "$side" $row
        echo "$side $row" >>"$work/rows"
    done
done
python3 - "$work/rows" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
for column, name in ((2, "64 MiB GB/s"), (1, "1 KiB gets/s")):
    side = {s: [float(r[column]) for r in rows if r[0] == s] for s in ("base", "new")}
    best = {s: max(v) for s, v in side.items()}
    median = {s: statistics.median(v) for s, v in side.items()}
    print(f"{name}: best base {best['base']:.2f} new {best['new']:.2f} (new/base {best['new'] / best['base']:.3f}); "
          f"median base {median['base']:.2f} new {median['new']:.2f} (new/base {median['new'] / median['base']:.3f})")
PY
