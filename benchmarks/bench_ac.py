"""Adaptive computation: measured training speed-up next to its FLOPs bound (paper §4.3, Tab. 1).

    python benchmarks/bench_ac.py --threads 1
    python benchmarks/bench_ac.py --preset ucf101-s --batch 4          # on a GPU
    python benchmarks/bench_ac.py --schedules "1,2,3,3;1,1,2,3;2,2,3,3"
    python benchmarks/bench_ac.py --smoke            # seconds: checks that it runs, writes nothing

With adaptive computation (AC) the fine levels skip the early blocks. The FLOPs of one training
step with and without AC come from `hpdm.info.model_info` (FlopCounterMode, forward + backward);
their ratio is the speed-up AC could give if time were proportional to FLOPs — the bound. The
measured speed-up is the ratio of whole training-step times (the same step as bench_train.py),
models timed in alternating rounds: the median over rounds of each round's ratio. Extra `key=value` arguments override the preset.
"""

from __future__ import annotations

import argparse
import copy

import common as bc

from hpdm.config import ConfigError, load_config
from hpdm.info import model_info


def build_parser() -> argparse.ArgumentParser:
    ap = bc.new_parser(__doc__)
    bc.add_geometry_args(ap)
    ap.add_argument(
        "--schedules", default=None, help="';'-separated levels_per_block lists (default: the preset's AC)"
    )
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=2)
    bc.add_common_args(ap)
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. model.dim=64")
    return ap


def main() -> None:
    args = build_parser().parse_args()
    bc.smoke(args, batch=1, rounds=1, reps=1)
    device = bc.setup(args)
    m = bc.machine(device)
    print(bc.machine_line(m))
    target = args.target or tuple(load_config(args.preset, args.overrides).pyramid.target)
    no_ac = bc.variant_config(args.preset, target, args.patch, "hpdm", args.overrides, args.batch)
    ac_default = bc.variant_config(args.preset, target, args.patch, "hpdm+ac", args.overrides, args.batch)
    schedules = (
        [[int(v) for v in s.split(",")] for s in args.schedules.split(";")]
        if args.schedules
        else [ac_default.model.levels_per_block]
    )
    cfgs = {"off": no_ac}
    for lpb in schedules:
        c = copy.deepcopy(ac_default)
        c.model.levels_per_block = lpb
        try:
            c.validate()
        except ConfigError as e:
            raise SystemExit(f"--schedules {','.join(map(str, lpb))}: {e}") from None
        cfgs[",".join(map(str, lpb))] = c

    flops = {k: model_info(c, batch=1, measure_memory=False)["train_step_flops"] for k, c in cfgs.items()}
    steps = {k: bc.TrainStep(c, device) for k, c in cfgs.items()}
    for s in steps.values():
        s()
    times = bc.interleaved_times(steps, device, args.rounds, args.reps)
    for s in steps.values():
        s.close()

    rows = []
    for k in cfgs:
        rows.append(
            {
                "levels_per_block": cfgs[k].model.levels_per_block or "all",
                "train_step_flops_per_video": flops[k],
                "flops_bound_speedup": flops["off"] / flops[k],
                "step_seconds": times[k],
                "videos_per_s": args.batch / bc.median(times[k]),
                # the models alternate in the same rounds: the median of the rounds' ratios
                "measured_speedup": bc.median([a / b for a, b in zip(times["off"], times[k])]),
                "timing_spread": bc.spread(times[k]),
            }
        )
    for r in rows:
        r["fraction_of_bound"] = (
            (r["measured_speedup"] - 1) / (r["flops_bound_speedup"] - 1)
            if r["flops_bound_speedup"] > 1
            else None
        )

    print()
    print(bc.machine_line(m))
    print(
        f"preset {args.preset}, target {bc.size_str(target)}, patch {bc.size_str(no_ac.pyramid.patch)}, "
        f"{no_ac.pyramid.num_levels} levels, batch {args.batch}"
    )
    print(
        bc.table(
            [
                "levels_per_block",
                "GFLOP/video (train step)",
                "FLOPs bound",
                "measured speed-up",
                "±",
                "videos/s",
                "share of bound's gain",
            ],
            [
                [
                    str(r["levels_per_block"]),
                    r["train_step_flops_per_video"] / 1e9,
                    f"{r['flops_bound_speedup']:.2f}x",
                    f"{r['measured_speedup']:.2f}x",
                    f"{100 * r['timing_spread']:.0f}%",
                    r["videos_per_s"],
                    "" if r["fraction_of_bound"] is None else f"{100 * r['fraction_of_bound']:.0f}%",
                ]
                for r in rows
            ],
        )
    )
    bc.write_result(
        "bench_ac",
        {
            "machine": m,
            "note": args.note,
            "preset": args.preset,
            "target": bc.size_str(target),
            "patch": bc.size_str(no_ac.pyramid.patch),
            "levels": no_ac.pyramid.num_levels,
            "batch": args.batch,
            "overrides": args.overrides,
            "rows": rows,
        },
        args.out,
        args.smoke,
    )


if __name__ == "__main__":
    main()
