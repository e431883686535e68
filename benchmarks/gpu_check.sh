#!/usr/bin/env bash
# One device-machine session (see ../.library/device): GPU tests + end-to-end figures on an
# NVIDIA GPU. Expects the carried .gl/ (EGL/GL loader debs) and .gpusite/gpusite.tar.xz
# (cp312 wheels unpacked: envpool 1.2.7 trimmed to Atari, SB3, gymnasium, ale-py, moderngl, av).
set -uo pipefail
OUT=${OUT:-/tmp/out}
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
export __EGL_VENDOR_LIBRARY_FILENAMES=${__EGL_VENDOR_LIBRARY_FILENAMES:-/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json}
tar -C /tmp -xJf .gpusite/gpusite.tar.xz
rm -rf /tmp/site/envpool_assets /tmp/site/envpool_assets-*.dist-info
[ -f .gpusite/extra.tar.gz ] && tar -C /tmp -xzf .gpusite/extra.tar.gz
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
lscpu | grep -E "Model name|^CPU\(s\)" | tee -a "$OUT/gpu.txt"
python3 -m gpurender info 2>&1 | grep -v -E "A.L.E|Stella" | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_agents.py -x 2>&1 | tail -5 | tee "$OUT/pytest.txt"
python3 benchmarks/gpu_e2e.py "${@}" 2>&1 | grep -v -E "A.L.E|Stella" | tee "$OUT/e2e.txt"
cp benchmarks/results/gpu-*.json "$OUT/" 2>/dev/null || true
