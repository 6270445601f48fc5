"""Checkpoints on disk: save, find, validate, load, export and clean up, for training, sampling,
evaluation and `hpdm export` alike.

A checkpoint is a folder `RUN/checkpoints/step_XXXXXXX/` holding `model.safetensors`,
`ema.safetensors`, `training.pt` (optimizer, scheduler and RNG states, read with
`weights_only=True`), `config.yaml` and `state.json`. `save_checkpoint` writes it as
`.tmp_step_XXXXXXX/` and renames it; pruning renames to `.del_step_XXXXXXX/` before deleting. So a
folder named `step_*` is complete unless something outside hpdm touched it. What a crash can leave
behind is dealt with by `clean_leftovers` when training starts.

Every read goes through `read_weights` / `read_training_state` / `read_step` / `read_config`, which
turn a missing, truncated or corrupt file into one `CheckpointError` naming the file and saying what
to do; `CheckpointMismatch` (a subclass) is a readable checkpoint that does not fit the model.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from hpdm.config import Config, ConfigError, load_config, save_config

if TYPE_CHECKING:
    from hpdm.model.hpdm import HPDM

CKPT_PREFIX = "step_"
TMP_PREFIX = ".tmp_"
DEL_PREFIX = ".del_"
CORRUPT_PREFIX = "corrupt_"
INCOMPLETE_PREFIX = "incomplete_"
WEIGHT_FILES = ("model.safetensors", "ema.safetensors")
FILES = (*WEIGHT_FILES, "training.pt", "config.yaml", "state.json")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated or corrupt; the message names it."""


class CheckpointMismatch(CheckpointError):
    """A readable checkpoint that does not fit the model or optimizer it is loaded into."""


def _broken(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: {what}. The checkpoint is incomplete or corrupt (an interrupted copy or a full disk?); "
        f"use another checkpoint of the run (they are in {path.parent.parent}) or copy this one again"
    )


def _step_of(p: Path) -> int:
    return int(p.name[len(CKPT_PREFIX) :])


def _is_step_dir(p: Path) -> bool:
    return p.is_dir() and p.name.startswith(CKPT_PREFIX) and p.name[len(CKPT_PREFIX) :].isdigit()


