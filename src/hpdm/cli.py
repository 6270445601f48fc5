"""`hpdm` command line: train | sample | demo | info | data preview | prepare | eval | config."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from hpdm.args import at_least, device_arg, guidance_arg, out_dir, positive_int, size_arg, steps_arg
from hpdm.config import ConfigError


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="preset name (tiny, demo, ucf101-s, ...) or a YAML file")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model.num_blocks=4")


# ---------------------------------------------------------------------------------------------


def cmd_train(a: argparse.Namespace) -> int:
    from hpdm.config import load_config
    from hpdm.train import Trainer

    cfg = load_config(a.config, a.overrides)
    out_dir(a.out or cfg.train.out_dir, "--out" if a.out else "train.out_dir")
    trainer = Trainer(cfg, out_dir=a.out, resume=a.resume, device=a.device, init=a.init)
    if trainer.ctx.is_main:
        print(
            f"training {cfg.name}: {cfg.train.steps} steps, out {trainer.out_dir} (from step {trainer.step})"
        )
    rec = trainer.train(until=a.until)
    if trainer.ctx.is_main:
        print(json.dumps({k: v for k, v in rec.items() if k != "loss_by_sigma"}))
        print(f"checkpoints in {trainer.out_dir / 'checkpoints'}")
    from hpdm import distributed as dist

    del trainer  # drop the wrapped model's hold on the process group before it is destroyed
    dist.reset(sync=True)  # under torchrun: all ranks leave together (gloo can abort otherwise)
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from hpdm.config import load_config
    from hpdm.info import format_info, model_info

    cfg = load_config(a.config, a.overrides)
    info = model_info(cfg, batch=a.batch, vs_full_res=a.vs_full_res)
    if a.gpus:
        from hpdm.info import recipe

        info["recipe"] = recipe(info, cfg, a.gpus, a.tflops, a.gpu_memory)
    print(json.dumps(info, indent=2) if a.json else format_info(info))
    return 0


def cmd_config(a: argparse.Namespace) -> int:
    import yaml

    from hpdm.config import list_presets, load_config

    if a.config is None:
        print("presets: " + ", ".join(list_presets()))
        return 0
    print(yaml.safe_dump(load_config(a.config, a.overrides).to_dict(), sort_keys=False), end="")
    return 0


def cmd_sample(a: argparse.Namespace) -> int:
    import torch

    from hpdm.checkpoint import load_model
    from hpdm.sampling import Sampler, coarse_from_videos
    from hpdm.train import pick_device

    device = pick_device(a.device)
    out_dir(a.out)
    model, cfg = load_model(a.ckpt, ema=not a.no_ema, device=device, overrides=a.overrides)
    given = None
    if a.upsample:
        for f in a.upsample:
            if not Path(f).is_file():
                raise FileNotFoundError(f"--upsample: no such video file: {f}")
        given = [coarse_from_videos(a.upsample, cfg, a.size)]
        a.num = len(a.upsample)
    text = None
    if a.prompt is not None:
        from hpdm.text import encode_text

        if cfg.model.text_dim == 0:
            raise ValueError("this checkpoint is not a text-to-video model (model.text_dim=0); use --class")
        text = encode_text(cfg, [a.prompt] * a.num, device=device)
    if a.cfg is not None:
        cfg.sample.cfg = a.cfg
    t0 = time.perf_counter()
    gen = Sampler(model, cfg, device).generate(
        num=a.num,
        labels=a.cls,
        text=text,
        size=a.size,
        seed=a.seed,
        steps=a.steps,
        overlap=a.overlap,
        cache=a.cache,
        progress=not a.quiet,
        given=given,
    )
    gen.settings.update(
        {
            "ckpt": str(a.ckpt),
            "upsample": a.upsample,
            "ema": not a.no_ema,
            "prompt": a.prompt,
            "seconds": round(time.perf_counter() - t0, 2),
            "device": str(device),
        }
    )
    names = None
    if cfg.model.num_classes and gen.settings["labels"] is not None and cfg.data.dataset == "shapes":
        from hpdm.data.shapes import SHAPES_CLASSES

        names = [SHAPES_CLASSES[k] for k in gen.settings["labels"]]
    from hpdm.outputs import save_outputs

    paths = save_outputs(gen, Path(a.out), cfg.sample.fps, save_levels=a.levels, labels=names)
    print(
        f"wrote {len(paths)} videos of {'x'.join(map(str, gen.video.shape[-3:]))} to {a.out} "
        f"(contact_sheet.png, settings.json) in {gen.settings['seconds']} s"
    )
    del torch
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from hpdm.demo import run_demo, run_prompt_demo

    out_dir(a.out)
    common = dict(out=Path(a.out), size=a.size, seed=a.seed, quiet=a.quiet, sample_steps=a.sample_steps)
    if a.prompt is not None or a.ckpt is not None:
        if a.prompt is None or a.train:
            raise ValueError(
                "--ckpt goes with --prompt (a text-to-video model); --train retrains the class demo"
            )
        run_prompt_demo(a.prompt, ckpt=a.ckpt, num=a.num_per_class, **common)
        return 0
    run_demo(train=a.train, steps=a.steps, num_per_class=a.num_per_class, overrides=a.overrides, **common)
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from hpdm.demo import export_checkpoint

    out_dir(a.out)
    out = export_checkpoint(a.ckpt, a.out, ema=not a.no_ema, half=a.half, overrides=a.overrides)
    kind = ("raw" if a.no_ema else "EMA") + (" (fp16)" if a.half else "")
    print(f"exported {kind} weights, config and state to {out}")
    return 0


def cmd_data_preview(a: argparse.Namespace) -> int:
    from hpdm.preview import data_preview

    out_dir(a.out)
    data_preview(dataset=a.dataset, out=Path(a.out), num=a.num, config=a.config, path=a.path, seed=a.seed)
    return 0


def cmd_prepare(a: argparse.Namespace) -> int:
    from hpdm.config import load_config
    from hpdm.data import build_dataset
    from hpdm.data.cache import prepare_cache

    cfg = load_config(a.config, a.overrides)
    out_dir(a.out)
    ds = build_dataset(cfg, train=not a.test_split)
    out = prepare_cache(
        ds, a.out, clips_per_video=a.clips_per_video, shard_size=a.shard_size, num_workers=a.workers
    )
    if cfg.model.text_dim > 0 and not a.no_text:
        from hpdm.data.cache import prepare_text

        meta = prepare_text(out, cfg)
        print(f"captions encoded with text.encoder={cfg.text.encoder} into {meta}")
    print(
        f"cache written to {out}; train from it with: "
        f"hpdm train {a.config} data.dataset=cache data.path={out}"
    )
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from hpdm.metrics import cli as eval_cli

    return eval_cli.run(a)


def cmd_study(a: argparse.Namespace) -> int:
    from hpdm.study import report_study, run_study

    if a.study_command == "run":
        run_study(
            a.study,
            a.out,
            only=a.only,
            smoke=a.smoke,
            progress=not a.quiet,
            eval_seeds=a.eval_seeds,
            feature_cache=a.feature_cache,
        )
        result = report_study(a.out)
    else:
        result = report_study(a.out)
    print((Path(a.out) / "results.md").read_text())
    print(f"{len(result['records'])} evaluations; results.json, results.md and plots in {a.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="hpdm", description="Hierarchical Patch Diffusion Models for video.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a preset or YAML config")
    _add_config(p)
    p.add_argument(
        "--resume", default=None, help="'auto' (newest complete checkpoint in the run) or a checkpoint dir"
    )
    p.add_argument("--out", default=None, help="run directory (default: train.out_dir)")
    p.add_argument(
        "--device", type=device_arg, default=None, help="cpu | cuda | cuda:1 (default: cuda when available)"
    )
    p.add_argument(
        "--until",
        type=at_least(1, "the step to stop after"),
        default=None,
        help="stop after this step (keeps the schedule of train.steps)",
    )
    p.add_argument("--init", default=None, help="initialise from a base checkpoint: grow it (paper §5.2)")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("info", help="parameters, tokens, FLOPs per level/block, activation memory")
    _add_config(p)
    p.add_argument("--batch", type=at_least(1, "the videos per training step"), default=1)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--vs-full-res",
        action="store_true",
        help="also count the 1-level full-resolution model with the same backbone "
        "(hpdm.info.full_res_config) and print its FLOPs and activations over the pyramid's",
    )
    p.add_argument(
        "--gpus",
        type=at_least(1, "the number of GPUs"),
        default=None,
        help="also print what the config's training run costs on this many GPUs: GPU-hours for "
        "train.steps x the global batch, and memory per GPU (FSDP shards the training state)",
    )
    p.add_argument(
        "--tflops",
        type=float,
        default=60.0,
        help="sustained TFLOP/s per GPU for --gpus (default 60: about 40%% of an A100's TF32 peak)",
    )
    p.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU for --gpus (default 80)")
    p.set_defaults(fn=cmd_info)

    p = sub.add_parser("config", help="print a resolved config (or list presets)")
    p.add_argument("config", nargs="?")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(fn=cmd_config)

    p = sub.add_parser("sample", help="generate videos from a checkpoint")
    p.add_argument("--ckpt", required=True, help="checkpoint dir or run dir (newest checkpoint)")
    p.add_argument("--num", type=positive_int, default=4)
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--class", dest="cls", type=int, default=None, help="class id (default: cycle through classes)"
    )
    g.add_argument("--prompt", default=None, help="text prompt (text-to-video models)")
    p.add_argument("--size", type=size_arg, default=None, help="output FxHxW (default: the training target)")
    p.add_argument(
        "--steps",
        type=steps_arg,
        default=None,
        help="level-0 steps (halved per finer level), or one per level, e.g. 64,16,8",
    )
    p.add_argument("--overlap", choices=["none", "spatial", "full"], default=None)
    p.add_argument(
        "--cfg",
        type=guidance_arg,
        default=None,
        help="classifier-free guidance scale (1 = off), or one per level: 3,1,1",
    )
    p.add_argument("--cache", choices=["context", "none"], default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="samples")
    p.add_argument("--levels", action="store_true", help="also write the coarse levels")
    p.add_argument(
        "--upsample",
        nargs="+",
        default=None,
        metavar="VIDEO",
        help="super-resolve these videos: each one's first F frames, resized to level 0, are kept "
        "and only the finer levels are sampled (one output per video; --num is ignored)",
    )
    p.add_argument("--no-ema", action="store_true", help="use raw instead of EMA weights")
    p.add_argument("--device", type=device_arg, default=None)
    p.add_argument("--quiet", action="store_true")
    p.add_argument(
        "overrides", nargs="*", help="sampling settings, e.g. sample.S_churn=0 sample.cfg_interval=[2,80]"
    )
    p.set_defaults(fn=cmd_sample)

    p = sub.add_parser("demo", help="the main job: generate a video per class with the shipped demo model")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--train", action="store_true", help="retrain the demo model from scratch first")
    p.add_argument(
        "--steps",
        type=at_least(1, "a number of training steps"),
        default=None,
        help="training steps with --train (default: the preset's)",
    )
    p.add_argument("--num-per-class", type=positive_int, default=1, help="videos per class (per prompt)")
    p.add_argument(
        "--prompt",
        default=None,
        help='text-to-video: videos of this prompt, e.g. "a yellow star moves quickly down over a brown '
        'checkerboard", from the shipped text-to-video model (or --ckpt)',
    )
    p.add_argument("--ckpt", default=None, help="with --prompt: a text-to-video run or checkpoint to use")
    p.add_argument("--size", type=size_arg, default=None)
    p.add_argument("--sample-steps", type=steps_arg, default=None, help="as `hpdm sample --steps`")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("overrides", nargs="*", help="config overrides for --train")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("export", help="write a release checkpoint (EMA weights only) from a run")
    p.add_argument("--ckpt", required=True, help="checkpoint dir or run dir (newest checkpoint)")
    p.add_argument("--out", required=True)
    p.add_argument("--no-ema", action="store_true")
    p.add_argument("--half", action="store_true", help="store the weights as fp16 (half the file)")
    p.add_argument("overrides", nargs="*", help="sample.*/data.* settings for the released config")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("data", help="dataset tools")
    dsub = p.add_subparsers(dest="data_command", required=True)
    q = dsub.add_parser("preview", help="write an mp4 of samples, a PNG of pyramid boxes, print captions")
    q.add_argument("--dataset", default="shapes", help="shapes | folder | ucf101 | captions | cache")
    q.add_argument("--path", default=None, help="dataset path (not for shapes)")
    q.add_argument("--config", default="demo", help="preset whose pyramid geometry to use")
    q.add_argument("--num", type=positive_int, default=8)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", default="preview")
    q.set_defaults(fn=cmd_data_preview)

    p = sub.add_parser("prepare", help="decode a dataset once into a memory-mapped uint8 cache")
    _add_config(p)
    p.add_argument("--out", required=True)
    p.add_argument("--clips-per-video", type=positive_int, default=1)
    p.add_argument("--shard-size", type=positive_int, default=1024)
    p.add_argument("--workers", type=at_least(0, "a number of worker processes, 0 for none"), default=0)
    p.add_argument("--test-split", action="store_true")
    p.add_argument(
        "--no-text",
        action="store_true",
        help="text-to-video configs: do not precompute the captions' text tokens (training then encodes them)",
    )
    p.set_defaults(fn=cmd_prepare)

    p = sub.add_parser("study", help="train and evaluate the variants of a study; tables and plots")
    ssub = p.add_subparsers(dest="study_command", required=True)
    q = ssub.add_parser("run", help="train each variant for its budget and evaluate it (resumable)")
    q.add_argument("study", help="a study YAML (see studies/)")
    q.add_argument("--out", required=True, help="the study's folder")
    q.add_argument("--only", nargs="+", default=None, metavar="NAME", help="only these variants")
    q.add_argument(
        "--eval-seeds",
        nargs="+",
        type=int,
        default=None,
        metavar="SEED",
        help="evaluate with only these of eval.seeds now (e.g. one seed for every variant first)",
    )
    q.add_argument(
        "--feature-cache",
        default=None,
        metavar="DIR",
        help="the real clips' I3D features (default OUT/.real_i3d); one folder for several studies "
        "computes each set of real clips once (files are named by the clips' content hash)",
    )
    q.add_argument("--smoke", action="store_true", help="the whole study at tiny size, to check it runs")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(fn=cmd_study)
    q = ssub.add_parser("report", help="results.json, results.md and plots of a study folder")
    q.add_argument("out", help="the study's folder")
    q.set_defaults(fn=cmd_study)

    try:
        from hpdm.metrics import cli as eval_cli

        eval_cli.add_parser(sub)
    except ImportError:
        pass
    return ap


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """Parse, letting key=value overrides come after options too (`hpdm train demo --out r lr=..`):
    argparse fills a `nargs="*"` positional only from the first run of positionals."""
    ap = build_parser()
    args, extra = ap.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*(args.overrides or []), *extra]
        else:
            ap.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ConfigError, OSError, ValueError, RuntimeError) as e:
        from hpdm.train import TrainingDiverged

        kind = "training stopped" if isinstance(e, TrainingDiverged) else "error"
        print(f"hpdm: {kind}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
