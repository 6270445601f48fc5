"""Probe: how much of a clean coarse level reaches the next level (level-1 error given level 0)?

Level-1 denoising error of real shapes patches noised at σ, given level 0 as a clean context (σ =
0.05, as at sampling), a wrong context (another clip's level 0) and, as a yardstick, level 0 itself
upsampled onto the level-1 patch.

At high σ the level-1 patch's own input is noise, so its error measures what the network reads
from the context. A network that reads the context's detail does at least as well as plain
upsampling; one that reads only placement and colour sits between upsampling and the wrong
context (docs/experiments/decisions-evidence.md, "Context use").

    python scripts/probes/context_use.py src/hpdm/assets/demo
"""

import sys

import torch

from hpdm.data.shapes import render_shapes
from hpdm.diffusion import Diffusion
from hpdm.model.fusion import previous_level_pixels
from hpdm.pyramid import PyramidGeometry, extract_patches, sample_boxes
from hpdm.train import load_model


def context_errors(ckpt: str, sigmas=(0.3, 1.0, 3.0, 10.0), num: int = 64) -> dict:
    """{"upsampled": MSE, σ: (right context, wrong context)}, level-1 MSE in data space."""
    model, cfg = load_model(ckpt)
    model.eval()
    geo = PyramidGeometry(cfg.pyramid.patch, cfg.pyramid.target, cfg.pyramid.num_levels)
    if geo.num_levels < 2:
        raise SystemExit(f"{ckpt}: a one-level model has no context")
    diff = Diffusion(cfg.diffusion, geo)
    video, labels, _ = render_shapes(
        torch.arange(60_000, 60_000 + num), *geo.target, size_range=cfg.data.shape_size
    )
    boxes = sample_boxes(geo, num, torch.Generator().manual_seed(1))
    boxes = boxes[:, :2]
    x = extract_patches(video, geo, boxes)[:, :2]  # levels 0 and 1 of each clip, [-1, 1]
    scale = diff.sigma_in[:2].view(1, 2, 1, 1, 1, 1)
    y = x / scale
    up = previous_level_pixels(x, boxes, geo.patch)[:, 1]  # level 0 resampled onto the level-1 pixels
    result: dict = {"upsampled": float((up - x[:, 1]).square().mean())}
    noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
    wrong = torch.cat([y[:, :1].roll(1, 0), y[:, 1:]], 1)  # another clip's level 0
    with torch.no_grad():
        for s in sigmas:
            sigma = torch.tensor([[0.05, s]]).expand(num, 2)
            e = sigma[..., None, None, None, None] * noise
            errs = []
            for ctx in (y, wrong):
                d = diff.denoise(model, ctx + e, sigma, boxes, labels)[:, 1] * scale[:, 1]
                errs.append(float((d - x[:, 1]).square().mean()))
            result[s] = tuple(errs)
    return result


def main() -> None:
    for ckpt in sys.argv[1:] or ["src/hpdm/assets/demo"]:
        r = context_errors(ckpt)
        print(f"{ckpt}: level-1 MSE, level 0 upsampled: {r.pop('upsampled'):.4f}")
        for s, (right, wrong) in r.items():
            print(f"  σ={s:<5g} right context {right:.4f}   wrong context {wrong:.4f}")


if __name__ == "__main__":
    main()
