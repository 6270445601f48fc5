"""Generation time per video per level of the tiled cascade, with and without the context cache.

    python benchmarks/bench_sample.py --threads 1
    python benchmarks/bench_sample.py --ckpt runs/demo --steps 32 --num 4
    python benchmarks/bench_sample.py --preset ucf101-s --steps 128 --num 2      # on a GPU
    python benchmarks/bench_sample.py --smoke        # seconds: checks that it runs, writes nothing

Level 0 is sampled whole; each finer level is a canvas of patch-sized tiles, every tile denoised
at every step (tiles x evaluations model calls). With `cache="context"` the coarse levels' fused
context of each tile is computed once per level instead of at every evaluation (DESIGN §5); with
`cache="none"` every evaluation runs the coarse patches through the network again. Timing does
not depend on the weights, so without --ckpt a freshly initialised model of the preset is used.
The two settings are run in alternating rounds; the table shows the median seconds per video.
Any preset works, its per-level settings as they are (the level count does not change).
"""

from __future__ import annotations

import argparse
import time

import common as bc
import torch

from hpdm import sampling
from hpdm.config import load_config
from hpdm.model.hpdm import HPDM
from hpdm.sampling import Sampler, output_geometry


def build_parser() -> argparse.ArgumentParser:
    ap = bc.new_parser(__doc__, preset_help="config preset (ignored with --ckpt)")
    ap.add_argument("--ckpt", default=None, help="a checkpoint or run directory instead of a fresh model")
    ap.add_argument(
        "--size", type=bc.parse_size, default=None, help="output FxHxW (default: the training target)"
    )
    ap.add_argument("--num", type=int, default=1, help="videos per generation")
    ap.add_argument("--steps", type=int, default=16, help="level-0 steps (halved per finer level)")
    ap.add_argument("--overlap", choices=["none", "spatial", "full"], default=None)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of (none, context)")
    bc.add_common_args(ap)
    ap.add_argument("overrides", nargs="*", help="config overrides (without --ckpt)")
    return ap


def timed_generate(sampler: Sampler, cache: str, args) -> tuple[list[float], list[bool]]:
    """Seconds per level of one generation, and whether each level used the context cache."""
    per_level, cached = [], []
    cascade = sampler.cascade
    real_sample, real_branches = sampling.sample_level, cascade.branches

    def sample_level(*a, **kw):
        t0 = time.perf_counter()
        out = real_sample(*a, **kw)
        if cascade.device.type == "cuda":
            torch.cuda.synchronize(cascade.device)
        per_level.append(time.perf_counter() - t0)
        return out

    def branches(*a, **kw):
        out = real_branches(*a, **kw)
        cached.append(all(b.cache is not None for b in out.values()))
        return out

    sampling.sample_level, cascade.branches = sample_level, branches
    try:
        sampler.generate(
            num=args.num,
            size=args.size,
            seed=0,
            steps=args.steps,
            overlap=args.overlap,
            cache=cache,
            progress=False,
        )
    finally:
        sampling.sample_level = real_sample
        del cascade.branches
    return per_level, cached


def main() -> None:
    args = build_parser().parse_args()
    bc.smoke(args, ckpt=None, size=None, num=1, steps=2, rounds=1)
    device = bc.setup(args)
    m = bc.machine(device)
    print(bc.machine_line(m))
    if args.ckpt:
        from hpdm.train import load_model

        model, cfg = load_model(args.ckpt, device=device)
        source = f"checkpoint {args.ckpt}"
    else:
        cfg = load_config(args.preset, args.overrides)
        torch.manual_seed(0)
        model = HPDM(cfg).to(device)
        source = f"fresh {args.preset} model"
    sampler = Sampler(model, cfg, device)
    geo = output_geometry(cfg, args.size)
    overlap = args.overlap or cfg.sample.overlap
    plans = sampler.cascade.plan(geo, overlap, args.steps)

    timed_generate(sampler, "context", args)  # warm-up: allocator, kernels, thread pool
    times = {"none": [], "context": []}
    used = {}
    for _ in range(args.rounds):
        for cache in ("none", "context"):
            t, c = timed_generate(sampler, cache, args)
            times[cache].append(t)
            used[cache] = c

    rows = []
    for p in plans:
        evals = p.steps * 2 - 1 if p.heun else p.steps
        none = bc.median([t[p.level] for t in times["none"]]) / args.num
        ctx = bc.median([t[p.level] for t in times["context"]]) / args.num
        rows.append(
            {
                "level": p.level,
                "canvas": bc.size_str(p.canvas),
                "tiles": len(p.tiles),
                "steps": p.steps,
                "sampler": "heun" if p.heun else "euler",
                "evaluations": evals,
                "tile_evaluations": len(p.tiles) * evals,
                "seconds_per_video_no_cache": none,
                "seconds_per_video_context_cache": ctx,
                "context_cache_used": used["context"][p.level],
                "speedup": none / ctx,
            }
        )
    tot_none = sum(r["seconds_per_video_no_cache"] for r in rows)
    tot_ctx = sum(r["seconds_per_video_context_cache"] for r in rows)

    print()
    print(bc.machine_line(m))
    print(
        f"{source}; output {bc.size_str(geo.target)}, patch {bc.size_str(cfg.pyramid.patch)}, overlap {overlap}, "
        f"{args.num} video(s) per generation, median of {args.rounds} rounds"
    )
    print(
        bc.table(
            ["level", "canvas", "tiles x evals", "s/video (no cache)", "s/video (context cache)", "speed-up"],
            [
                [
                    r["level"],
                    r["canvas"],
                    f"{r['tiles']} x {r['evaluations']} = {r['tile_evaluations']}",
                    r["seconds_per_video_no_cache"],
                    r["seconds_per_video_context_cache"],
                    f"{r['speedup']:.2f}x"
                    + ("" if r["context_cache_used"] or r["level"] == 0 else " (no cache)"),
                ]
                for r in rows
            ]
            + [["all", bc.size_str(geo.target), "", tot_none, tot_ctx, f"{tot_none / tot_ctx:.2f}x"]],
        )
    )
    bc.write_result(
        "bench_sample",
        {
            "machine": m,
            "note": args.note,
            "source": source,
            "output": bc.size_str(geo.target),
            "patch": bc.size_str(cfg.pyramid.patch),
            "overlap": overlap,
            "num": args.num,
            "steps": args.steps,
            "rounds": args.rounds,
            "rows": rows,
            "total_seconds_per_video": {"none": tot_none, "context": tot_ctx},
            "total_speedup": tot_none / tot_ctx,
        },
        args.out,
        args.smoke,
    )


if __name__ == "__main__":
    main()
