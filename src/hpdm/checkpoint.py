"""Checkpoints on disk: find, validate, read and clean up (training writes them, see `train.py`).

A checkpoint is a folder `RUN/checkpoints/step_XXXXXXX/` holding `model.safetensors`,
`ema.safetensors`, `training.pt` (optimizer, scheduler and RNG states, read with
`weights_only=True`), `config.yaml` and `state.json`. It is written as `.tmp_step_XXXXXXX/` and
renamed, and pruned by renaming to `.del_step_XXXXXXX/` before deleting, so a folder named
`step_*` is complete unless something outside hpdm touched it. What a crash can leave behind
(`.tmp_*`, `.del_*`, a `step_*` folder with files missing) is removed by `clean_leftovers` when
training starts.

Every read goes through `read_weights` / `read_training_state` / `read_step`, which turn a
truncated or corrupt file into one `CheckpointError` naming the file and saying what to do.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from hpdm.config import Config, ConfigError, load_config

CKPT_PREFIX = "step_"
TMP_PREFIX = ".tmp_"
DEL_PREFIX = ".del_"
CORRUPT_PREFIX = "corrupt_"
WEIGHT_FILES = ("model.safetensors", "ema.safetensors")
FILES = (*WEIGHT_FILES, "training.pt", "config.yaml", "state.json")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated or does not fit the model; the message names it."""


def _broken(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: {what}. The checkpoint is incomplete or corrupt (an interrupted copy or a full disk?); "
        f"use another checkpoint of the run (they are in {path.parent.parent}) or copy this one again"
    )


def _step_of(p: Path) -> int:
    return int(p.name[len(CKPT_PREFIX) :])


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Checkpoint folders in `out_dir/checkpoints` that have a `state.json`, oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.exists():
        return []
    cks = [
        p
        for p in root.iterdir()
        if p.is_dir()
        and p.name.startswith(CKPT_PREFIX)
        and p.name[len(CKPT_PREFIX) :].isdigit()
        and (p / "state.json").exists()
    ]
    return sorted(cks, key=_step_of)


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


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A `.safetensors` file's tensors, or a `CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise _broken(path, "the file is missing")
    try:
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
        raise CheckpointError(
            f"{path} does not fit the model its config.yaml describes ({first}); "
            "the folder mixes files of different runs: copy the whole checkpoint folder again"
        ) from None


def clean_leftovers(out_dir: str | Path) -> list[Path]:
    """Remove what an interrupted save or prune left in `out_dir/checkpoints`; returns what went.

    `.tmp_*` (a save that did not finish), `.del_*` (a prune that did not finish) and `step_*`
    folders lacking one of the checkpoint files (deleted halfway by something else: a save is
    atomic, so a complete-looking name never holds a partial save)."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    gone = []
    for p in sorted(root.iterdir()):
        if not p.is_dir():
            continue
        partial = p.name.startswith(CKPT_PREFIX) and not all((p / f).exists() for f in FILES)
        if p.name.startswith((TMP_PREFIX, DEL_PREFIX)) or partial:
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
    if gone:
        warnings.warn(
            f"removed {len(gone)} leftover(s) of an interrupted save or prune: "
            + ", ".join(p.name for p in gone),
            stacklevel=2,
        )
    return gone


def remove_checkpoint(ck: Path) -> None:
    """Delete a checkpoint so that no half-deleted folder ever looks like one: rename, then delete."""
    doomed = ck.with_name(DEL_PREFIX + ck.name)
    if doomed.exists():
        shutil.rmtree(doomed, ignore_errors=True)
    ck.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def set_aside(ck: Path) -> Path:
    """Rename a corrupt checkpoint to `corrupt_step_*` (kept for inspection, never resumed from)."""
    dest = ck.with_name(CORRUPT_PREFIX + ck.name)
    shutil.rmtree(dest, ignore_errors=True)
    ck.rename(dest)
    return dest
