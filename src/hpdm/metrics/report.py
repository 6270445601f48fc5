"""Real/fake video streams for FVD, and `hpdm eval report` for models trained on `shapes`."""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from hpdm.config import Config
from hpdm.pyramid import level_videos

FVD_FRAMES = 16


def to_fvd_clip(videos: torch.Tensor) -> torch.Tensor:
    """Clips shorter than 16 frames (coarse pyramid levels) are stretched in time by frame repetition."""
    F = videos.shape[2]
    if F >= FVD_FRAMES:
        return videos[:, :, :FVD_FRAMES]
    reps = -(-FVD_FRAMES // F)
    return videos.repeat_interleave(reps, dim=2)[:, :, :FVD_FRAMES]


def real_batches(
    cfg: Config,
    num: int,
    batch_size: int = 8,
    seed: int = 1,
    balanced: bool = True,
    train: bool = True,
    size: tuple[int, int, int] | None = None,
) -> Iterator[dict]:
    """Batches of real clips at the config's target size (or `size`): {"video", "label"}.

    `shapes` renders clips directly (balanced classes when asked), at any size; other datasets
    are read in a seeded order at the size they were prepared for.
    """
    F, H, W = size or cfg.pyramid.target
    if size is not None and tuple(size) != tuple(cfg.pyramid.target) and cfg.data.dataset != "shapes":
        raise ValueError(
            f"real clips at {tuple(size)} need the `shapes` dataset; {cfg.data.dataset} is read as prepared"
        )
    if cfg.data.dataset == "shapes":
        from hpdm.data.shapes import NUM_CLASSES, render_shapes

        for a in range(0, num, batch_size):
            idx = list(range(30_000_000 + a, 30_000_000 + min(num, a + batch_size)))
            cls = [i % NUM_CLASSES for i in range(a, a + len(idx))] if balanced else None
            video, labels, caps = render_shapes(
                idx, F, H, W, seed=seed, class_ids=cls, size_range=cfg.data.shape_size
            )
            yield {"video": video, "label": labels, "caption": caps}
        return
    from hpdm.data import build_dataset

    ds = build_dataset(cfg, train=train)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:num].tolist()
    for a in range(0, len(order), batch_size):
        items = [ds[i] for i in order[a : a + batch_size]]
        yield {
            "video": torch.stack([it["video"] for it in items]),
            "label": torch.tensor([it["label"] for it in items]),
            "caption": [it["caption"] for it in items],
        }


REAL_ORDERS = ("first", "shuffled")


def real_fvd_clips(
    cfg: Config,
    num: int | None,
    batch_size: int = 8,
    order: str = "first",
    train: bool = True,
    seed: int = 1,
    balanced: bool = True,
) -> tuple[Iterator[torch.Tensor], int, dict]:
    """Real clips for FVD statistics, as StyleGAN-V draws them: (batches, count, protocol fields).

    StyleGAN-V (fvd2048_16f) uses the first min(N, 2048) videos of the dataset in its order, one
    clip of 16 consecutive frames per video at a random start, videos shorter than the clip
    dropped. Here: `num` videos (None: StyleGAN-V's 2048; capped at the split's size) in dataset
    order (`order="shuffled"`: a `seed`ed random subset instead), one clip of min(F, 16) frames
    every `data.frame_stride` frames at the start the dataset draws from (data.seed, index),
    videos too short for that clip skipped. `shapes` renders held-out clips (balanced classes
    unless `balanced=False`). Clips are (B, 3, 16, H, W), shorter ones repeated as `to_fvd_clip`
    does for generated videos.
    """
    if order not in REAL_ORDERS:
        raise ValueError(f"order must be one of {REAL_ORDERS}, got {order!r}")
    F, H, W = cfg.pyramid.target
    frames = min(F, FVD_FRAMES)
    info = {
        "dataset": f"{cfg.data.dataset}:{cfg.data.path}" if cfg.data.path else cfg.data.dataset,
        "frame_stride": cfg.data.frame_stride,
        "source_frames": frames,
        "source_resolution": [H, W],
    }
    if cfg.data.dataset == "shapes":
        num = num or 2048
        info["clip_sampling"] = (
            f"held-out shapes renders (seed {seed}), {'balanced' if balanced else 'random'} classes"
        )
        batches = real_batches(cfg, num, batch_size, seed=seed, balanced=balanced, train=train)
        return (to_fvd_clip(b["video"]) for b in batches), num, info
    from hpdm.data import build_dataset

    info["split"] = "train" if train else "test"
    cfg = copy.deepcopy(cfg)
    cfg.pyramid.target = (frames, H, W)  # decode only the frames FVD looks at
    cfg.data.short_video = "skip"  # StyleGAN-V: discard_short_videos=True
    ds = build_dataset(cfg, train=train)
    count = min(num or 2048, len(ds))
    if order == "first":
        index = list(range(count))
        info["clip_sampling"] = (
            "the first videos of the split in dataset order (StyleGAN-V), one clip each at a "
            f"seeded uniform start (data.seed {cfg.data.seed}), videos shorter than the clip skipped"
        )
    else:
        index = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:count].tolist()
        info["clip_sampling"] = (
            f"a random subset (seed {seed}) of the split's videos, one clip each at a seeded uniform "
            f"start (data.seed {cfg.data.seed}), videos shorter than the clip skipped"
        )
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(ds, index), batch_size=batch_size, num_workers=cfg.data.num_workers
    )
    return (to_fvd_clip(b["video"]) for b in loader), count, info