# ---------------------------------------------------------------------------------------------
# Finding checkpoints


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Checkpoint folders in `out_dir/checkpoints` that have a `state.json`, oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.exists():
        return []
    return sorted(
        (p for p in root.iterdir() if _is_step_dir(p) and (p / "state.json").exists()), key=_step_of
    )


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (its newest checkpoint)."""
    p = Path(path)
    if (p / "state.json").exists() and (p / "model.safetensors").exists():
        return p
    cks = list_checkpoints(p)
    if cks:
        return cks[-1]
    raise FileNotFoundError(
        f"no checkpoint found at {p}: give a checkpoint directory (with model.safetensors) "
        "or a run directory containing checkpoints/step_*/"
    )


def checkpoint_label(ck: str | Path) -> str:
    """How a checkpoint is named in a result file, the same in every clone: `hpdm:assets/NAME` for
    a checkpoint shipped inside the package, a path relative to the working folder for one under
    it, else the absolute path."""
    from importlib import resources

    p = Path(ck).resolve()
    for root, label in ((Path(str(resources.files("hpdm"))).resolve(), "hpdm:"), (Path.cwd().resolve(), "")):
        if p.is_relative_to(root):
            return label + p.relative_to(root).as_posix()
    return str(p)


# ---------------------------------------------------------------------------------------------
# Reading: every file, with one error naming it


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A `.safetensors` file's tensors, or a `CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise _broken(path, "the file is missing")
    try:  # reads the header and every tensor's bytes: a truncated file fails here, not later
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise _broken(path, f"not a readable safetensors file ({str(e).splitlines()[0]})") from None


def read_training_state(path: str | Path) -> dict:
    """`training.pt` (optimizer, scheduler, RNG states) with `weights_only=True`, or a `CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise _broken(path, "the file is missing")
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ... on a bad file
        raise _broken(path, f"not a readable training state ({type(e).__name__})") from None
    if not isinstance(st, dict) or not {"optimizer", "scheduler", "rng"} <= st.keys():
        raise _broken(path, "it lacks the optimizer, scheduler or RNG state")
    return st


def read_step(ck: str | Path) -> int:
    """The step recorded in a checkpoint's `state.json`."""
    path = Path(ck) / "state.json"
    try:
        return int(json.loads(path.read_text())["step"])
    except FileNotFoundError:
        raise _broken(path, "the file is missing") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _broken(path, f"no step in it ({type(e).__name__})") from None


def read_config(ck: str | Path, overrides: list[str] | None = None) -> Config:
    """A checkpoint's config.yaml, with a `CheckpointError` naming it when it is missing or garbled."""
    path = Path(ck) / "config.yaml"
    overrides = list(overrides or [])
    if not path.is_file():
        raise CheckpointError(f"{path}: the file is missing; copy the whole checkpoint folder again")
    try:
        return load_config(path, overrides)
    except ConfigError as e:
        if any(str(e).startswith(o.split("=")[0]) for o in overrides):
            raise  # the user's override is wrong, not the file
        raise CheckpointError(
            f"{path}: not a valid hpdm config ({e}); copy the checkpoint folder again"
        ) from None
    except Exception as e:  # a garbled YAML file
        raise CheckpointError(
            f"{path}: not a readable config ({type(e).__name__}); copy the checkpoint folder again"
        ) from None


def load_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """`model.load_state_dict(state)` with a one-line error naming the file when they do not fit."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = " ".join(str(e).split())[:300]
        raise CheckpointMismatch(
            f"{path} does not fit the model its config.yaml describes ({first}); "
            "the folder mixes files of different runs: copy the whole checkpoint folder again"
        ) from None


def check_fits(
    model_or_cfg: torch.nn.Module | Config, state: dict[str, torch.Tensor], path: Path, fix: str
) -> None:
    """Raise `CheckpointMismatch` naming `path` when `state`'s tensor names or shapes differ from the
    model's (a `Config` is built on the meta device: no memory, no time). `fix` says what to do."""
    if isinstance(model_or_cfg, Config):
        from hpdm.model.hpdm import HPDM

        with torch.device("meta"):
            model_or_cfg = HPDM(model_or_cfg)
    want = {k: tuple(v.shape) for k, v in model_or_cfg.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != want:
        diff = sorted(set(got) ^ set(want)) or [k for k in want if got[k] != want[k]]
        raise CheckpointMismatch(f"{path}: its tensors do not fit {fix} (first difference: {diff[0]})")


def load_model(
    path: str | Path, ema: bool = True, device=None, overrides: list[str] | None = None
) -> tuple[HPDM, Config]:
    """Build the model from a checkpoint's config and load its (EMA) weights.

    `overrides`: `sample.key=value` settings for generation (e.g. `sample.S_churn=0`); anything
    else would no longer describe the saved weights and is refused."""
    from hpdm.model.hpdm import HPDM

    ck = resolve_checkpoint(path)
    bad = [o for o in overrides or [] if not o.strip().startswith("sample.")]
    if bad:
        raise ConfigError(
            f"{' '.join(bad)}: a trained model takes only sampling overrides (sample.key=value, e.g. "
            "sample.S_churn=0 or sample.cfg_interval=[2,80]); train a new run to change anything else"
        )
    cfg = read_config(ck, overrides or [])
    for key in ("guide", "base"):
        if getattr(cfg.sample, key):
            setattr(cfg.sample, key, str(_companion_path(getattr(cfg.sample, key), ck, key)))
    model = HPDM(cfg)
    name = "ema.safetensors" if ema and (ck / "ema.safetensors").exists() else "model.safetensors"
    load_state_dict(model, read_weights(ck / name), ck / name)
    return model.to(device or "cpu").eval(), cfg


def _companion_path(path: str, ck: Path, key: str) -> Path:
    """`sample.guide` or `sample.base` as a path: next to the checkpoint first (a shipped model
    names its companions' folders), then as given."""
    for p in (ck / path, Path(path)):
        if (p / "state.json").exists() and (p / "model.safetensors").exists() or list_checkpoints(p):
            return p.resolve()
    role = "guiding" if key == "guide" else "level-0"
    raise ConfigError(
        f"sample.{key}={path}: no checkpoint there (looked in {ck / path} and {Path(path).resolve()}); "
        f"give the run or checkpoint folder of the {role} model, or sample.{key}=null to sample without it"
    )


# ---------------------------------------------------------------------------------------------
# Writing


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    model: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor],
    training: dict,
    cfg: Config,
    state: dict,
    keep: int,
    keep_steps: tuple[int, ...] = (),
) -> Path:
    """Write `step_N/` atomically (into `.tmp_step_N/`, then renamed) and prune to the newest `keep`,
    never the checkpoints of `keep_steps`.

    `training`: optimizer, scheduler and RNG states (plain tensors and containers: it is read back
    with `weights_only=True`); `state`: what goes into state.json besides the step and time."""
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"{CKPT_PREFIX}{step:07d}"
    tmp, final = root / f"{TMP_PREFIX}{name}", root / name
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in model.items()}, str(tmp / "model.safetensors"))
    save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
    torch.save(training, tmp / "training.pt")
    save_config(cfg, tmp / "config.yaml")
    (tmp / "state.json").write_text(json.dumps({"step": step, **state, "time": time.time()}, indent=2))
    if final.exists():
        remove_checkpoint(final)
    os.replace(tmp, final)
    for old in list_checkpoints(out_dir)[:-keep]:
        if _step_of(old) not in keep_steps:
            remove_checkpoint(old)
    return final


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
    bad = [o for o in overrides or [] if not o.strip().startswith(("sample.", "data."))]
    if bad:
        raise ConfigError(
            f"{' '.join(bad)}: an export takes only sample.* and data.* settings (e.g. sample.guide=guide); "
            "the others would no longer describe the weights"
        )
    ck = resolve_checkpoint(ckpt)
    name = "ema.safetensors" if ema and (ck / "ema.safetensors").exists() else "model.safetensors"
    # everything read and checked before anything is written
    state_dict = read_weights(ck / name)
    cfg = read_config(ck, overrides)
    check_fits(cfg, state_dict, ck / name, "the model its config.yaml describes; copy the whole folder again")
    read_step(ck)
    state = json.loads((ck / "state.json").read_text())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if half:
        state_dict = {k: v.half() if v.is_floating_point() else v for k, v in state_dict.items()}
    save_file(state_dict, str(out / "model.safetensors"), metadata={"weights": name})
    if overrides:
        save_config(cfg, out / "config.yaml")
    else:
        shutil.copy(ck / "config.yaml", out / "config.yaml")
    state["exported_from"] = str(ck)
    state["weights"] = ("ema" if name.startswith("ema") else "raw") + ("-fp16" if half else "")
    (out / "state.json").write_text(json.dumps(state, indent=2))
    return out


# ---------------------------------------------------------------------------------------------
# Cleaning up


def clean_leftovers(out_dir: str | Path) -> list[Path]:
    """Deal with what an interrupted save or prune left in `out_dir/checkpoints`; returns the folders.

    `.tmp_*` (a save that did not finish) and `.del_*` (a prune that did not finish) are hpdm's own
    and deleted. A `step_*` folder lacking one of the checkpoint files was cut short by something
    else (a prune of an older hpdm, a hand-deletion); it may still hold usable weights, so it is
    renamed `incomplete_step_*` (never resumed from) rather than deleted."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    gone, aside = [], []
    for p in sorted(root.iterdir()):
        if p.is_dir() and p.name.startswith((TMP_PREFIX, DEL_PREFIX)):
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
        elif _is_step_dir(p) and not all((p / f).exists() for f in FILES):
            aside.append(set_aside(p, INCOMPLETE_PREFIX))
    if gone:
        warnings.warn(
            f"removed {len(gone)} leftover(s) of an interrupted save or prune in {root}: "
            + ", ".join(p.name for p in gone),
            stacklevel=2,
        )
    if aside:
        warnings.warn(
            f"set aside {len(aside)} checkpoint folder(s) with files missing in {root} as "
            + ", ".join(p.name for p in aside)
            + " (never resumed from; delete them when you no longer need them)",
            stacklevel=2,
        )
    return gone + aside


def remove_checkpoint(ck: Path) -> None:
    """Delete a checkpoint so that no half-deleted folder ever looks like one: rename, then delete."""
    doomed = ck.with_name(DEL_PREFIX + ck.name)
    if doomed.exists():
        shutil.rmtree(doomed, ignore_errors=True)
    ck.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def set_aside(ck: Path, prefix: str = CORRUPT_PREFIX) -> Path:
    """Rename a checkpoint that must not be resumed from to `corrupt_step_*` (or `prefix` + name),
    with `.1`, `.2`, ... added when that name is taken: nothing already set aside is overwritten."""
    dest, k = ck.with_name(prefix + ck.name), 0
    while dest.exists():
        k += 1
        dest = ck.with_name(f"{prefix}{ck.name}.{k}")
    ck.rename(dest)
    return dest
