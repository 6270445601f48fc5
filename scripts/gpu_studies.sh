#!/usr/bin/env bash
# The studies' GPU run (issue 30 item 6), inside one device call of under 10 minutes: the HPDM-S
# throughput benchmark, then HPDM against full resolution at equal training FLOPs at batch 128
# (studies/gpu/hpdm-vs-full-res.yaml). Results land in $OUT (JSON, markdown, PNG; the checkpoints
# are deleted, so every file stays far below 16 MB):
#
#   OUT=/path/to/results bash scripts/gpu_studies.sh
#
# Runs from a source checkout without installing anything (PYTHONPATH=src). Every number it writes
# names the device. A dry run on the CPU at tiny size: OUT=/tmp/gpu_dry SMOKE=1 bash scripts/gpu_studies.sh
set -euo pipefail
: "${OUT:?set OUT to the results folder}"
mkdir -p "$OUT"
export PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)/src${PYTHONPATH:+:$PYTHONPATH}"
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/device.csv" 2>/dev/null || echo "cpu" > "$OUT/device.csv"
if [[ -n "${SMOKE:-}" ]]; then
  python benchmarks/bench_gpu_hpdm_s.py --smoke | tee "$OUT/bench_gpu_hpdm_s.txt"
  python -m hpdm.cli study run studies/gpu/hpdm-vs-full-res.yaml --out "$OUT/hpdm-vs-full-res" --smoke --quiet
else
  timeout 150 python benchmarks/bench_gpu_hpdm_s.py --out "$OUT/bench_gpu_hpdm_s.json" | tee "$OUT/bench_gpu_hpdm_s.txt" || true
  timeout 400 python -m hpdm.cli study run studies/gpu/hpdm-vs-full-res.yaml --out "$OUT/hpdm-vs-full-res" --quiet || true
  python -m hpdm.cli study report "$OUT/hpdm-vs-full-res" || true   # whatever finished
fi
find "$OUT" -type d -name checkpoints -prune -exec rm -rf {} +
ls -R "$OUT" | head -50
