"""The training step's per-video random draws (boxes, σ, noise, condition dropout, clean context):
the vectorised list-of-generators path against drawing each video as a batch of one, side by side,
at the demo size. Each video owns its generators (keyed by its stream position), so the draws
cannot be one batched call; what matters on a GPU is how many operations, each a kernel launch,
a step issues per video.

    python benchmarks/bench_draws.py [--batch 8 128] [--device cpu|cuda] [--repeats 5]
"""

import argparse
import platform
import time

import torch
from torch.profiler import ProfilerActivity, profile

from hpdm.config import load_config
from hpdm.diffusion import Diffusion
from hpdm.pyramid import Boxes, PyramidGeometry, sample_boxes


def per_video(geo, diff, shape, box_gens, loss_gens, device):
    """Each video as a batch of one, then concatenated."""
    boxes = [sample_boxes(geo, 1, g) for g in box_gens]
    boxes = Boxes(*(torch.cat([getattr(b, k) for b in boxes]) for k in ("offset", "size", "pixel")))
    parts = [diff.draw(1, shape, g, device) for g in loss_gens]
    return boxes, tuple(torch.cat(p) for p in zip(*parts))


def vectorised(geo, diff, shape, box_gens, loss_gens, device):
    return sample_boxes(geo, len(box_gens), box_gens), diff.draw(len(loss_gens), shape, loss_gens, device)


def measure(fn, make_gens, repeats: int, device) -> tuple[float, int]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn(*make_gens())  # warm-up
    times = []
    for _ in range(repeats):
        gens = make_gens()
        sync()
        t0 = time.perf_counter()
        fn(*gens)
        sync()
        times.append(time.perf_counter() - t0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(*make_gens())
    ops = len([e for e in prof.events() if e.cpu_parent is None])
    return sorted(times)[len(times) // 2], ops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 128])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    device = torch.device(args.device)
    cfg = load_config("demo", ["diffusion.clean_context=0.5"])
    geo = PyramidGeometry(cfg.pyramid.patch, cfg.pyramid.target, cfg.pyramid.num_levels)
    diff = Diffusion(cfg.diffusion, geo)
    shape = (geo.num_levels, 3, *geo.patch)
    name = (
        torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    )
    print(f"device: {name}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| batch | per video: ms / ops | vectorised: ms / ops | speed-up |")
    print("|---|---|---|---|")
    for b in args.batch:

        def make_gens(b=b):
            box = [torch.Generator().manual_seed(i) for i in range(b)]
            loss = [torch.Generator(device=device).manual_seed(i + 10**6) for i in range(b)]
            return geo, diff, shape, box, loss, device

        t_old, n_old = measure(per_video, make_gens, args.repeats, device)
        t_new, n_new = measure(vectorised, make_gens, args.repeats, device)
        print(f"| {b} | {t_old * 1e3:.1f} / {n_old} | {t_new * 1e3:.1f} / {n_new} | {t_old / t_new:.1f}x |")


if __name__ == "__main__":
    main()