def fake_batches(
    model,
    cfg: Config,
    num: int,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
    prompts: list[str] | None = None,
    **gen_kwargs,
) -> Iterator:
    """Generations in batches with classes cycling (balanced), or for a text-to-video model the
    `prompts` cycling (video i gets prompt i mod len); yields `Generation` objects."""
    from hpdm.sampling import Sampler

    if prompts is not None and cfg.model.text_dim == 0:
        raise ValueError("prompts need a text-to-video model; this checkpoint has model.text_dim=0")
    if prompts is None and cfg.model.text_dim > 0 and cfg.model.num_classes == 0:
        raise ValueError("a text-to-video model is evaluated with prompts: give --prompts FILE (or ucf101)")
    cascade = Sampler(model, cfg)
    nc = cfg.model.num_classes if prompts is None else 0
    for a in range(0, num, batch_size):
        n = min(batch_size, num - a)
        labels = [(a + i) % nc for i in range(n)] if nc else None
        text, batch_prompts = None, None
        if prompts is not None:
            from hpdm.text import encode_text

            batch_prompts = [prompts[(a + i) % len(prompts)] for i in range(n)]
            text = encode_text(cfg, batch_prompts, cascade.device)
        gen = cascade.generate(
            num=n, labels=labels, text=text, seed=seed + a, progress=progress, **gen_kwargs
        )
        gen.settings["labels_list"] = labels
        gen.settings["prompts_list"] = batch_prompts
        yield gen


