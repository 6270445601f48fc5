#!/usr/bin/env bash
# Continue the shipped demo model (or its level-0 model) on one GPU, inside one device call of under
# 10 minutes, and leave the exported fp16 checkpoint and its training log in $OUT/$PRESET:
#
#   OUT=/path/to/results [PRESET=demo|demo-base] bash scripts/gpu_demo.sh [TRAIN_SECONDS] [BATCH] [key=value ...]
#
# PRESET=demo-base continues src/hpdm/assets/demo/base instead (level 0 alone, 2x2x2 tokens) at
# sigma ~ LogNormal(-0.3, 1.0), the range below sigma = 2 where the demo samples with it. Both
# at once, sharing the GPU (separate logs, run folders and exports):
#   OUT=$OUT bash scripts/gpu_demo.sh 420 128 & OUT=$OUT PRESET=demo-base bash scripts/gpu_demo.sh 420 128 & wait
#
# Runs from a source checkout without installing anything (PYTHONPATH=src): training and export
# need torch, einops, safetensors, tqdm, PyYAML and numpy, which a CUDA image usually has (PyAV is
# only for writing videos). Steps: a short run measures steps/s at this batch size on this machine,
# then the real run is sized to TRAIN_SECONDS (default 400) on one cosine schedule, from the
# shipped model's EMA weights (`--init`, a fresh optimiser) with the knobs its last stages were
# trained with (pixel context, clean context for half the videos, level 0 at σ ~ LogNormal(0.3, 1.0)
# with its loss weighted twice). INIT=none trains from scratch instead (then
# overrides may change the widths, e.g. model.dim=192, or the token size: 2x2x2 tokens
# (model.cube=[2,2,2]) are what moved level 0 most per step on the CPU
# (docs/experiments/decisions-evidence.md, "Level-0 probes"), at about 4x the cost at every level;
# INIT=DIR starts from another checkpoint).
# Stages 9-10 of the shipped model are two such runs at batch 128 on an H200 (5.8 steps/s alone,
# the clips drawn on the GPU by data.render=auto); they lowered its FVD but not how often level 0
# draws outlines (docs/experiments/decisions-evidence.md, "Level-0 outlines"). Evaluate what comes back on any machine:
#   hpdm eval report --ckpt $OUT/demo --num 32   (copy guide/ and base/ beside it to sample as shipped)
# Without a GPU it runs on the CPU (slowly): the same commands, for a dry run at tiny sizes, e.g.
#   OUT=/tmp/gpu_dry bash scripts/gpu_demo.sh 20 2
set -euo pipefail
seconds=${1:-400}
batch=${2:-64}
shift $(($# < 2 ? $# : 2))  # the rest: config overrides for both runs
out=${OUT:?set OUT to the folder the results go to}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
workers=$(($(nproc) > 2 ? $(nproc) - 2 : 0))
preset=${PRESET:-demo}
case "$preset" in
  demo) init=${INIT:-src/hpdm/assets/demo}
    knobs=(model.fusion=deep+pixels diffusion.clean_context=0.5 "diffusion.P_mean=[0.3,-1.2,-1.2]"
      "diffusion.P_std=[1.0,1.2,1.2]" "diffusion.level_weight=[2,1,1]") ;;
  demo-base) init=${INIT:-src/hpdm/assets/demo/base}
    knobs=("diffusion.P_mean=[-0.3]" "diffusion.P_std=[1.0]") ;;
  *) echo "PRESET must be demo or demo-base, not '$preset'" >&2; exit 2 ;;
esac
run=${RUN_DIR:-/tmp/hpdm_gpu_$preset}
init_args=()
[ "$init" = none ] || init_args=(--init "$init")
rm -rf "$run" "$run.rate"
args=("$preset" "train.batch_size=$batch" train.lr=1.0e-3 train.warmup=200 train.seed=2 "data.num_workers=$workers"
  train.ckpt_every=1000000 train.sample_every=0 "${knobs[@]}" "$@")
"$py" -c "import torch; print('device:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu', torch.__version__)" |
  tee "$out/${preset}_device.txt"
# the per-video draws, vectorised vs one video at a time, on this device (seconds; benchmarks/)
"$py" benchmarks/bench_draws.py --batch "$batch" --repeats 3 >"$out/${preset}_bench_draws.txt" 2>&1 || true

# 1. the rate: 60 steps, logged every 20 (the first window holds the start-up and is not used)
"$py" -m hpdm.cli train "${args[@]}" train.steps=60 train.log_every=20 "${init_args[@]}" \
  --out "$run.rate" >"$out/${preset}_rate.log" 2>&1 || { tail -c 3000 "$out/${preset}_rate.log"; exit 1; }
steps=$("$py" - "$run.rate/log.jsonl" "$seconds" <<'EOF'
import json, sys
recs = [json.loads(s) for s in open(sys.argv[1])]
rate = min(r["steps_per_s"] for r in recs[1:]) if len(recs) > 1 else recs[-1]["steps_per_s"]
print(max(20, int(rate * float(sys.argv[2]))))
EOF
)
echo "training $steps steps of batch $batch (~${seconds}s)" | tee -a "$out/${preset}_device.txt"

# 2. the run, then the export (EMA weights + config + state) and the log
"$py" -m hpdm.cli train "${args[@]}" "train.steps=$steps" train.log_every=50 "${init_args[@]}" \
  --out "$run" >"$out/${preset}_train.out" 2>&1 || { tail -c 3000 "$out/${preset}_train.out"; exit 1; }
"$py" -m hpdm.cli export --ckpt "$run" --out "$out/$preset" --half
cp "$run/log.jsonl" "$out/$preset/train_log_gpu.jsonl"
tail -n 2 "$run/log.jsonl"
