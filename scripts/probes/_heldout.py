"""Shared set-up of the probes: a checkpoint in eval mode and held-out shapes clips at its level 0.

Held-out means indices from 50,000 on, which no demo run of under 50,000 videos has seen.
"""

import torch
import torch.nn.functional as F

from hpdm.data.shapes import render_shapes
from hpdm.diffusion import Diffusion
from hpdm.pyramid import PyramidGeometry
from hpdm.train import load_model


def level0_clips(ckpt: str, num: int, first: int = 50_000, overrides=()):
    """(model, cfg, diffusion, x0, labels): x0 (num, 3, *patch) is each clip's level 0 in [-1, 1]."""
    model, cfg = load_model(ckpt, overrides=list(overrides))
    model.eval()
    geo = PyramidGeometry(cfg.pyramid.patch, cfg.pyramid.target, cfg.pyramid.num_levels)
    diff = Diffusion(cfg.diffusion, geo)
    video, labels, _ = render_shapes(
        torch.arange(first, first + num), *geo.target, size_range=cfg.data.shape_size
    )
    factor = [t // p for t, p in zip(geo.target, geo.patch)]
    return model, cfg, diff, F.avg_pool3d(video, factor), labels


def add_set_option(ap, what: str = "sampling") -> None:
    """The repeatable `--set sample.KEY=VALUE` option the diagnostic scripts share."""
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="sample.KEY=VALUE",
        help=f"config override for {what}, e.g. --set sample.guide=null (repeatable)",
    )
