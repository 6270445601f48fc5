#!/usr/bin/env bash
# How the shipped demo checkpoint (src/hpdm/assets/demo) was made: the `demo` preset as it is
# (12,000 steps, batch 8), about 80 min on a 2-core CPU.
set -euo pipefail
hpdm train demo --out runs/demo --resume auto                   # resumable: rerun after an interruption
hpdm export --ckpt runs/demo --out src/hpdm/assets/demo           # EMA weights + config + state
cp runs/demo/log.jsonl src/hpdm/assets/demo/train_log.jsonl
