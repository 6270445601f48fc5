"""Probe: does a checkpoint use its class label (level-0 error with the right, a wrong and the null label)?

Level-0 denoising error of shapes clips noised at σ, given the right label, a wrong one (shifted by
3) and the null label. A model that ignores the label gives the same error for all three, and
classifier-free guidance then does nothing (docs/experiments/decisions-evidence.md, "Token conditioning").

    python scripts/probes/condition_use.py src/hpdm/assets/demo runs/demo
"""

import sys

import torch
from _heldout import level0_clips

from hpdm.pyramid import Boxes


def label_errors(ckpt: str, sigmas=(1.0, 3.0, 10.0, 30.0), num: int = 64) -> dict[float, tuple[float, ...]]:
    """σ → level-0 MSE (data space) with the right, a wrong and the null label."""
    model, cfg, diff, x0, labels = level0_clips(ckpt, num)
    if cfg.model.num_classes <= 0:
        raise SystemExit(f"{ckpt}: an unconditional model (model.num_classes=0) has no label to use")
    scale = float(diff.sigma_in[0])
    x0 = x0[:, None] / scale  # level 0, in its scaled space
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    boxes = Boxes(torch.zeros(num, 1, 3), torch.ones(num, 1, 3))
    k = cfg.model.num_classes
    variants = (labels, (labels + 3) % k, torch.full_like(labels, k))
    result = {}
    with torch.no_grad():
        for s in sigmas:
            sigma = torch.full((num, 1), s)
            errs = []
            for lab in variants:
                d = diff.denoise(model, x0 + s * noise, sigma, boxes, lab)
                errs.append(float((d - x0).square().mean()) * scale**2)
            result[s] = tuple(errs)
    return result


if __name__ == "__main__":
    torch.set_num_threads(min(2, torch.get_num_threads()))
    for ck in sys.argv[1:]:
        print(ck)
        for s, (right, wrong, null) in label_errors(ck).items():
            gain = 100 * (null - right) / null
            print(
                f"  σ={s:<5g} MSE right {right:.5f}  wrong {wrong:.5f}  null {null:.5f}  label gain {gain:+.2f}%"
            )