def run_report(
    ckpt: str | Path,
    out: str | Path,
    num: int = 64,
    batch_size: int = 8,
    seed: int = 0,
    steps: int | list[int] | None = None,
    overlap: str | None = None,
    progress: bool = True,
    classifier_path: str | None = None,
    shape_classifier_path: str | None = None,
    guidance: float | list[float] | None = None,
    overrides: list[str] | None = None,
    feature_cache: str | Path | None = None,
    size: tuple[int, int, int] | None = None,
) -> dict:
    """FVD per pyramid level, seam score and class accuracy of a `shapes` model; JSON + Markdown.

    `overrides`: `sample.key=value` generation settings (see `load_model`). `feature_cache`: a
    folder keeping the real clips' I3D features, keyed by the clips' content, so reports that
    draw the same real clips (a study's variants) run the detector on them once. `size`: generate
    (and render the real clips) at this (F, H, W) instead of the training target, e.g. wider than
    training; objects per frame are reported at every size."""
    from hpdm.checkpoint import checkpoint_label, load_model, resolve_checkpoint
    from hpdm.metrics.classifier import class_accuracy, load_classifier
    from hpdm.metrics.fvd import I3DFeatureExtractor, compute_stats, frechet_distance
    from hpdm.metrics.objects import object_areas, object_counts, persistence
    from hpdm.metrics.seam import blockiness, judder, seam_score
    from hpdm.sampling import output_geometry

    ck = resolve_checkpoint(ckpt)
    model, cfg = load_model(ck, overrides=overrides)
    if cfg.data.dataset != "shapes":
        raise ValueError(
            "`hpdm eval report` is for models trained on the embedded `shapes` dataset; "
            "use `hpdm eval fvd` for other datasets"
        )
    overlap = overlap or cfg.sample.overlap
    stride = cfg.sample.tile_stride if overlap != "none" else None
    guidance = cfg.sample.cfg if guidance is None else guidance
    geo = output_geometry(cfg, size)  # a clear error for a size the pyramid cannot make
    real_levels: list[list[torch.Tensor]] = [[] for _ in range(geo.num_levels)]
    real_labels, real_captions = [], []
    for b in real_batches(cfg, num, batch_size, seed=seed + 1, size=geo.target):
        for lvl, v in enumerate(level_videos(b["video"], geo)):
            real_levels[lvl].append(v)
        real_labels.append(b["label"])
        real_captions += b["caption"]
    reals = [torch.cat(v) for v in real_levels]
    # a text-to-video model is prompted with the real clips' own captions: its videos are compared
    # with the clips they describe, and the class its prompt names is the one it must show
    prompts = real_captions if cfg.model.text_dim > 0 else None
    t0 = time.perf_counter()
    fake_levels: list[list[torch.Tensor]] = [[] for _ in range(geo.num_levels)]
    fake_labels = []
    for gen in fake_batches(
        model,
        cfg,
        num,
        batch_size,
        seed,
        progress,
        prompts=prompts,
        steps=steps,
        overlap=overlap,
        guidance=guidance,
        size=size,
    ):
        for lvl, v in enumerate(gen.levels):
            fake_levels[lvl].append(v)
        if prompts is None:
            fake_labels.append(torch.tensor(gen.settings["labels_list"]))
    gen_seconds = time.perf_counter() - t0
    fakes = [torch.cat(v) for v in fake_levels]
    labels = torch.cat(fake_labels) if prompts is None else torch.cat(real_labels)

    extractor = I3DFeatureExtractor(batch_size=batch_size, device=next(model.parameters()).device)
    fvd = []
    for lvl in range(geo.num_levels):
        fr = _real_features(extractor, reals[lvl], batch_size, feature_cache)
        ff = np.concatenate([extractor(to_fvd_clip(x)) for x in fakes[lvl].split(batch_size)])
        fvd.append(frechet_distance(*compute_stats(fr), *compute_stats(ff)))
    seams = [
        seam_score(fakes[lvl], cfg.pyramid.patch, overlap, cfg.model.cube, stride)
        for lvl in range(1, geo.num_levels)
    ]
    blocky = [blockiness(fakes[lvl]) for lvl in range(geo.num_levels)]
    blocky_real = [blockiness(reals[lvl]) for lvl in range(geo.num_levels)]
    judders = [(judder(fakes[lvl]), judder(reals[lvl])) for lvl in range(geo.num_levels)]
    clf = load_classifier(classifier_path)
    acc_fake = class_accuracy(clf, fakes[-1], labels)
    acc_real = class_accuracy(clf, reals[-1], torch.cat(real_labels))
    shape_clf = load_classifier(
        shape_classifier_path, kind="shape"
    )  # colour-blind: is the outline recognisable?
    # per level: where in the cascade outlines are kept or lost (the classifier area-averages
    # every level to its own 8x32x32 input, so level 0 is seen as it is)
    shapes = [
        (
            class_accuracy(shape_clf, fakes[lvl], labels),
            class_accuracy(shape_clf, reals[lvl], torch.cat(real_labels)),
        )
        for lvl in range(geo.num_levels)
    ]
    shape_fake, shape_real = shapes[-1]
    area_fake = object_areas(fakes[-1], labels)
    area_real = object_areas(reals[-1], torch.cat(real_labels))
    objects_fake = object_counts(fakes[-1], labels).float()
    objects_real = object_counts(reals[-1], torch.cat(real_labels)).float()
    report = {
        "checkpoint": checkpoint_label(ck),
        "num_fake": num,
        "num_real": num,
        "overlap": overlap,
        "tile_stride": stride,
        "guidance": guidance,
        "sample_overrides": list(overrides or []),
        "prompted": "the real clips' captions" if prompts is not None else None,
        "seed": seed,
        "levels": [
            {
                "level": lvl,
                "size": list(geo.level_sizes[lvl]),
                "fvd": fvd[lvl],
                "seam_score": seams[lvl - 1] if lvl > 0 else None,
                "blockiness": blocky[lvl],
                "blockiness_real": blocky_real[lvl],
                "judder": judders[lvl][0],
                "judder_real": judders[lvl][1],
                "shape_accuracy": shapes[lvl][0],
                "shape_accuracy_real": shapes[lvl][1],
            }
            for lvl in range(geo.num_levels)
        ],
        "class_accuracy_fake": acc_fake,
        "class_accuracy_real": acc_real,
        "shape_accuracy_fake": shape_fake,
        "shape_accuracy_real": shape_real,
        "object_persistence_fake": persistence(area_fake),
        "object_persistence_real": persistence(area_real),
        "object_area_fake": float(area_fake.mean()),
        "object_area_real": float(area_real.mean()),
        "objects_per_frame_fake": float(objects_fake.mean()),
        "objects_per_frame_real": float(objects_real.mean()),
        "size": list(geo.target),
        "generation_seconds": round(gen_seconds, 1),
        "fvd_protocol": "I3D logits, clips stretched to 16 frames by repetition when shorter, 224², "
        f"{num} real (held-out shapes seeds, balanced classes) vs {num} fake (balanced)",
        "machine": _machine(),
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(report_markdown(report))
    return report


def _real_features(extractor, videos: torch.Tensor, batch_size: int, cache: str | Path | None) -> np.ndarray:
    """I3D features of real clips, read from / written to `cache` under the clips' content hash."""
    import hashlib

    def compute():
        return np.concatenate([extractor(to_fvd_clip(x)) for x in videos.split(batch_size)])

    if cache is None:
        return compute()
    h = hashlib.sha256(videos.detach().cpu().contiguous().numpy().tobytes())
    h.update(f"{tuple(videos.shape)} {extractor.weights_sha256}".encode())
    path = Path(cache) / f"real_i3d_{h.hexdigest()[:24]}.npy"
    if path.exists():
        return np.load(path)
    feats = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, feats)
    tmp.replace(path)  # atomic: a killed run never leaves half a file
    return feats


