"""Hardware utilisation of a training step: achieved FLOP/s over this machine's own fp32 matmul peak.

    python benchmarks/bench_util.py --threads 1
    python benchmarks/bench_util.py --preset ucf101-s --batch 4 --matmul 8192      # on a GPU
    python benchmarks/bench_util.py --smoke          # seconds: checks that it runs, writes nothing

FLOPs of one training step (forward + backward) are counted with
`torch.utils.flop_counter.FlopCounterMode` on the device; the optimizer and EMA are not counted
(a few FLOPs per parameter) but are timed, as in a real step. The peak is the best rate of a square
fp32 matmul measured in the same run, with the same TF32 setting as training (CUDA: TF32 on, the
trainer's default `train.tf32`; the strict-fp32 peak is reported too). Utilisation = achieved / peak.
"""

from __future__ import annotations

import argparse
import time

import common as bc
import torch


def build_parser() -> argparse.ArgumentParser:
    ap = bc.new_parser(__doc__)
    bc.add_geometry_args(ap)
    ap.add_argument(
        "--variants", default="hpdm+ac,full-res", help="hpdm+ac, hpdm, full-res (comma-separated)"
    )
    ap.add_argument("--peak-seconds", type=float, default=2.0, help="time spent measuring the matmul peak")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument(
        "--matmul", type=int, default=None, help="peak matmul size N (default 1024 CPU, 8192 CUDA)"
    )
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=2)
    bc.add_common_args(ap)
    ap.add_argument("overrides", nargs="*")
    return ap


def matmul_peak(n: int, device: torch.device, seconds: float = 2.0) -> float:
    """Best FLOP/s of an n x n fp32 matmul (2 n^3 FLOPs) over ~`seconds` of repeats."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    c = torch.empty(n, n, device=device)
    torch.matmul(a, b, out=c)
    bc.sync(device)
    best, t_end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        bc.sync(device)
        t0 = time.perf_counter()
        for _ in range(4):
            torch.matmul(a, b, out=c)
        bc.sync(device)
        best = min(best, (time.perf_counter() - t0) / 4)
    return 2 * n**3 / best


def main() -> None:
    args = build_parser().parse_args()
    bc.smoke(args, batch=1, rounds=1, reps=1, matmul=128, peak_seconds=0.05)
    device = bc.setup(args)
    m = bc.machine(device)
    print(bc.machine_line(m))
    from hpdm.config import load_config

    target = args.target or tuple(load_config(args.preset, args.overrides).pyramid.target)
    n = args.matmul or (8192 if device.type == "cuda" else 1024)
    secs = args.peak_seconds
    peaks = {}
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        peaks["fp32"] = matmul_peak(n, device, secs)
        torch.backends.cuda.matmul.allow_tf32 = True
        peaks["tf32"] = matmul_peak(n, device, secs)
        peak_kind = "tf32"  # what the trainer uses (train.tf32 = true)
    else:
        peaks["fp32"] = matmul_peak(n, device, secs)
        peak_kind = "fp32"

    steps, flops, cfgs = {}, {}, {}
    for v in args.variants.split(","):
        cfgs[v] = bc.variant_config(args.preset, target, args.patch, v, args.overrides, args.batch)
        steps[v] = bc.TrainStep(cfgs[v], device)
        steps[v]()
        flops[v] = steps[v].flops()
    times = bc.interleaved_times(steps, device, args.rounds, args.reps)
    peak_after = matmul_peak(n, device, secs / 2)  # the peak again: did the load change?
    for s in steps.values():
        s.close()

    rows = []
    for v in steps:
        t = bc.median(times[v])
        rows.append(
            {
                "model": v,
                "target": bc.size_str(target),
                "levels": cfgs[v].pyramid.num_levels,
                "batch": args.batch,
                "step_flops": flops[v],
                "step_seconds": times[v],
                "achieved_flops_per_s": flops[v] / t,
                "utilisation": flops[v] / t / peaks[peak_kind],
            }
        )
    print()
    print(bc.machine_line(m))
    print(
        "peak fp32 matmul "
        + ", ".join(f"{k}: {v / 1e9:.1f} GFLOP/s" for k, v in peaks.items())
        + f" (n={n}; {peak_after / 1e9:.1f} GFLOP/s again after the steps)"
    )
    print(
        bc.table(
            [
                "model",
                "target",
                "batch",
                "GFLOP/step",
                "s/step",
                "achieved GFLOP/s",
                f"utilisation of {peak_kind} peak",
            ],
            [
                [
                    r["model"],
                    r["target"],
                    r["batch"],
                    r["step_flops"] / 1e9,
                    bc.median(r["step_seconds"]),
                    r["achieved_flops_per_s"] / 1e9,
                    f"{100 * r['utilisation']:.1f}%",
                ]
                for r in rows
            ],
        )
    )
    bc.write_result(
        "bench_util",
        {
            "machine": m,
            "note": args.note,
            "preset": args.preset,
            "overrides": args.overrides,
            "matmul_n": n,
            "peak_flops_per_s": peaks,
            "peak_kind": peak_kind,
            "peak_after_steps": peak_after,
            "rows": rows,
        },
        args.out,
        args.smoke,
    )


if __name__ == "__main__":
    main()
