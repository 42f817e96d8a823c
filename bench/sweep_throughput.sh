#!/usr/bin/env bash
# Runs per hour of the `quick` preset for worker-pool choices on this machine, and the sweep's own
# overhead per run (a sweep against the same trainings started one after another by hand).
#
#   bash bench/sweep_throughput.sh [GROKLENS] [SEEDS]
#
# GROKLENS defaults to target/release/groklens (build it first); SEEDS (default 12) quick runs each.
set -euo pipefail
exe=$(realpath "${1:-target/release/groklens}")
seeds=${2:-12}
cores=$(nproc)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/spec.toml" <<SPEC
name = "throughput"
preset = "quick"
[seeds]
count = $seeds
keys = ["task.data_seed", "model.seed"]
SPEC
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $cores cores; $seeds quick runs per choice, no reports"
now() { date +%s.%N; }
for choice in "1 $cores" "$cores 1" "$((2 * cores)) 1"; do
  set -- $choice
  out="$tmp/w$1t$2"
  t0=$(now)
  "$exe" sweep run "$tmp/spec.toml" --out "$out" --workers "$1" --threads-per-run "$2" --no-reports --quiet >/dev/null
  t1=$(now)
  awk -v w="$1" -v t="$2" -v a="$t0" -v b="$t1" -v n="$seeds" \
    'BEGIN { s = b - a; printf "%2d worker(s) x %d thread(s): %6.1f s, %6.0f runs/hour\n", w, t, s, n * 3600 / s }'
done
# Overhead: one worker, one thread, against the same configs trained one after another directly
# (both start one process per run; the difference is within this host's noise), and the sweep's own
# bookkeeping (expanding the spec, preparing the directory, checking every point, rebuilding the
# index) timed on the finished sweep, per point.
out="$tmp/direct"
mkdir -p "$out"
t0=$(now)
for cfg in "$tmp"/w1t"$cores"/configs/*.toml; do
  "$exe" train --quiet --config "$cfg" --out "$out/$(basename "$cfg" .toml)" --set train.threads=1 >/dev/null
done
t1=$(now)
"$exe" sweep run "$tmp/spec.toml" --out "$tmp/serial" --workers 1 --threads-per-run 1 --no-reports --quiet >/dev/null
t2=$(now)
"$exe" sweep run "$tmp/spec.toml" --out "$tmp/serial" --workers 1 --no-reports --quiet >/dev/null
t3=$(now)
awk -v a="$t0" -v b="$t1" -v c="$t2" -v e="$t3" -v n="$seeds" \
  'BEGIN { d = b - a; s = c - b; k = e - c;
    printf "one at a time: direct %.2f s, sweep %.2f s (%.0f ms per run)\n", d, s, 1000 * s / n;
    printf "sweep bookkeeping: %.1f ms per point = %.3f%% of a run\n", 1000 * k / n, 100 * k / s }'