def report_markdown(r: dict) -> str:
    lines = [
        f"Report for `{r['checkpoint']}` ({r['num_fake']} fake vs {r['num_real']} real, "
        f"overlap {r['overlap']}, {r['machine']})",
        "",
        "| level | size (FxHxW) | FVD | seam score | blockiness (real) | judder (real) | shape accuracy (real) |",
        "|---|---|---|---|---|---|---|",
    ]
    for lv in r["levels"]:
        seam = f"{lv['seam_score']:.3f}" if lv["seam_score"] is not None else "—"
        # reports written before these metrics existed have none
        block = f"{lv['blockiness']:.3f} ({lv['blockiness_real']:.3f})" if "blockiness" in lv else "—"
        jud = f"{lv['judder']:.3f} ({lv['judder_real']:.3f})" if "judder" in lv else "—"
        shape = (
            f"{100 * lv['shape_accuracy']:.1f}% ({100 * lv['shape_accuracy_real']:.1f}%)"
            if "shape_accuracy" in lv
            else "—"
        )
        lines.append(
            f"| {lv['level']} | {'x'.join(map(str, lv['size']))} | {lv['fvd']:.1f} | {seam} | {block} | {jud} "
            f"| {shape} |"
        )
    rows = [
        ("class accuracy (shapes classifier)", "class_accuracy"),
        ("shape accuracy (colour-blind classifier: the outline alone)", "shape_accuracy"),
        ("object persistence (frames with ≥ half the clip's median object area)", "object_persistence"),
        ("object area (share of the frame)", "object_area"),
    ]
    lines += ["", "| final level | generated | real |", "|---|---|---|"]
    lines += [f"| {name} | {100 * r[k + '_fake']:.1f}% | {100 * r[k + '_real']:.1f}% |" for name, k in rows]
    if "objects_per_frame_fake" in r:
        lines += [
            f"| objects per frame | {r['objects_per_frame_fake']:.2f} | {r['objects_per_frame_real']:.2f} |"
        ]
    lines += [
        "",
        "Seam score 1.0 = invisible seams. Blockiness: the gradient across even pixel boundaries "
        "over odd ones, 1.0 = no grid (token cubes, tile edges, upsampled pixels) shows. Judder: the "
        "same between frames, 1.0 = frames change evenly.",
        "",
    ]
    return "\n".join(lines)


def _machine() -> str:
    import os
    import platform

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"
