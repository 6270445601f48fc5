"""Argument types shared by the `hpdm` command line and its `hpdm eval` part: each turns a bad
value into a message that says what to give instead."""

from __future__ import annotations

import argparse
from pathlib import Path


def size_arg(text: str) -> tuple[int, int, int]:
    try:
        f, h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size '{text}' is not FxHxW, e.g. 16x128x128") from None
    if min(f, h, w) < 1:
        raise argparse.ArgumentTypeError(f"size '{text}': frames, height and width must be positive")
    return f, h, w


def per_level(cast, what: str, example: str):
    """An argparse type: one value, or a comma-separated list of one per level."""

    def parse(text: str):
        try:
            values = [cast(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: give {what}, or one per level separated by commas, e.g. {example}"
            ) from None
        return values[0] if len(values) == 1 else values

    return parse


def at_least(low: int, what: str):
    """An argparse type: a whole number >= `low`; the message says what the option counts."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"{text!r}: give {what} (a whole number >= {low})")
        return value

    return parse


def _guidance(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise ValueError(text)
    return value


def device_arg(text: str) -> str:
    """An argparse type: a torch device string that this machine has."""
    import torch

    try:
        dev = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a device; use cpu, cuda or cuda:N (e.g. cuda:1)"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                f"{text!r}: this machine has no CUDA GPU (or torch was installed without CUDA); use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                f"cuda:0 .. cuda:{torch.cuda.device_count() - 1}"
            )
    elif dev.type != "cpu" and dev.type != "mps":
        raise argparse.ArgumentTypeError(f"{text!r}: hpdm runs on cpu or cuda; use --device cpu or cuda")
    return text


def out_dir(path: str | Path, option: str = "--out") -> Path:
    """Create the output folder now, so an unwritable path fails before any work is done."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{option} {p}: this is a file, not a folder; choose another path")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(
            f"{option} {p}: cannot create the output folder ({e.strerror or e}); choose a folder you can write to"
        ) from None
    return p


positive_int = at_least(1, "a positive count")
guidance_arg = per_level(_guidance, "a guidance scale >= 0 (1 = off, 0 = unconditional)", "3 or 3,1,1")
steps_arg = per_level(int, "a whole number of level-0 steps (halved per finer level)", "32 or 64,16,8")
