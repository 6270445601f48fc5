"""Does each finer level use its context? Denoising error with the right vs a wrong context, per σ.

For every level ℓ >= 1 of a checkpoint: held-out `shapes` clips, their nested patches, the coarser
levels noised at the context noise sampling feeds them (`sample.context_sigma` in
`diffusion.context_space`, or `--context` / `--space`), level ℓ noised at σ (in its scaled space),
and the mean squared error of level ℓ's denoised patch in [-1, 1]: with the clip's own coarser
levels (right) and with another clip's (wrong, the batch rolled by one). A model that uses its
context has a right error well below the wrong one wherever σ hides the fine level.

    python scripts/probes/context_noise.py runs/ctx_before runs/ctx_after --json out.json
"""

from __future__ import annotations

import argparse
import json

import torch

from hpdm.data.shapes import render_shapes
from hpdm.diffusion import Diffusion
from hpdm.pyramid import PyramidGeometry, extract_patches, sample_boxes
from hpdm.train import load_model

SIGMAS = (0.01, 0.05, 0.2, 1.0, 5.0)


@torch.no_grad()
def context_errors(
    ckpt: str, sigmas=SIGMAS, num: int = 64, context: float | None = None, space: str | None = None
) -> dict:
    """{"context_pixel_noise": [...], "levels": {ℓ: {σ: {"right": MSE, "wrong": MSE}}}}."""
    model, cfg = load_model(ckpt)
    model.eval()
    if space:  # read the context noise in another space than the model was trained with
        cfg.diffusion.context_space = space
    geo = PyramidGeometry(cfg.pyramid.patch, cfg.pyramid.target, cfg.pyramid.num_levels)
    if geo.num_levels < 2:
        raise SystemExit(f"{ckpt}: a one-level model has no context")
    diff = Diffusion(cfg.diffusion, geo)
    value = cfg.sample.context_sigma if context is None else context
    ctx = [diff.context_sigma(value, k) for k in range(geo.num_levels)]
    video, labels, _ = render_shapes(
        torch.arange(60_000, 60_000 + num), *geo.target, size_range=cfg.data.shape_size
    )
    boxes = sample_boxes(geo, num, torch.Generator().manual_seed(1))
    x = extract_patches(video, geo, boxes)  # (num, L, 3, *patch) in [-1, 1]
    scale = diff.sigma_in.view(1, -1, 1, 1, 1, 1)
    y = x / scale
    noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
    out = {
        "ckpt": ckpt,
        "context_space": cfg.diffusion.context_space,
        "context_sigma": value,
        "sigma_in": diff.sigma_in.tolist(),
        "context_pixel_noise": [c * float(s) for c, s in zip(ctx, diff.sigma_in)],
        "levels": {},
    }
    for lvl in range(1, geo.num_levels):
        coarse = y[:, :lvl] + torch.tensor(ctx[:lvl]).view(1, -1, 1, 1, 1, 1) * noise[:, :lvl]
        rows = {}
        for s in sigmas:
            fine = y[:, lvl : lvl + 1] + s * noise[:, lvl : lvl + 1]
            sigma = torch.tensor(ctx[:lvl] + [s]).expand(num, lvl + 1)
            errs = {}
            for name, c in (("right", coarse), ("wrong", coarse.roll(1, 0))):
                D = diff.denoise(model, torch.cat([c, fine], 1), sigma, boxes[:, : lvl + 1], labels)
                errs[name] = float((D[:, lvl] * scale[:, lvl] - x[:, lvl]).square().mean())
            rows[s] = errs
        out["levels"][lvl] = rows
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ckpt", nargs="+")
    ap.add_argument("--num", type=int, default=64, help="held-out clips")
    ap.add_argument("--context", type=float, default=None, help="context σ (default: sample.context_sigma)")
    ap.add_argument(
        "--space", choices=("data", "scaled"), default=None, help="override diffusion.context_space"
    )
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()
    results = []
    for ckpt in a.ckpt:
        r = context_errors(ckpt, num=a.num, context=a.context, space=a.space)
        results.append(r)
        noise = ", ".join(f"{v:.3g}" for v in r["context_pixel_noise"][:-1])
        print(f"{ckpt}: context pixel noise per coarse level {noise} ({r['context_space']} space)")
        print("| level | σ | right context | wrong context | wrong / right |")
        print("|---|---|---|---|---|")
        for lvl, rows in r["levels"].items():
            for s, e in rows.items():
                print(
                    f"| {lvl} | {s:g} | {e['right']:.4f} | {e['wrong']:.4f} | {e['wrong'] / e['right']:.2f} |"
                )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
