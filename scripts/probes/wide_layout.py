"""Objects per frame and level-0 seams of videos larger than the training size (issue 30 item 5).

python scripts/probes/wide_layout.py [CKPT] --size 16x128x256 --num 8
"""

from __future__ import annotations

import argparse
import json

import torch

from hpdm.checkpoint import load_model
from hpdm.metrics.objects import _masks, object_counts
from hpdm.metrics.seam import seam_score
from hpdm.sampling import Sampler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ckpt", nargs="?", default="src/hpdm/assets/demo")
    ap.add_argument("--size", default="16x128x256")
    ap.add_argument("--num", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--set", action="append", default=[], metavar="sample.KEY=VALUE", help="sampling override"
    )
    a = ap.parse_args()
    size = tuple(int(v) for v in a.size.split("x"))
    model, cfg = load_model(a.ckpt, overrides=a.set)
    labels = torch.arange(a.num) % cfg.model.num_classes
    gen = Sampler(model, cfg).generate(num=a.num, labels=labels, size=size, seed=a.seed, progress=False)
    counts = object_counts(gen.video, labels).float()
    # the object's shape: width over height of the class colour's bounding box, in frames with one object
    mask = _masks(gen.video, labels, 0.25)  # (B, F, H, W)
    rows, cols = mask.any(-1), mask.any(-2)
    height, width = rows.sum(-1).float(), cols.sum(-1).float()
    one = (counts == 1) & (height > 0)
    aspect = (width[one] / height[one]).median() if one.any() else torch.tensor(float("nan"))
    out = {
        "ckpt": a.ckpt,
        "overrides": a.set,
        "size": size,
        "num": a.num,
        "level0_canvas": list(gen.levels[0].shape[-3:]),
        "level0_tiles": gen.settings["levels"][0]["tiles"],
        "objects_per_frame": float(counts.mean()),
        "videos_with_more_than_one_object": float((counts.median(dim=1).values > 1).float().mean()),
        "per_video_median": counts.median(dim=1).values.tolist(),
        "object_width_over_height": float(aspect),
        "level0_seam_score": seam_score(gen.levels[0], cfg.pyramid.patch, cfg.sample.overlap, cfg.model.cube,
                                        cfg.sample.tile_stride),
    }  # fmt: skip
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
