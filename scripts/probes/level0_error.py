"""Probe: level-0 denoising error of checkpoints on held-out shapes clips (and level-0 samples).

Level-0 denoising error of checkpoints on held-out shapes clips: the mean squared error of D(x + σn)
against x at a few fixed σ (the same clips, labels and noise for every checkpoint), in data space,
and their sum. Level 0 decides the layout, class and outline of a clip, so this error tracks what
the cascade can draw at all; it is a cheap, low-variance companion to `hpdm eval report`
(docs/experiments/decisions-evidence.md, "Level 0 limits the demo").

    python scripts/probes/level0_error.py src/hpdm/assets/demo runs/demo/checkpoints/step_0012000
    python scripts/probes/level0_error.py --samples 256 src/hpdm/assets/demo   # + level-0 samples

`--samples N` also generates N level-0 clips (classes cycling, seed 1, the checkpoint's sampling
settings and level-0 guidance) and scores them as `hpdm eval report` scores the final level:
class and shape accuracy (the colour-blind classifier: does the outline name the class?) and
object persistence. Real clips score 100% on all three. At 64 samples the shape accuracy moves by
about ±6 points between seeds (stage 6 of the demo model: 46.9% for the first 64, 38.7% for 256),
so compare models at 256 (about 4 minutes on 2 cores); the seeds are the same for every model.

`--retention S1,S2,...` asks where the outlines are lost: 64 held-out real level-0 clips are
noised to σ = S and sampled back to σ = 0 (deterministic Heun on the tail of the checkpoint's
level-0 Karras schedule, its level-0 classifier-free guidance and autoguidance, as `--set`
leaves them), and the colour-blind classifier scores the results. A model that knows each class's outline keeps it from any σ (100%); the share kept
falls towards that of unconditional samples as S grows past where the model stops drawing it.

    python scripts/probes/level0_error.py --retention 0.3,1,2,4 src/hpdm/assets/demo
"""

import argparse

import torch
from _heldout import add_set_option, level0_clips

from hpdm.pyramid import Boxes


def level0_errors(ckpt: str, sigmas=(0.1, 0.3, 1.0, 3.0), num: int = 128) -> dict[float, float]:
    model, _, diff, x0, labels = level0_clips(ckpt, num)
    scale = float(diff.sigma_in[0])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    boxes = Boxes(torch.zeros(num, 1, 3), torch.ones(num, 1, 3))
    result = {}
    for s in sigmas:
        sigma = torch.full((num, 1), s)
        y = (x0 / scale + s * noise)[:, None]
        with torch.no_grad():
            D = diff.denoise(model, y, sigma, boxes, labels)[:, 0] * scale
        result[s] = float((D - x0).square().mean())
    return result


def level0_samples(ckpt: str, num: int, overrides=()) -> dict[str, float]:
    """Class accuracy, shape accuracy and persistence of `num` level-0 samples."""
    from hpdm.metrics.classifier import class_accuracy, load_classifier
    from hpdm.metrics.objects import object_areas, persistence
    from hpdm.sampling import Sampler
    from hpdm.train import load_model

    model, cfg = load_model(ckpt, overrides=list(overrides))
    labels = torch.arange(num) % cfg.model.num_classes
    guidance = cfg.sample.cfg[0] if isinstance(cfg.sample.cfg, list) else cfg.sample.cfg
    cascade = Sampler(model, cfg)
    x = torch.cat(
        [
            cascade.generate(
                num=len(b),
                labels=b.tolist(),
                seed=1 + i,
                size=tuple(cfg.pyramid.patch),
                guidance=guidance,
                progress=False,
            ).levels[0]
            for i, b in zip(range(0, num, 32), labels.split(32))
        ]
    ).clamp(-1, 1)
    return {
        "class": class_accuracy(load_classifier(), x, labels),
        "shape": class_accuracy(load_classifier(kind="shape"), x, labels),
        "persistence": persistence(object_areas(x, labels)),
    }


def shape_retention(ckpt: str, sigmas, num: int = 64, overrides=()) -> dict[float, float]:
    """Shape accuracy of real level-0 clips noised to each σ and sampled back to σ = 0."""
    from hpdm.metrics.classifier import class_accuracy, load_classifier
    from hpdm.sampling import Sampler, edm_sampler, karras_sigmas, level_steps

    model, cfg, diff, x0, labels = level0_clips(ckpt, num, overrides=overrides)
    s = cfg.sample
    guidance = s.cfg[0] if isinstance(s.cfg, list) else s.cfg
    guide = Sampler(model, cfg).guide if s.guide_scale != 1.0 else None
    scale = float(diff.sigma_in[0])
    boxes = Boxes(torch.zeros(num, 1, 3), torch.ones(num, 1, 3))
    null = torch.full_like(labels, model.null_class())

    def denoise(y: torch.Tensor, sigma: float) -> torch.Tensor:
        sig = torch.full((num, 1), sigma)
        with torch.no_grad():
            cond = diff.denoise(model, y[:, None], sig, boxes, labels)[:, 0]
            out = cond
            if guidance != 1.0:
                uncond = diff.denoise(model, y[:, None], sig, boxes, null)[:, 0]
                out = uncond + guidance * (cond - uncond)
            iv = s.guide_interval
            if guide is not None and (iv is None or iv[0] <= sigma <= iv[1]):  # as Sampler does
                weak = diff.denoise(guide, y[:, None], sig, boxes, labels)[:, 0]
                out = out + (s.guide_scale - 1.0) * (cond - weak)
        return out

    schedule = karras_sigmas(level_steps(s, 0), s.sigma_min, s.sigma_max, s.rho)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    clf = load_classifier(kind="shape")
    result = {}
    for start in sigmas:
        tail = schedule[schedule < start]
        sig = torch.cat([torch.tensor([float(start)], dtype=torch.float64), tail])
        # edm_sampler starts from noise * σ_0, so hand it the noisy clip divided by σ_0
        y = edm_sampler(denoise, x0 / scale / start + noise, sig, heun=True)
        result[start] = class_accuracy(clf, (y * scale).clamp(-1, 1), labels)
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ckpt", nargs="+")
    ap.add_argument("--samples", type=int, default=0, help="also score this many level-0 samples")
    ap.add_argument(
        "--retention",
        default="",
        help="comma-separated σ: shape accuracy of real clips noised to σ and sampled back",
    )
    add_set_option(ap, "--samples and --retention")
    a = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    for ck in a.ckpt:
        err = level0_errors(ck)
        cols = "  ".join(f"σ={s}: {v:.5f}" for s, v in err.items())
        line = f"{ck}  {cols}  sum {sum(err.values()):.5f}"
        if a.samples:
            m = level0_samples(ck, a.samples, a.set)
            line += "  |  samples: " + "  ".join(f"{k} {100 * v:.1f}%" for k, v in m.items())
        if a.retention:
            r = shape_retention(ck, [float(v) for v in a.retention.split(",")], overrides=a.set)
            line += "  |  shape kept from σ: " + "  ".join(f"{k:g} {100 * v:.1f}%" for k, v in r.items())
        print(line, flush=True)
