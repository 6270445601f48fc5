"""Training throughput and memory: HPDM with and without adaptive computation vs full-resolution
diffusion with the same backbone (a 1-level model whose patch is the target), at several target
sizes with the same patch, measured side by side in one run (paper Tab. 1 / DESIGN §8).

CPU (default, a few minutes on 2 cores):
    python benchmarks/bench_train.py --threads 1
GPU (the paper's setting):
    python benchmarks/bench_train.py --preset ucf101-s --targets 64x256x256,64x512x512 --batch 1

Throughput is videos/s of a whole training step (patch sampling and crops, forward, backward,
optimizer, EMA) on a fixed batch; data loading is not timed. Memory on CUDA is
torch.cuda.max_memory_allocated over one step; on CPU it is the bytes autograd saves for backward
in one forward (`hpdm.info.activation_bytes`, per video) plus the weights, gradients, EMA and
optimizer state, counted from the tensors. On CPU the models are timed in alternating rounds so
background load hits them alike. Extra `key=value` arguments override the preset.
"""

from __future__ import annotations

import argparse
import math

import common as bc
import torch

from hpdm.pyramid import PyramidGeometry

VARIANTS = ("hpdm+ac", "hpdm", "full-res")


def build_parser() -> argparse.ArgumentParser:
    ap = bc.new_parser(__doc__, preset_help="backbone preset (demo, ucf101-s, ...)")
    ap.add_argument("--targets", default="16x64x64,16x128x128", help="comma-separated FxHxW targets")
    ap.add_argument("--patch", type=bc.parse_size, default=None, help="patch FxHxW (default: the preset's)")
    ap.add_argument("--batch", type=int, default=2, help="videos per step")
    ap.add_argument("--rounds", type=int, default=5, help="timing rounds (alternating the models)")
    ap.add_argument("--reps", type=int, default=2, help="steps per model per round")
    ap.add_argument("--activation-checkpointing", action="store_true", help="train.activation_checkpointing")
    bc.add_common_args(ap)
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. model.dim=64")
    return ap


def measure_target(args, device, target) -> list[dict]:
    rows, steps = [], {}
    for variant in VARIANTS:
        cfg = bc.variant_config(args.preset, target, args.patch, variant, args.overrides, args.batch)
        geo = PyramidGeometry(cfg.pyramid.patch, cfg.pyramid.target, cfg.pyramid.num_levels)
        row = {
            "target": bc.size_str(target),
            "model": variant,
            "patch": bc.size_str(cfg.pyramid.patch),
            "levels": cfg.pyramid.num_levels,
            "levels_per_block": cfg.model.levels_per_block,
            "tokens_per_level": math.prod(p // c for p, c in zip(cfg.pyramid.patch, cfg.model.cube)),
            "level_sizes": [bc.size_str(s) for s in geo.level_sizes],
            "batch": args.batch,
        }
        try:
            step = bc.TrainStep(cfg, device, args.activation_checkpointing)
            row["parameters"] = sum(p.numel() for p in step.trainer.model.parameters())
            if device.type == "cuda":
                step()  # optimizer state exists after the first step
                row["peak_memory_bytes"] = step.peak_cuda_bytes()
                row["memory_kind"] = "cuda max_memory_allocated over one step"
            else:
                step()
                row["activation_bytes_per_video"] = step.activation_bytes() / args.batch
                row["state_bytes"] = step.state_bytes()
                row["memory_kind"] = "saved-for-backward activations per video + weights/grads/EMA/optimizer"
            steps[variant] = step
        except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
            if not bc.is_oom(e):
                raise
            row["oom"] = True
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if device.type == "cuda" and variant in steps:  # one model on the GPU at a time
            times = bc.interleaved_times({variant: steps[variant]}, device, args.rounds, args.reps)
            row["step_seconds"] = times[variant]
            steps.pop(variant).close()
        rows.append(row)
        print(f"  built {variant} {bc.size_str(target)}", flush=True)
    if steps:  # CPU: all models alternate in the same rounds
        times = bc.interleaved_times(steps, device, args.rounds, args.reps)
        for row in rows:
            if row["model"] in times:
                row["step_seconds"] = times[row["model"]]
        for s in steps.values():
            s.close()
    for row in rows:
        if "step_seconds" in row:
            row["videos_per_s"] = args.batch / bc.median(row["step_seconds"])
            row["timing_spread"] = bc.spread(row["step_seconds"])
    full = next(r for r in rows if r["model"] == "full-res")
    for row in rows:
        mem = _memory(row)
        if "videos_per_s" in row and "videos_per_s" in full:
            row["speed_vs_full_res"] = row["videos_per_s"] / full["videos_per_s"]
        if mem and _memory(full):
            row["memory_vs_full_res"] = mem / _memory(full)
    return rows


def _memory(row: dict) -> float | None:
    if "peak_memory_bytes" in row:
        return row["peak_memory_bytes"]
    if "activation_bytes_per_video" in row:
        return row["activation_bytes_per_video"]
    return None


def main() -> None:
    args = build_parser().parse_args()
    device = bc.setup(args)
    m = bc.machine(device)
    print(bc.machine_line(m))
    targets = [bc.parse_size(t) for t in args.targets.split(",")]
    rows = []
    for target in targets:
        rows += measure_target(args, device, target)

    cuda = device.type == "cuda"
    mem_head = "peak GiB (CUDA)" if cuda else "activations MiB/video (CPU)"
    headers = [
        "target",
        "model",
        "levels",
        "videos/s",
        "±",
        mem_head,
        "speed vs full-res",
        "memory vs full-res",
    ]
    if not cuda:
        headers.insert(6, "weights+grads+EMA+opt MiB")
    out_rows = []
    for r in rows:
        if r.get("oom"):
            cells = [r["target"], r["model"], r["levels"], "OOM", "", "OOM", "", ""]
            if not cuda:
                cells.insert(6, "")
            out_rows.append(cells)
            continue
        mem = r["peak_memory_bytes"] / 2**30 if cuda else r["activation_bytes_per_video"] / 2**20
        cells = [
            r["target"],
            r["model"],
            r["levels"],
            r["videos_per_s"],
            f"{100 * r['timing_spread']:.0f}%",
            mem,
            f"{r.get('speed_vs_full_res', math.nan):.2f}x",
            f"{r.get('memory_vs_full_res', math.nan):.2f}x",
        ]
        if not cuda:
            cells.insert(6, r["state_bytes"] / 2**20)
        out_rows.append(cells)
    print()
    print(bc.machine_line(m))
    print(f"preset {args.preset}, batch {args.batch}, overrides {args.overrides or 'none'}")
    print(bc.table(headers, out_rows))
    bc.write_result(
        "bench_train",
        {
            "machine": m,
            "note": args.note,
            "preset": args.preset,
            "overrides": args.overrides,
            "batch": args.batch,
            "activation_checkpointing": args.activation_checkpointing,
            "rows": rows,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
