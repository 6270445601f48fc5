"""Training throughput and memory: HPDM with and without adaptive computation vs full-resolution
diffusion with the same backbone (a 1-level model whose patch is the target), at several target
sizes with the same patch, measured side by side in one run (paper Tab. 1 / DESIGN §8).

CPU (default, a few minutes on 2 cores; any preset, e.g. --preset tiny):
    python benchmarks/bench_train.py --threads 1
    python benchmarks/bench_train.py --smoke          # seconds: checks that it runs, writes nothing
GPU (the paper's setting):
    python benchmarks/bench_train.py --preset ucf101-s --targets 64x256x256,64x512x512 --batch 1

Throughput is videos/s of a whole training step (patch sampling and crops, forward, backward,
optimizer, EMA) on a fixed batch; data loading is not timed. Memory on CUDA is
torch.cuda.max_memory_allocated over one step; on CPU it is the bytes autograd saves for backward
in one forward (`hpdm.info.activation_bytes`, per video) plus the weights, gradients, EMA and
optimizer state, counted from the tensors. On CPU the models are timed in alternating rounds so
background load hits them alike, and the speed-up is the median over rounds of each round's ratio. Extra `key=value` arguments override the preset.

Next to the measured speed-up over full resolution stands its FLOP bound: the FLOPs of one
training step (forward + backward) of the full-resolution model over the model's, per video, from
`hpdm.info.model_info` (`hpdm info CONFIG --vs-full-res`) — the speed-up if time were proportional
to FLOPs. The variants of a
preset at another target, and the full-resolution model with every per-level setting mapped to
its one level, are built in benchmarks/common.py (`variant_config`).
"""

from __future__ import annotations

import argparse
import math

import common as bc
import torch

from hpdm.info import model_info
from hpdm.pyramid import PyramidGeometry


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
    for variant in bc.VARIANTS:
        cfg = bc.variant_config(args.preset, target, args.patch, variant, args.overrides, args.batch)
        geo = PyramidGeometry(cfg.pyramid.patch, cfg.pyramid.target, cfg.pyramid.num_levels)
        row = {
            # counted as `hpdm info` counts them (on meta tensors where hpdm.info can)
            "train_step_flops_per_video": model_info(cfg, 1, measure_memory=False)["train_step_flops"],
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
            if device.type == "cuda":  # timed one after another
                row["speed_vs_full_res"] = row["videos_per_s"] / full["videos_per_s"]
            else:  # timed in the same rounds: the median of the rounds' ratios cancels load changes
                row["speed_vs_full_res"] = bc.median(
                    [f / t for f, t in zip(full["step_seconds"], row["step_seconds"])]
                )
        if "train_step_flops_per_video" in row and "train_step_flops_per_video" in full:
            row["flops_bound_vs_full_res"] = (
                full["train_step_flops_per_video"] / row["train_step_flops_per_video"]
            )
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
    bc.smoke(args, targets=bc.size_str(bc.SMOKE_TARGET), batch=1, rounds=1, reps=1)
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
        "GFLOP/video",
        "speed vs full-res",
        "FLOP bound",
        "memory vs full-res",
    ]
    if not cuda:
        headers.insert(6, "weights+grads+EMA+opt MiB")
    out_rows = []
    for r in rows:
        if r.get("oom"):
            cells = [r["target"], r["model"], r["levels"], "OOM", "", "OOM", "", "", "", ""]
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
            r.get("train_step_flops_per_video", math.nan) / 1e9,
            f"{r.get('speed_vs_full_res', math.nan):.2f}x",
            f"{r.get('flops_bound_vs_full_res', math.nan):.2f}x",
            f"{r.get('memory_vs_full_res', math.nan):.2f}x",
        ]
        if not cuda:
            cells.insert(6, r["state_bytes"] / 2**20)
        out_rows.append(cells)
    print()
    print(bc.machine_line(m))
    print(
        f"preset {args.preset}, batch {args.batch}, overrides {args.overrides or 'none'}; "
        f"full-res mapping: {bc.full_res_mapping()}"
    )
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
            "full_res_mapping": bc.full_res_mapping(),
            "rows": rows,
        },
        args.out,
        args.smoke,
    )


if __name__ == "__main__":
    main()
