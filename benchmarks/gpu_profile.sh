#!/usr/bin/env bash
# Device machine: py-spy samples of one `gpurender render` of N demo milestones (collapsed
# stacks per thread, every process): where the time goes, and who holds the GIL.
# Usage: bash benchmarks/gpu_profile.sh [MILESTONES] [SECONDS] -> $OUT/{active,gil}.txt, stats json
set -uo pipefail
. "$(dirname "$0")/gpu_setup.sh"
N=${1:-16}; S=${2:-20}
GAME=$(python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; import gpu_e2e; \
Path('/tmp/ck').mkdir(); print(gpu_e2e.make_checkpoints(Path('/tmp/ck'), $N))" | tail -1)  # the demo's game
for mode in active gil; do  # every thread that runs, then only the ones holding the GIL
  /tmp/py-spy record -r 250 --threads --subprocesses $([ $mode = gil ] && echo --gil) --format raw \
    -o "$OUT/$mode.txt" -- python3 -m gpurender render --model-dir /tmp/ck --game "$GAME" --output-dir /tmp/vid \
    --clip-seconds "$S" --quiet --force --stats-json "$OUT/stats-$mode.json" 2>&1 | quiet | tail -3
done
cat "$OUT"/stats-*.json
