"""`hpdm demo`: the main job on the embedded default — one high-resolution video per class.

The package ships a small checkpoint trained by this project's own `hpdm train demo` on the
procedural `shapes` dataset (see `assets/demo/README.md` for the exact command and its log).
`hpdm demo --train` retrains it from scratch.
"""

from __future__ import annotations

import json
import shutil
import time
from importlib import resources
from pathlib import Path

from safetensors.torch import save_file

from hpdm.config import load_config, save_config
from hpdm.data.shapes import SHAPES_CLASSES


def demo_checkpoint() -> Path:
    return Path(str(resources.files("hpdm") / "assets" / "demo"))


def export_checkpoint(
    ckpt: str | Path,
    out: str | Path,
    ema: bool = True,
    half: bool = False,
    overrides: list[str] | None = None,
) -> Path:
    """Write a release checkpoint: the (EMA) weights as `model.safetensors`, config and state.

    `half`: store floating-point weights as fp16 (half the file; loading casts them back to the
    model's fp32), e.g. for an autoguidance guide shipped beside a model. `overrides`: `sample.*`
    and `data.*` settings written into the released config (e.g. `sample.guide=guide`)."""
    from hpdm.checkpoint import read_config, read_step, read_weights, resolve_checkpoint
    from hpdm.config import ConfigError

    bad = [o for o in overrides or [] if not o.strip().startswith(("sample.", "data."))]
    if bad:
        raise ConfigError(
            f"{' '.join(bad)}: an export takes only sample.* and data.* settings (e.g. sample.guide=guide); "
            "the others would no longer describe the weights"
        )

    ck = resolve_checkpoint(ckpt)
    name = "ema.safetensors" if ema and (ck / "ema.safetensors").exists() else "model.safetensors"
    state_dict = read_weights(ck / name)
    cfg = read_config(ck, overrides)  # checked before anything is written
    read_step(ck)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if half:
        state_dict = {k: v.half() if v.is_floating_point() else v for k, v in state_dict.items()}
    save_file(state_dict, str(out / "model.safetensors"), metadata={"weights": name})
    if overrides:
        save_config(cfg, out / "config.yaml")
    else:
        shutil.copy(ck / "config.yaml", out / "config.yaml")
    state = json.loads((ck / "state.json").read_text())
    state["exported_from"] = str(ck)
    state["weights"] = ("ema" if name.startswith("ema") else "raw") + ("-fp16" if half else "")
    (out / "state.json").write_text(json.dumps(state, indent=2))
    return out


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

    from hpdm.cli import save_outputs
    from hpdm.sampling import Cascade
    from hpdm.train import Trainer, load_model, pick_device

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
    gen = Cascade(model, cfg, device).generate(
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
