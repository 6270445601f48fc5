#!/usr/bin/env bash
# How the shipped demo checkpoint (src/hpdm/assets/demo) was made, on a 2-core CPU:
#   1. the `demo` preset as it is (12,000 steps of batch 8, lr 2e-3), about 86 min;
#   2. a second cosine schedule from its EMA weights (`--init`: 14,000 steps, lr 1e-3), about 90 min.
# Both stages resume after an interruption: rerun the script.
set -euo pipefail
hpdm train demo --out runs/demo --resume auto
hpdm train demo train.lr=1.0e-3 train.steps=14000 train.seed=1 --init runs/demo --out runs/demo_ft --resume auto
hpdm export --ckpt runs/demo_ft --out src/hpdm/assets/demo          # EMA weights + config + state
cp runs/demo/log.jsonl src/hpdm/assets/demo/train_log_stage1.jsonl
cp runs/demo_ft/log.jsonl src/hpdm/assets/demo/train_log.jsonl
