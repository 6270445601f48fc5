"""Probe: what the finer levels draw on their own, sampled from held-out real level-0 clips.

What the finer levels can draw on their own: held-out real shapes clips are downsampled to
their level 0, the checkpoint samples only the finer levels from it (`Sampler.generate(given=…)`),
and each level is scored as `hpdm eval report` scores the final level: class and shape accuracy
(the colour-blind classifier: does the outline name the class?), object persistence, blockiness
and judder (1.0 = no pixel grid / even frame changes). Real
clips score 100% on all three, at every level; what the finer levels lose from there is theirs,
not level 0's. Compare with `hpdm eval report` (the whole cascade) to see which part limits it.

    python scripts/probes/finer_levels.py src/hpdm/assets/demo
    python scripts/probes/finer_levels.py --num 64 --set sample.overlap=spatial src/hpdm/assets/demo
    python scripts/probes/finer_levels.py --figure docs/images/from_real_level0.jpg src/hpdm/assets/demo

`--figure PATH` instead draws the first 8 clips: two frames of the real clip, then the same two
frames sampled from its level 0.

About 2 minutes per 32 clips of the demo model on 2 cores.
"""

import argparse

import torch
from _heldout import add_set_option, level0_clips


def finer_level_scores(ckpt: str, num: int = 64, overrides=(), batch: int = 16) -> list[dict[str, float]]:
    from hpdm.metrics.classifier import class_accuracy, load_classifier
    from hpdm.metrics.objects import object_areas, persistence
    from hpdm.metrics.seam import blockiness, judder
    from hpdm.sampling import Sampler

    model, cfg, _, x0, labels = level0_clips(ckpt, num, overrides=overrides)
    cascade = Sampler(model, cfg)
    gens = [
        cascade.generate(num=len(lb), labels=lb.tolist(), seed=1 + i, given=[x], progress=False).levels
        for i, (x, lb) in enumerate(zip(x0.split(batch), labels.split(batch)))
    ]
    clf, shape = load_classifier(), load_classifier(kind="shape")
    rows = []
    for lvl in range(len(gens[0])):
        v = torch.cat([g[lvl] for g in gens]).clamp(-1, 1)
        rows.append(
            {
                "class": class_accuracy(clf, v, labels),
                "shape": class_accuracy(shape, v, labels),
                "persistence": persistence(object_areas(v, labels)),
                "blockiness": blockiness(v),
                "judder": judder(v),
            }
        )
    return rows


def figure(ckpt: str, path: str, num: int = 8, overrides=()) -> None:
    from hpdm.data.shapes import SHAPES_CLASSES, render_shapes
    from hpdm.data.video import contact_sheet
    from hpdm.sampling import Sampler

    model, cfg, _, x0, labels = level0_clips(ckpt, num, overrides=overrides)
    real, _, _ = render_shapes(
        torch.arange(50_000, 50_000 + num), *cfg.pyramid.target, size_range=cfg.data.shape_size
    )
    gen = Sampler(model, cfg).generate(num=num, labels=labels.tolist(), seed=1, given=[x0], progress=False)
    f = real.shape[2]
    pick = [f // 4, 3 * f // 4]
    rows = torch.cat([real[:, :, pick], gen.video[:, :, pick]], dim=2)  # real | sampled, 2 frames each
    names = [f"{SHAPES_CLASSES[int(k)]}: real | sampled" for k in labels]
    contact_sheet(list(rows), max_frames=4, labels=names).convert("RGB").save(path, quality=85)
    print(f"wrote {path}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ckpt", nargs="+")
    ap.add_argument("--num", type=int, default=64, help="held-out clips (default 64)")
    ap.add_argument(
        "--figure", default=None, metavar="PATH", help="draw the first 8 clips instead of scoring"
    )
    add_set_option(ap)
    a = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    for ck in a.ckpt:
        if a.figure:
            figure(ck, a.figure, overrides=a.set)
            continue
        rows = finer_level_scores(ck, a.num, a.set)
        cols = "  |  ".join(
            f"level {i}{' (real)' if i == 0 else ''}: "
            + "  ".join(
                f"{k} {v:.3f}" if k in ("blockiness", "judder") else f"{k} {100 * v:.1f}%"
                for k, v in r.items()
            )
            for i, r in enumerate(rows)
        )
        print(f"{ck}  {cols}", flush=True)
