"""Time the procedural `shapes` renderer: 256 clips of 16x64x64 (the README's data budget).

python benchmarks/bench_shapes.py [--clips 256] [--frames 16] [--size 64] [--repeats 3]
python benchmarks/bench_shapes.py --smoke        # seconds: checks that it runs
"""

import argparse
import time

import common as bc

from hpdm.data.shapes import render, sample_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=256)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    bc.add_smoke_arg(ap)
    args = ap.parse_args()
    bc.smoke(args, clips=4, frames=4, size=16, repeats=1)
    args.device = "cpu"  # the renderer for loader workers
    print(bc.machine_line(bc.machine(bc.setup(args))))
    t0 = time.perf_counter()
    params = sample_params(range(args.clips), seed=0)
    t_params = time.perf_counter() - t0
    render(sample_params(range(2)), 2, 16, 16)  # warm up kernels and the thread pool
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        render(params, args.frames, args.size, args.size)
        times.append(time.perf_counter() - t0)
    mpix = args.clips * args.frames * args.size**2 / 1e6
    print(f"| clips | F x H x W | sample_params s | render s (best / median of {args.repeats}) | Mpix/s |")
    print("|---|---|---|---|---|")
    best, med = min(times), sorted(times)[len(times) // 2]
    print(
        f"| {args.clips} | {args.frames}x{args.size}x{args.size} | {t_params:.3f} | "
        f"{best:.2f} / {med:.2f} | {mpix / best:.1f} |"
    )


if __name__ == "__main__":
    main()
