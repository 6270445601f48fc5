"""The training step's per-video random draws (boxes, σ, noise, condition dropout, clean context):
the vectorised list-of-generators path against drawing each video as a batch of one, side by side,
at the demo size (or any preset's). Each video owns its generators (keyed by its stream position), so the draws
cannot be one batched call; what matters on a GPU is how many operations, each a kernel launch,
a step issues per video.

    python benchmarks/bench_draws.py [--preset demo] [--batch 8 128] [--device cpu|cuda] [--repeats 5]
    python benchmarks/bench_draws.py --smoke         # seconds: checks that it runs
"""

import time

import common as bc
import torch
from torch.profiler import ProfilerActivity, profile

from hpdm.config import load_config
from hpdm.diffusion import Diffusion
from hpdm.pyramid import Boxes, PyramidGeometry, sample_boxes


def per_video(geo, diff, shape, box_gens, loss_gens, device):
    """Each video as a batch of one, then concatenated."""
    boxes = [sample_boxes(geo, 1, g) for g in box_gens]
    boxes = Boxes.cat(boxes)
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
    ap = bc.new_parser(__doc__)
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 128])
    ap.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=5)
    bc.add_smoke_arg(ap)
    args = ap.parse_args()
    bc.smoke(args, batch=[2], repeats=1)
    device = bc.setup(args)
    cfg = load_config(args.preset, ["diffusion.clean_context=0.5"])
    geo = PyramidGeometry(cfg.pyramid.patch, cfg.pyramid.target, cfg.pyramid.num_levels)
    diff = Diffusion(cfg.diffusion, geo)
    shape = (geo.num_levels, 3, *geo.patch)
    print(bc.machine_line(bc.machine(device)))
    print(f"preset {args.preset}: {geo.num_levels} levels of {bc.size_str(geo.patch)}")
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
