"""HPDM-S on one GPU: the paper's ucf101-s configuration (16x64x64 patches, 3 levels, 64x256x256)
with and without adaptive computation vs full-resolution diffusion with the same backbone, at
batch 1 — training speed and peak memory (paper Tab. 1: 1.24 / 4.25 / 6.71 videos/s and
65.3 / 18.1 / 14.2 GB on an A100). Sized to finish in under 5 minutes.

    python benchmarks/bench_gpu_hpdm_s.py
    python benchmarks/bench_gpu_hpdm_s.py --preset tiny --target 4x32x32 --patch 2x8x8   # CPU, tiny
    python benchmarks/bench_gpu_hpdm_s.py --smoke    # seconds on the CPU: checks that it runs

Every row records the device it was measured on. Without a CUDA device the script says so and
falls back to the CPU; the paper-sized models would need hours and >60 GB there, so unless sizes
are given it uses a tiny smoke-test size whose numbers say nothing about the paper's setting.
Memory is torch.cuda.max_memory_allocated over one step (CUDA) or the saved-for-backward
activations (CPU); a model that does not fit is reported as OOM.
"""

from __future__ import annotations

import argparse
import sys
import time

import common as bc
import torch

PAPER = {  # DESIGN §8, A100, 64x256x256, batch 1
    "full-res": {"videos_per_s": 1.24, "memory_gb": 65.3},
    "hpdm": {"videos_per_s": 4.25, "memory_gb": 18.1},
    "hpdm+ac": {"videos_per_s": 6.71, "memory_gb": 14.2},
}
CPU_FALLBACK = {"preset": "tiny", "target": (4, 32, 32), "patch": (2, 8, 8)}


def build_parser() -> argparse.ArgumentParser:
    ap = bc.new_parser(__doc__, None, "default ucf101-s (CPU fallback: tiny)")
    bc.add_geometry_args(ap, "default 64x256x256", "default: the preset's (16x64x64)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per model (after 1 warm-up step)")
    ap.add_argument("--max-seconds", type=float, default=240, help="stop timing a model after this long")
    ap.add_argument("--activation-checkpointing", action="store_true")
    bc.add_common_args(ap)
    ap.add_argument("overrides", nargs="*")
    return ap


def main() -> None:
    args = build_parser().parse_args()
    bc.smoke(args, steps=1, max_seconds=10.0)
    device = bc.setup(args)
    m = bc.machine(device)
    where = m.get("gpu") or f"CPU {m['cpu']}"
    if device.type != "cuda" and not args.smoke:
        print(
            "bench_gpu_hpdm_s: no CUDA device, falling back to the CPU. This benchmark is meant for one GPU; "
            "CPU numbers are a smoke test, not comparable with the paper's A100 figures.",
            file=sys.stderr,
        )
        if args.preset is None and args.target is None and args.patch is None and not args.overrides:
            print(
                "bench_gpu_hpdm_s: using the tiny smoke-test size "
                f"(--preset tiny --target {bc.size_str(CPU_FALLBACK['target'])} --patch "
                f"{bc.size_str(CPU_FALLBACK['patch'])}); pass sizes to choose another.",
                file=sys.stderr,
            )
            args.preset, args.target, args.patch = (
                CPU_FALLBACK["preset"],
                CPU_FALLBACK["target"],
                CPU_FALLBACK["patch"],
            )
            if not args.threads:  # tiny models on a shared CPU: one thread times steadily
                torch.set_num_threads(1)
                m = bc.machine(device)
    preset = args.preset or "ucf101-s"
    target = args.target or (64, 256, 256)
    print(bc.machine_line(m))
    t_start = time.perf_counter()

    rows = []
    for variant in ("full-res", "hpdm", "hpdm+ac"):
        cfg = bc.variant_config(preset, target, args.patch, variant, args.overrides, args.batch)
        row = {
            "model": variant,
            "device": where,
            "preset": preset,
            "target": bc.size_str(target),
            "patch": bc.size_str(cfg.pyramid.patch),
            "levels": cfg.pyramid.num_levels,
            "levels_per_block": cfg.model.levels_per_block,
            "batch": args.batch,
        }
        step = None
        try:
            step = bc.TrainStep(cfg, device, args.activation_checkpointing)
            row["parameters"] = sum(p.numel() for p in step.trainer.model.parameters())
            step()  # warm-up (allocator, kernels, optimizer state)
            if device.type == "cuda":
                row["peak_memory_gb"] = step.peak_cuda_bytes() / 1e9
            else:
                row["activation_mib_per_video"] = step.activation_bytes() / args.batch / 2**20
            budget = max(0.0, args.max_seconds - (time.perf_counter() - t_start)) / 2
            t0, times = time.perf_counter(), []
            while len(times) < args.steps and (not times or time.perf_counter() - t0 < budget):
                times += bc.interleaved_times({variant: step}, device, 1, 1, warmup=0)[variant]
            row["step_seconds"] = times
            row["videos_per_s"] = args.batch / bc.median(times)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
            if not bc.is_oom(e):
                raise
            row["oom"] = True
        finally:
            if step is not None:
                step.close()
            elif device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
        print(f"  {variant}: {row.get('videos_per_s', 'OOM')} videos/s on {where}", flush=True)

    full = rows[0]
    for r in rows:
        if "videos_per_s" in r and "videos_per_s" in full:
            r["speed_vs_full_res"] = r["videos_per_s"] / full["videos_per_s"]
    mem_key = "peak_memory_gb" if device.type == "cuda" else "activation_mib_per_video"
    mem_head = "peak memory GB" if device.type == "cuda" else "activations MiB/video (CPU)"
    paper = preset == "ucf101-s" and bc.size_str(target) == "64x256x256" and args.batch == 1
    print()
    print(bc.machine_line(m))
    print(
        bc.table(
            [
                "device",
                "model",
                "levels",
                "videos/s",
                "speed vs full-res",
                mem_head,
                "paper videos/s (A100)",
                "paper GB",
            ],
            [
                [
                    r["device"],
                    r["model"],
                    r["levels"],
                    r.get("videos_per_s", "OOM"),
                    f"{r['speed_vs_full_res']:.2f}x" if "speed_vs_full_res" in r else "",
                    r.get(mem_key, "OOM"),
                    PAPER[r["model"]]["videos_per_s"] if paper else "",
                    PAPER[r["model"]]["memory_gb"] if paper else "",
                ]
                for r in rows
            ],
        )
    )
    print(f"total {time.perf_counter() - t_start:.0f} s")
    bc.write_result(
        "bench_gpu_hpdm_s",
        {"machine": m, "note": args.note, "rows": rows, "paper_a100": PAPER if paper else None},
        args.out,
        args.smoke,
    )


if __name__ == "__main__":
    main()
