"""`hpdm eval fvd | is | report | train-classifier`."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path


def _steps(text: str):
    """`--steps`: level 0's sampling steps, or one per level; each a positive whole number."""
    from hpdm.args import steps_arg

    value = steps_arg(text)
    if min(value if isinstance(value, list) else [value]) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: sampling steps must be >= 1, e.g. 32 or 64,16,8")
    return value


def _shape_size(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a bounding radius as a share of the frame, in (0, 1)")
    return value


def add_parser(sub) -> None:
    from hpdm.args import at_least, device_arg, guidance_arg, positive_int, size_arg

    clips = at_least(2, "a number of clips, 2 or more for the covariance FVD needs")

    p = sub.add_parser("eval", help="FVD, Inception Score, shapes report")
    esub = p.add_subparsers(dest="eval_command", required=True)

    q = esub.add_parser(
        "fvd",
        help="FVD (StyleGAN-V protocol) of generated vs real videos, or real statistics to reuse",
        description="FVD of --fake/--ckpt against --real; with --save-real-stats and no fakes, only "
        "the real statistics are computed and saved, for later runs to pass as --real STATS.npz.",
    )
    q.add_argument(
        "--real",
        "--config",
        dest="real",
        required=True,
        metavar="REAL",
        help="real videos: a preset/YAML config whose data section names the dataset (e.g. demo, "
        "ucf101-s, followed by key=value overrides such as data.path=...), a folder of videos, or "
        "statistics written by --save-real-stats (.npz)",
    )
    q.add_argument("--fake", default=None, help="folder of generated videos (mp4/gif)")
    q.add_argument("--ckpt", default=None, help="generate the fake videos with this checkpoint instead")
    q.add_argument("--num-fake", type=clips, default=2048, help="default: 2048 (StyleGAN-V)")
    q.add_argument(
        "--num-real",
        type=clips,
        default=None,
        help="real clips (default: as many as --num-fake, at most the videos of the split; with "
        "saved statistics: whatever they hold)",
    )
    q.add_argument(
        "--real-order",
        choices=["first", "shuffled"],
        default="first",
        help="which real videos: the first of the split in dataset order (StyleGAN-V) or a seeded "
        "random subset",
    )
    q.add_argument("--classes", choices=["balanced", "random"], default="balanced", help="shapes only")
    q.add_argument("--split", choices=["train", "test"], default="train", help="real split (paper: train)")
    q.add_argument(
        "--save-real-stats",
        default=None,
        metavar="PATH.npz",
        help="compute the real statistics and save them here (overwriting); without --fake/--ckpt "
        "that is all the run does",
    )
    q.add_argument(
        "--real-stats",
        default=None,
        metavar="PATH.npz",
        help="cache for the real statistics of a config: reused when it exists and fits, else written",
    )
    q.add_argument("--batch-size", type=positive_int, default=8)
    q.add_argument(
        "--steps", type=_steps, default=None, help="sampling steps with --ckpt (level 0's, or one per level)"
    )
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--device", type=device_arg, default=None)
    q.add_argument("--out", default="fvd.json")
    _add_prompts(q)
    q.add_argument("overrides", nargs="*", help="key=value overrides for a --real config, e.g. data.path=...")
    q.set_defaults(fn=run_fvd)

    q = esub.add_parser("is", help="Inception Score with a user-supplied C3D (UCF-101) checkpoint")
    q.add_argument("--weights", required=True, help="C3D weights (safetensors or torch state dict)")
    q.add_argument("--mean", default=None, help="C3D mean clip, when not inside the weights file")
    q.add_argument("--fake", default=None)
    q.add_argument("--ckpt", default=None)
    q.add_argument("--num-fake", type=positive_int, default=2048)
    q.add_argument("--splits", type=positive_int, default=10)
    q.add_argument("--batch-size", type=positive_int, default=8)
    q.add_argument("--steps", type=_steps, default=None, help="sampling steps with --ckpt")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", default="is.json")
    _add_prompts(q)
    q.set_defaults(fn=run_is)

    q = esub.add_parser("report", help="FVD per level, seam score, class accuracy for a shapes model")
    q.add_argument("--ckpt", required=True)
    q.add_argument("--num", type=clips, default=64, help="videos per side (real and fake)")
    q.add_argument("--batch-size", type=positive_int, default=8)
    q.add_argument("--steps", type=_steps, default=None, help="level 0's, or one per level, e.g. 64,16,8")
    q.add_argument("--overlap", choices=["none", "spatial", "full"], default=None)
    q.add_argument(
        "--cfg",
        type=guidance_arg,
        default=None,
        help="guidance scale, or one per level (default: the checkpoint's)",
    )
    q.add_argument("--seed", type=int, default=0)
    q.add_argument(
        "--size",
        type=size_arg,
        default=None,
        help="generate and compare at FxHxW, e.g. 16x128x256 (default: the training target)",
    )
    q.add_argument("--classifier", default=None, help="classifier weights (default: shipped)")
    q.add_argument(
        "--shape-classifier",
        default=None,
        help="colour-blind classifier weights (default: shipped; train one for another data.shape_size)",
    )
    q.add_argument("--out", default="report")
    q.add_argument("overrides", nargs="*", help="sampling settings, e.g. sample.S_churn=0")
    q.set_defaults(fn=run_report_cmd)

    q = esub.add_parser("train-classifier", help="train a small shapes classifier used by the report")
    q.add_argument(
        "--kind",
        choices=["class", "shape"],
        default="class",
        help="class: colour and shape tell the class; shape: colours randomised, the outline alone",
    )
    q.add_argument("--out", required=True)
    q.add_argument("--steps", type=positive_int, default=600)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument(
        "--shape-size",
        type=_shape_size,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="train on objects of this bounding-radius range (data.shape_size; default 0.14 0.21)",
    )
    q.set_defaults(fn=run_train_classifier)


def run(a: argparse.Namespace) -> int:
    return a.fn(a)


def _out_file(path: str, option: str) -> Path:
    """An output file's folder is created now, so a bad path fails before any work is done."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{option} {p} is a folder; give a file name, e.g. {p / 'fvd.json'}")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(
            f"{option} {p}: cannot create its folder ({e.strerror or e}); choose another path"
        ) from None
    return p


def _fake_source(a, num: int) -> tuple:
    """Fake videos as batches of (B, 3, 16, H, W), from a folder or generated by a checkpoint.

    Returns (batches, what they must match in the real statistics, a description)."""
    from hpdm.metrics.fvd import NUM_FRAMES, peek, videos_from_dir
    from hpdm.metrics.report import fake_batches, to_fvd_clip

    if (a.fake is None) == (a.ckpt is None):
        raise ValueError("give exactly one of --fake DIR (generated videos) or --ckpt RUN (generate them)")
    if a.fake is not None:
        if getattr(a, "prompts", None) is not None:
            raise ValueError("--prompts generates videos with --ckpt; it does not apply to --fake")
        folder = Path(a.fake)
        if not folder.is_dir():
            raise FileNotFoundError(f"--fake {folder}: no such folder; give the folder of generated videos")
        first, batches = peek(videos_from_dir(folder, batch_size=a.batch_size))
        if first is None:
            raise ValueError(
                f"--fake {folder}: no video there has {NUM_FRAMES} frames; FVD needs 16-frame clips"
            )
        asks = {"source_resolution": list(first.shape[-2:]), "source_frames": NUM_FRAMES}
        return batches, asks, {"fake": str(folder)}
    from hpdm.checkpoint import load_model

    model, cfg = load_model(a.ckpt, device=getattr(a, "device", None))
    F, H, W = cfg.pyramid.target
    prompts, info = _prompts(a), {"fake": f"generated by {a.ckpt}", "seed": a.seed}
    if prompts is not None:
        info.update(prompts=a.prompts, prompt_template=a.prompt_template, num_prompts=len(prompts))
    gens = fake_batches(model, cfg, num, a.batch_size, a.seed, progress=True, prompts=prompts, steps=a.steps)
    asks = {
        "source_resolution": [H, W],
        "source_frames": min(F, NUM_FRAMES),
        "frame_stride": cfg.data.frame_stride,
    }
    return (to_fvd_clip(g.video) for g in gens), asks, info


def _prompts(a) -> list[str] | None:
    """`--prompts`: a file of prompts, or ucf101 (the class names through --prompt-template)."""
    if getattr(a, "prompts", None) is None:
        return None
    from hpdm.metrics.prompts import load_prompts

    return load_prompts(a.prompts, a.prompt_template)


def _add_prompts(q) -> None:
    q.add_argument(
        "--prompts",
        default=None,
        metavar="FILE|ucf101",
        help="text-to-video --ckpt: prompts cycling over the generated videos, one per line in FILE, "
        "or ucf101 for UCF-101's 101 class names (zero-shot UCF-101, paper Tab. 5)",
    )
    q.add_argument(
        "--prompt-template",
        default="{}",
        help='with --prompts ucf101: the prompt around the class name in words, e.g. "a person {}" '
        "(default: the name alone)",
    )


def _real_kind(real: str) -> str:
    """What --real names: saved statistics, a folder of videos or a config."""
    p = Path(real)
    if p.suffix.lower() == ".npz":
        return "stats"
    if p.is_dir():
        return "folder"
    if not p.suffix and len(p.parts) > 1:  # a path, not a preset name
        raise FileNotFoundError(
            f"--real {p}: no such folder; give a folder of real videos, statistics (.npz) or a config"
        )
    return "config"


def _at_most(batches, num: int):
    """The batches, cut after `num` clips."""
    for b in batches:
        if num <= 0:
            return
        yield b[:num]
        num -= len(b)


def run_fvd(a: argparse.Namespace) -> int:
    from hpdm.metrics.fvd import (
        NUM_FRAMES,
        I3DFeatureExtractor,
        check_protocol,
        fvd_from_videos,
        load_stats,
        peek,
        real_stats_from_videos,
        videos_from_dir,
    )

    kind = _real_kind(a.real)
    has_fake = a.fake is not None or a.ckpt is not None
    if not has_fake and a.save_real_stats is None:
        raise ValueError(
            "nothing to do: give --fake DIR or --ckpt RUN to measure FVD, or --save-real-stats PATH.npz "
            "to only compute the real statistics"
        )
    if a.fake is not None and a.ckpt is not None:
        raise ValueError("give one of --fake DIR and --ckpt RUN, not both")
    if kind == "stats":
        if a.save_real_stats or a.real_stats:
            option = "--save-real-stats" if a.save_real_stats else "--real-stats"
            raise ValueError(
                f"{option} needs real videos, and --real {a.real} is already statistics; drop {option}, "
                "or give a config or folder of real videos as --real"
            )
        load_stats(a.real)  # a wrong or missing file is refused before any fake is made
    elif a.save_real_stats and a.real_stats:
        raise ValueError(
            "give one of --save-real-stats (compute and save) and --real-stats (cache), not both"
        )
    if kind != "config" and a.overrides:
        raise ValueError(
            f"{' '.join(a.overrides)}: key=value overrides apply to a config given as --real, and "
            f"--real {a.real} is a {'statistics file' if kind == 'stats' else 'folder'}"
        )
    out = _out_file(a.out, "--out") if has_fake else None
    save = _out_file(a.save_real_stats, "--save-real-stats") if a.save_real_stats else None

    fake, fake_asks, fake_info = _fake_source(a, a.num_fake) if has_fake else (None, {}, {})
    real, stats, info, real_size = None, a.real_stats, {}, {}
    num_real, exact = a.num_real or a.num_fake, True
    if kind == "stats":
        stats, num_real = a.real, a.num_real
    elif kind == "folder":
        folder = Path(a.real)
        first, real = peek(videos_from_dir(folder, batch_size=a.batch_size))
        if first is None:
            raise ValueError(
                f"--real {folder}: no video there has {NUM_FRAMES} frames; FVD needs 16-frame clips"
            )
        real_size = {"source_resolution": list(first.shape[-2:])}
        if a.num_real is None:  # by default: up to --num-fake, as many as the folder has
            real, exact = _at_most(real, num_real), False
        info = {
            "real": str(folder),
            "dataset": f"folder:{folder.resolve()}",
            "frame_stride": 1,
            "source_frames": NUM_FRAMES,
            "clip_sampling": "the first 16 frames of each video file, files in sorted order",
        }
    else:
        from hpdm.config import load_config
        from hpdm.metrics.report import real_fvd_clips

        cfg = load_config(a.real, a.overrides)
        real, count, info = real_fvd_clips(
            cfg,
            num_real,
            a.batch_size,
            order=a.real_order,
            train=a.split == "train",
            seed=a.seed + 1,
            balanced=a.classes == "balanced",
        )
        if count < num_real and a.num_real is not None:
            raise ValueError(
                f"--num-real {a.num_real}: the {a.split} split of {info['dataset']} has only {count} "
                f"videos long enough for a clip; ask for at most {count}"
            )
        num_real = count
        info["real"] = f"{cfg.name}: {info['dataset']}"
        if cfg.data.dataset == "shapes":
            info["classes"] = a.classes
        if save is None:
            key = hashlib.sha1(json.dumps([info, num_real, a.seed, a.real_order]).encode()).hexdigest()[:12]
            stats = a.real_stats or str(
                Path.home() / ".cache" / "hpdm" / "fvd_stats" / f"{cfg.name}_{key}.npz"
            )
    if has_fake and kind != "stats":  # before any I3D work
        check_protocol({**info, **real_size}, fake_asks, f"the real clips of --real {a.real}")

    extractor = I3DFeatureExtractor(device=a.device or "cpu", batch_size=a.batch_size)
    if save is not None:
        _, _, record = real_stats_from_videos(
            real, extractor, num_real=num_real, exact=exact, protocol=info, save_path=save
        )
        print(f"real statistics of {record['num_real']} clips written to {save}")
        if not has_fake:
            return 0
        real, stats, num_real = None, save, None
    res = fvd_from_videos(
        real,
        fake,
        num_real=num_real if exact else None,
        num_fake=a.num_fake,
        extractor=extractor,
        real_stats_path=stats,
        protocol=info,
        fake_protocol=fake_asks,
        progress=True,
    )
    res["protocol"].update(fake_info)
    out.write_text(json.dumps(res, indent=2))
    print(f"FVD = {res['fvd']:.2f} ({res['num_fake']} fake vs {res['num_real']} real); written to {out}")
    return 0


def run_is(a: argparse.Namespace) -> int:
    import numpy as np

    from hpdm.metrics.c3d import C3DClassifier, inception_score, load_c3d

    if a.splits > a.num_fake:
        raise ValueError(
            f"--splits {a.splits} is more than --num-fake {a.num_fake}; each split needs a video"
        )
    out = _out_file(a.out, "--out")
    clf = C3DClassifier(model=load_c3d(a.weights, mean_path=a.mean), batch_size=a.batch_size)
    fake, _, info = _fake_source(a, a.num_fake)
    probs, n = [], 0
    for batch in fake:
        probs.append(clf(batch))
        n += len(batch)
        if n >= a.num_fake:
            break
    if n < a.num_fake:
        raise ValueError(f"only {n} fake videos were available but --num-fake is {a.num_fake}; ask for fewer")
    p = np.concatenate(probs)[: a.num_fake]
    mean, std = inception_score(p, splits=a.splits)
    res = {"is": mean, "std": std, "num_fake": len(p), "splits": a.splits, "protocol": info}
    out.write_text(json.dumps(res, indent=2))
    print(f"IS = {mean:.2f} ± {std:.2f} ({len(p)} videos, {a.splits} splits); written to {out}")
    return 0


def _check_classifier(path: str | None, kind: str, option: str) -> None:
    """Load a classifier now, so a missing or broken file fails before generation."""
    from hpdm.metrics.classifier import load_classifier

    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"{option} {path}: no such file; train one with `hpdm eval train-classifier`")
    try:
        load_classifier(path, kind=kind)
    except (FileNotFoundError, ValueError):
        raise
    except Exception as e:  # safetensors / state-dict errors come in many types
        raise ValueError(
            f"{option} {path}: not weights of the shapes classifier ({str(e).splitlines()[0]}); "
            f"train them with `hpdm eval train-classifier{' --kind shape' if kind == 'shape' else ''}`"
        ) from None


def run_report_cmd(a: argparse.Namespace) -> int:
    from hpdm.args import out_dir
    from hpdm.metrics.report import report_markdown, run_report

    out_dir(a.out)
    _check_classifier(a.classifier, "class", "--classifier")
    _check_classifier(a.shape_classifier, "shape", "--shape-classifier")
    r = run_report(
        a.ckpt,
        a.out,
        num=a.num,
        batch_size=a.batch_size,
        seed=a.seed,
        steps=a.steps,
        overlap=a.overlap,
        classifier_path=a.classifier,
        shape_classifier_path=a.shape_classifier,
        guidance=a.cfg,
        overrides=a.overrides,
        size=a.size,
    )
    print(report_markdown(r))
    print(f"written to {a.out}/report.json and {a.out}/report.md")
    return 0


def run_train_classifier(a: argparse.Namespace) -> int:
    from hpdm.args import out_dir
    from hpdm.metrics.classifier import train_classifier

    if a.shape_size is not None and a.shape_size[0] > a.shape_size[1]:
        raise ValueError(f"--shape-size {a.shape_size[0]} {a.shape_size[1]}: give LO <= HI")
    out_dir(a.out)
    size = {} if a.shape_size is None else {"size_range": tuple(a.shape_size)}
    info = train_classifier(a.out, steps=a.steps, seed=a.seed, kind=a.kind, **size)
    print(
        "held-out accuracy "
        + ", ".join(f"{100 * v:.1f}% at {k}" for k, v in info["held_out_accuracy"].items())
        + f" in {info['seconds']} s; weights in {a.out}"
    )
    return 0
