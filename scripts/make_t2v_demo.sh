#!/usr/bin/env bash
# How the shipped text-to-video demo (src/hpdm/assets/t2v, `hpdm demo --prompt "..."`) is made: the
# paper's T2V recipe (§5.2) in miniature, on captioned `shapes` clips with still images in every
# batch, prompts encoded by the offline MiniLM; batch 8 on a 2-core CPU:
#   1. the base: level 0 alone at 8x32x32 (`t2v-tiny-base`, 5,000 steps, 24 min on 2 cores);
#   2. grown into the 3-level 16x128x128 pyramid (`t2v-tiny --init`, 6,000 steps, 63 min);
#   3. fine-tuned at half the learning rate (3,000 steps, 34 min).
# Then the model is exported (EMA weights, fp16) and measured: `hpdm eval report` prompts it with 64
# held-out clips' captions; class accuracy is prompt following, FVD per level compares each video
# with the clip its prompt describes. Every stage resumes after an interruption: rerun the script.
set -euo pipefail
hpdm train t2v-tiny-base --out runs/t2v-tiny-base --resume auto
hpdm train t2v-tiny --init runs/t2v-tiny-base --out runs/t2v-tiny --resume auto
hpdm train t2v-tiny train.lr=1.0e-3 train.steps=3000 train.seed=1 --init runs/t2v-tiny --out runs/t2v-tiny-ft \
  --resume auto
hpdm export --ckpt runs/t2v-tiny-ft --out src/hpdm/assets/t2v --half
mkdir -p docs/experiments/t2v-demo-logs
for run in t2v-tiny-base t2v-tiny t2v-tiny-ft; do cp "runs/$run/log.jsonl" "docs/experiments/t2v-demo-logs/$run.jsonl"; done
hpdm eval report --ckpt src/hpdm/assets/t2v --num 64 --out docs/experiments/t2v-demo-report
