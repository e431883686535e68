#!/usr/bin/env bash
# First, here: bash benchmarks/gpu_pack.sh (builds the carried .gl/ and .gpusite/; run once).
# One device-machine session (see ../.library/device): GPU tests + end-to-end figures on an
# NVIDIA GPU. Expects the carried .gl/ (EGL/GL loader debs) and .gpusite/gpusite.tar.xz
# (cp312 wheels unpacked: envpool 1.2.7 trimmed to Atari, SB3, gymnasium, ale-py, moderngl, av).
# Usage: bash benchmarks/gpu_check.sh NAME [SECONDS]  -> $OUT/{gpu.txt,pytest.txt,e2e.txt,dmon.txt,*.json}
# Order is by priority (a run cut short by its limit still returns what finished): tests, then
# the scaling table (16 milestones x 90 s as 4, 8, auto, 1 and 2 local pipelines, and as 4 Ray
# tasks where ray is installed and a network namespace can be made; SCALING_SECONDS and
# SCALING_WORKERS change it), saliency (maps alone and whole renders), 16 milestones x SECONDS
# (the stacked forward: default on CUDA), 1 and 4 milestones, then 16 without the stack
# (PER_MILESTONE=0 skips it). BASELINE=DIR: 16 milestones with DIR's gpurender too, right after ours.
set -uo pipefail
NAME=${1:-nvidia}
SECONDS_PER_CLIP=${2:-30}
. "$(dirname "$0")/gpu_setup.sh"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
lscpu | grep -E "Model name|^CPU\(s\)" | tee -a "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
python3 -m gpurender info 2>&1 | quiet | tee -a "$OUT/gpu.txt"
nvidia-smi dmon -s u -d 1 >"$OUT/dmon.txt" 2>&1 &
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_agents.py tests/test_rollout.py \
  tests/test_truth.py tests/test_workers.py tests/test_saliency.py tests/test_attribution.py 2>&1 | tail -8 | tee "$OUT/pytest.txt"
e2e() { python3 benchmarks/gpu_e2e.py "$@" 2>&1 | quiet | tee -a "$OUT/e2e.txt"; }
RAY_CASE=""
python3 -c "import ray" 2>/dev/null && unshare -n true 2>/dev/null && RAY_CASE="--ray --ray-workers 4"
# issue 14's table: 16 milestones x SCALING_SECONDS (default 90: 43,200 frames), whole commands
# shellcheck disable=SC2086
python3 benchmarks/bench_scaling.py --name "$NAME" --milestones 16 --seconds "${SCALING_SECONDS:-90}" \
  --workers "${SCALING_WORKERS:-4,8,auto,1,2}" --repeat 1 --results-dir "$OUT" $RAY_CASE 2>&1 | quiet | tee -a "$OUT/scaling.txt"
# issue 17: saliency on the GPU: the maps alone at 1, 4 and 16 milestones, then whole renders of
# 1 and 16 milestones (perturbation and gradient), each against the paper's loop on this box's CPU
python3 benchmarks/bench_saliency.py --name "$NAME" --device cuda --milestones 1,4,16 --repeat 3 \
  --results-dir "$OUT" 2>&1 | quiet | tee -a "$OUT/saliency.txt"
python3 benchmarks/bench_saliency.py --render --name "$NAME" --device cuda --milestones 1,16 --clip-seconds 10 \
  --repeat 1 --results-dir "$OUT" 2>&1 | quiet | tee -a "$OUT/saliency.txt"
e2e --milestones 16 --seconds "$SECONDS_PER_CLIP" --name "$NAME-16-stacked"
if [ -n "${BASELINE:-}" ]; then  # another checkout's gpurender/ + shaders/ (e.g. git archive of an older commit)
  # PYTHONSAFEPATH: `python -m gpurender` would otherwise import this checkout's gpurender from the
  # working directory before the one on PYTHONPATH (each result's "gpurender" field says which ran)
  PYTHONSAFEPATH=1 PYTHONPATH=/tmp/site:$PWD/$BASELINE e2e --milestones 16 --seconds "$SECONDS_PER_CLIP" --name "$NAME-16-baseline"
fi
e2e --milestones 1,4 --seconds "$SECONDS_PER_CLIP" --name "$NAME-1-4"
[ "${PER_MILESTONE:-1}" = 1 ] && e2e --milestones 16 --seconds "$SECONDS_PER_CLIP" \
  --name "$NAME-16-per-milestone" -- --stack-forwards off
kill %1 2>/dev/null
cp benchmarks/results/gpu-"$NAME"-*.json "$OUT/" 2>/dev/null || true
