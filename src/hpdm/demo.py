"""`hpdm demo`: the main job on the embedded default — one high-resolution video per class;
`hpdm demo --prompt TEXT`: text-to-video with the small shipped (or any) text-to-video model.

The package ships a small checkpoint trained by this project's own `hpdm train demo` on the
procedural `shapes` dataset (see `assets/demo/README.md` for the exact command and its log).
`hpdm demo --train` retrains it from scratch.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from hpdm.checkpoint import export_checkpoint, load_model
from hpdm.config import load_config, save_config
from hpdm.data.shapes import SHAPES_CLASSES

__all__ = [
    "demo_checkpoint",
    "export_checkpoint",
    "run_demo",
    "run_prompt_demo",
]  # export_checkpoint lives in hpdm.checkpoint


def demo_checkpoint(kind: str = "demo") -> Path:
    """The shipped checkpoint: `demo` (class-conditional) or `t2v` (text-to-video)."""
    return Path(str(resources.files("hpdm") / "assets" / kind))


def run_prompt_demo(
    prompt: str,
    out: Path = Path("demo_out"),
    ckpt: str | Path | None = None,
    num: int = 1,
    size: tuple[int, int, int] | None = None,
    seed: int = 0,
    quiet: bool = False,
    sample_steps: int | list[int] | None = None,
) -> dict:
    """`hpdm demo --prompt`: `num` videos of one prompt from the shipped text-to-video model
    (`assets/t2v`, made by scripts/make_t2v_demo.sh) or any text-to-video checkpoint `ckpt`."""
    from hpdm.outputs import save_outputs
    from hpdm.sampling import Sampler
    from hpdm.text import encode_text
    from hpdm.train import pick_device

    ckpt = Path(ckpt) if ckpt is not None else demo_checkpoint("t2v")
    if not ckpt.exists():
        raise FileNotFoundError(
            f"no text-to-video checkpoint at {ckpt}; make one with scripts/make_t2v_demo.sh (the t2v-tiny "
            "presets) or pass --ckpt RUN"
        )
    device = pick_device()
    model, cfg = load_model(ckpt, device=device)
    if cfg.model.text_dim == 0:
        raise ValueError(f"{ckpt} is not a text-to-video model (model.text_dim=0); --prompt needs one")
    text = encode_text(cfg, [prompt] * num, device)
    t1 = time.perf_counter()
    gen = Sampler(model, cfg, device).generate(
        num=num, text=text, size=size, seed=seed, steps=sample_steps, progress=not quiet
    )
    gen.settings.update(
        {
            "ckpt": str(ckpt),
            "prompt": prompt,
            "seconds": round(time.perf_counter() - t1, 2),
            "device": str(device),
        }
    )
    save_outputs(gen, out, cfg.sample.fps, prefix="t2v", save_levels=True, labels=[prompt] * num)
    save_config(cfg, out / "config.yaml")
    size_s = "x".join(map(str, gen.video.shape[-3:]))
    print(f"generated {num} video(s) of {size_s} for {prompt!r} in {gen.settings['seconds']} s")
    print(f"  videos:        {out}/t2v_*.mp4 (coarse levels in t2v_*_level*.mp4)")
    print(f"  contact sheet: {out / 'contact_sheet.png'}")
    return gen.settings


def run_demo(
    out: Path = Path("demo_out"),
    train: bool = False,
    steps: int | None = None,
    num_per_class: int = 1,
    size: tuple[int, int, int] | None = None,
    seed: int = 0,
    quiet: bool = False,
    sample_steps: int | list[int] | None = None,
    overrides: list[str] | None = None,
) -> dict:
    import torch

    from hpdm.outputs import save_outputs
    from hpdm.sampling import Sampler
    from hpdm.train import Trainer, pick_device

    out = Path(out)
    t0 = time.perf_counter()
    if train:
        ov = list(overrides or []) + ([f"train.steps={steps}"] if steps else [])
        # first the two small level-0 runs, the autoguidance guide (minutes) and the level-0 model
        # (`sample.base`), then the model: level 0 at high σ (the layout) and the finer levels
        small_ov = [o for o in ov if o.startswith(("data.", "train.")) and not o.startswith("train.out_dir")]
        for name in ("guide", "base"):
            Trainer(
                load_config(f"demo-{name}", small_ov), out_dir=out / name, resume="auto", progress=not quiet
            ).train()
        companions = [f"sample.{name}={(out / name).resolve()}" for name in ("guide", "base")]
        companions.append("sample.base_interval=[0,2]")  # the model keeps the high σ (layout)
        cfg = load_config("demo", [*ov, *companions])
        trainer = Trainer(cfg, out_dir=out / "train", resume="auto", progress=not quiet)
        trainer.train()
        ckpt = out / "train"
        print(
            f"trained the demo model, its level-0 model and its guide in {time.perf_counter() - t0:.0f} s: "
            f"{ckpt / 'checkpoints'}, {out / 'base' / 'checkpoints'}, {out / 'guide' / 'checkpoints'}"
        )
    else:
        ckpt = demo_checkpoint()
        if not (ckpt / "model.safetensors").exists():
            raise FileNotFoundError(
                f"the demo checkpoint is missing from {ckpt}; reinstall hpdm or run `hpdm demo --train`"
            )
    device = pick_device()
    model, cfg = load_model(ckpt, device=device)
    n_cls = cfg.model.num_classes
    labels = torch.arange(n_cls).repeat_interleave(num_per_class)
    t1 = time.perf_counter()
    gen = Sampler(model, cfg, device).generate(
        num=len(labels), labels=labels, size=size, seed=seed, steps=sample_steps, progress=not quiet
    )
    gen.settings.update(
        {"ckpt": str(ckpt), "seconds": round(time.perf_counter() - t1, 2), "device": str(device)}
    )
    names = [SHAPES_CLASSES[int(k)] for k in labels]
    paths = save_outputs(gen, out, cfg.sample.fps, prefix="demo", save_levels=True, labels=names)
    for p, name in zip(paths, names):
        target = p.with_name(f"{p.stem}_{name.replace(' ', '_')}.mp4")
        p.replace(target)
    save_config(cfg, out / "config.yaml")
    size_s = "x".join(map(str, gen.video.shape[-3:]))
    print(
        f"generated {len(labels)} videos of {size_s} ({len(gen.levels)} levels) "
        f"in {gen.settings['seconds']} s"
    )
    print(f"  videos:        {out}/demo_*.mp4 (one per class; coarse levels in demo_*_level*.mp4)")
    print(f"  contact sheet: {out / 'contact_sheet.png'}")
    print(f"  all levels:    {out / 'levels_sheet.png'}")
    return gen.settings
