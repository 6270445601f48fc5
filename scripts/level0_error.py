"""Level-0 denoising error of checkpoints on held-out shapes clips: the mean squared error of D(x + σn)
against x at a few fixed σ (the same clips, labels and noise for every checkpoint), in data space,
and their sum. Level 0 decides the layout, class and outline of a clip, so this error tracks what
the cascade can draw at all; it is a cheap, low-variance companion to `hpdm eval report`
(docs/decisions.md, "level 0 limits the demo").

    python scripts/level0_error.py src/hpdm/assets/demo runs/demo/checkpoints/step_0012000
"""

import sys

import torch
from _heldout import level0_clips


def level0_errors(ckpt: str, sigmas=(0.1, 0.3, 1.0, 3.0), num: int = 128) -> dict[float, float]:
    model, _, diff, x0, labels = level0_clips(ckpt, num)
    scale = float(diff.sigma_in[0])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    off, size = torch.zeros(num, 1, 3), torch.ones(num, 1, 3)
    result = {}
    for s in sigmas:
        sigma = torch.full((num, 1), s)
        y = (x0 / scale + s * noise)[:, None]
        with torch.no_grad():
            D = diff.denoise(model, y, sigma, off, size, labels)[:, 0] * scale
        result[s] = float((D - x0).square().mean())
    return result


if __name__ == "__main__":
    torch.set_num_threads(min(2, torch.get_num_threads()))
    for ck in sys.argv[1:]:
        err = level0_errors(ck)
        cols = "  ".join(f"σ={s}: {v:.5f}" for s, v in err.items())
        print(f"{ck}  {cols}  sum {sum(err.values()):.5f}", flush=True)
