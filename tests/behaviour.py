"""Recorded behaviour that a refactor must keep: the shipped demo's samples and `tiny`'s losses.

`python tests/behaviour.py` records them into `tests/fixtures/behaviour.npz` (do that only when a
change is *meant* to alter outputs, and say so in the commit); `tests/test_behaviour.py` checks
that today's code reproduces them.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

FIXTURE = Path(__file__).parent / "fixtures" / "behaviour.npz"
DEMO_LABELS = [2, 5]  # a triangle and a cross
DEMO_STEPS = [8, 4, 2]  # few steps: every sampling feature of the shipped config still runs


def demo_samples() -> dict[str, np.ndarray]:
    """The shipped demo (guide, level-0 model, truncated start, consistency included), 2 videos,
    subsampled in space so the fixture stays small (any change moves most pixels)."""
    from hpdm.checkpoint import load_model
    from hpdm.demo import demo_checkpoint
    from hpdm.sampling import Sampler

    model, cfg = load_model(demo_checkpoint())
    gen = Sampler(model, cfg, torch.device("cpu")).generate(
        num=len(DEMO_LABELS), labels=DEMO_LABELS, seed=0, steps=DEMO_STEPS, progress=False
    )
    return {
        "demo_level0": gen.levels[0].numpy(),
        "demo_level1": gen.levels[1][..., ::2, ::2].numpy(),
        "demo_final": gen.video[..., ::4, ::4].numpy(),
    }


def tiny_losses() -> dict[str, np.ndarray]:
    """Six logged steps of `tiny` (loss and per-level loss), seed 0 and seed 1."""
    from hpdm.config import load_config
    from hpdm.train import Trainer

    out = {}
    for seed in (0, 1):
        with tempfile.TemporaryDirectory() as d:
            cfg = load_config(
                "tiny", ["train.steps=6", "train.log_every=1", f"train.seed={seed}", f"train.out_dir={d}"]
            )
            Trainer(cfg, progress=False).train()
            rows = [json.loads(x) for x in (Path(d) / "log.jsonl").read_text().splitlines()]
        keys = ["loss"] + sorted(k for k in rows[0] if k.startswith("loss_l"))
        out[f"tiny_losses_seed{seed}"] = np.array([[r[k] for k in keys] for r in rows])
    return out


def record() -> dict[str, np.ndarray]:
    torch.set_num_threads(1)
    return {**demo_samples(), **tiny_losses()}


if __name__ == "__main__":
    arrays = record()
    FIXTURE.parent.mkdir(exist_ok=True)
    np.savez_compressed(FIXTURE, **arrays)
    print(f"recorded {', '.join(f'{k} {v.shape}' for k, v in arrays.items())} into {FIXTURE}")
