"""Shared pieces of the benchmark scripts: the machine, configs for the compared models, a timed
training step, memory, interleaved timing, Markdown tables and JSON results.

Benchmarks print tables of measured numbers and write `benchmarks/results/<name>.json`; they
assert nothing. CI runs each with `--smoke` (tests/test_benchmarks.py) so that none rots.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from hpdm.config import Config, ConfigError, load_config
from hpdm.info import full_res_config
from hpdm.pyramid import PyramidGeometry, extract_patches, sample_boxes

RESULTS = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------------------------
# Machine and output


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict:
    """What every number is measured on; the load average shows other work on the machine."""
    info = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    return info


def machine_line(m: dict) -> str:
    dev = m.get("gpu") or f"CPU {m['cpu']} ({m['cpu_cores']} cores, {m['torch_threads']} torch threads)"
    return f"machine: {dev}; torch {m['torch']}; load average at start {m['load_average_at_start']}"


def new_parser(
    doc: str | None, preset: str | None = "demo", preset_help: str = "config preset"
) -> argparse.ArgumentParser:
    """A benchmark's parser: its docstring as description and the `--preset` option."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=preset, help=preset_help)
    return ap


def add_geometry_args(
    ap: argparse.ArgumentParser,
    target_help: str = "FxHxW (default: the preset's)",
    patch_help: str = "FxHxW (default: the preset's)",
) -> None:
    """`--target` and `--patch` as FxHxW sizes."""
    ap.add_argument("--target", type=parse_size, default=None, help=target_help)
    ap.add_argument("--patch", type=parse_size, default=None, help=patch_help)


def add_common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--note", default="", help="free text stored with the results (e.g. other load)")
    ap.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/<name>.json)")
    add_smoke_arg(ap)


def add_smoke_arg(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="check that the script runs: seconds on one CPU thread at a tiny size, one round; "
        "the sizes, preset and device options are ignored and no results are written (without --out)",
    )


# --smoke: the `tiny` preset at its own size, whatever the benchmark's defaults
SMOKE_PRESET, SMOKE_TARGET, SMOKE_PATCH = "tiny", (4, 32, 32), (2, 8, 8)


def smoke(args: argparse.Namespace, **settings) -> None:
    """Under --smoke, set `settings` (a script's tiny sizes and single round) on `args`, plus one
    CPU thread and, where the script has them, the tiny preset, target and patch."""
    if not args.smoke:
        return
    common = {
        "device": "cpu",
        "threads": 1,
        "preset": SMOKE_PRESET,
        "target": SMOKE_TARGET,
        "patch": SMOKE_PATCH,
        "overrides": [],
    }
    for key, value in {**common, **settings}.items():
        if hasattr(args, key):
            setattr(args, key, value)


def setup(args: argparse.Namespace) -> torch.device:
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the trainer's default (train.tf32); fp32 otherwise
        torch.backends.cudnn.allow_tf32 = True
    return dev


def write_result(name: str, payload: dict, out: str | None = None, smoke: bool = False) -> Path | None:
    """Write the results as JSON to `out` or benchmarks/results/<name>.json; a smoke run only
    checks that they serialise, so it never overwrites the committed numbers."""
    text = json.dumps(payload, indent=2) + "\n"
    if smoke and not out:
        print(f"\nsmoke run: {len(text)} bytes of results, not written")
        return None
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"\nwrote {path}")
    return path


def table(headers: list[str], rows: list[list]) -> str:
    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def parse_size(text: str) -> tuple[int, int, int]:
    try:
        f, h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size '{text}' is not FxHxW, e.g. 16x128x128") from None
    return f, h, w


def size_str(s) -> str:
    return "x".join(map(str, s))


# ---------------------------------------------------------------------------------------------
# The compared models


def ac_schedule(num_blocks: int, levels: int) -> list[int]:
    """Paper-like adaptive computation: block b processes ⌈(b+1)·L/N⌉ levels ([1,1,2,2,3,3] for
    6 blocks and 3 levels, [1,2,3,3] for 4 and 3); the last block processes all of them."""
    return [math.ceil((b + 1) * levels / num_blocks) for b in range(num_blocks)]


# Every config field that may hold one value per level (validated against pyramid.num_levels in
# hpdm.config.validate). model.levels_per_block and the input scale
# (diffusion.sigma_in0 / sigma_in_factor) are per-level too and are handled by name below.
PER_LEVEL_FIELDS = (
    ("diffusion", "P_mean"),
    ("diffusion", "P_std"),
    ("diffusion", "level_weight"),
    ("sample", "cfg"),
    ("sample", "steps"),
    ("sample", "start_sigma"),
)


def resample_levels(values: list, num_levels: int) -> list:
    """A per-level list for `num_levels` levels from one for `len(values)`: level 0 keeps level 0's
    value and the finest level the finest's (they play the same part in any pyramid: the layout
    from noise, the last detail); a level between takes the old level at the same relative depth."""
    n = len(values)
    if num_levels == 1:
        return [values[0]]
    return [values[round(lvl * (n - 1) / (num_levels - 1))] for lvl in range(num_levels)]


def pyramid_config(cfg: Config, target, patch=None) -> Config:
    """The preset's model as a pyramid over `target` with `patch` (default: the preset's), with the
    fewest levels whose level 0 is the whole video at patch size, every per-level list mapped to
    that many levels. Not validated (the caller changes more first)."""
    out = copy.deepcopy(cfg)
    p = out.pyramid
    p.target, p.patch = tuple(target), tuple(patch or p.patch)
    levels = PyramidGeometry(p.patch, p.target, 1).min_levels()
    old, p.num_levels = p.num_levels, levels
    if levels != old:
        for section, key in PER_LEVEL_FIELDS:
            v = getattr(getattr(out, section), key)
            if isinstance(v, list):
                setattr(getattr(out, section), key, resample_levels(v, levels))
        if isinstance(out.sample.start_sigma, list):
            out.sample.start_sigma[0] = 0.0  # level 0 always starts from noise
    lpb = out.model.levels_per_block
    if lpb is not None and (levels != old or max(lpb) != levels):
        out.model.levels_per_block = ac_schedule(out.model.num_blocks, levels)
    return out


def full_res_mapping() -> str:
    """Which mapping the full-res variant uses, recorded with the results."""
    return "hpdm.info.full_res_config"


VARIANTS = ("hpdm+ac", "hpdm", "full-res")


def variant_config(
    preset: str, target, patch, variant: str, overrides: list[str] | None = None, batch: int = 1
) -> Config:
    """`hpdm+ac`, `hpdm` (AC off) or `full-res` (one level whose patch is the target) of any preset
    at `target`, on the procedural dataset (the data path is not timed). `hpdm+ac` keeps the
    preset's levels_per_block where it fits the level count, else a paper-like schedule;
    `full-res` is `full_res_config` of the `hpdm+ac` pyramid."""
    if variant not in VARIANTS:
        raise SystemExit(f"unknown variant '{variant}'; choose from {list(VARIANTS)}")
    cfg = load_config(preset, list(overrides or []))
    target = tuple(target or cfg.pyramid.target)
    try:
        cfg = pyramid_config(cfg, target, patch)
        if cfg.model.levels_per_block is None:
            cfg.model.levels_per_block = ac_schedule(cfg.model.num_blocks, cfg.pyramid.num_levels)
        if variant == "hpdm":
            cfg.model.levels_per_block = None
        elif variant == "full-res":
            cfg = full_res_config(cfg)
        cfg.data.dataset, cfg.data.path, cfg.data.num_workers = "shapes", None, 0
        cfg.train.batch_size, cfg.train.grad_accum = batch, 1
        cfg.validate()
    except ConfigError as e:
        raise SystemExit(
            f"{variant} of preset {preset} at target {size_str(target)}, patch "
            f"{size_str(patch or cfg.pyramid.patch)}: {e}"
        ) from None
    cfg.name = f"{variant} {size_str(target)}"
    return cfg


# ---------------------------------------------------------------------------------------------
# A timed training step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


class TrainStep:
    """One real training step of `hpdm.train.Trainer` (boxes, crops, loss, backward, optimizer,
    EMA) on a fixed batch, so the data path is not timed."""

    def __init__(self, cfg: Config, device: torch.device, activation_checkpointing: bool = False):
        from hpdm.train import Trainer

        cfg = copy.deepcopy(cfg)
        cfg.train.activation_checkpointing = activation_checkpointing
        self._tmp = tempfile.TemporaryDirectory(prefix="hpdm_bench_")
        self.trainer = Trainer(cfg, out_dir=self._tmp.name, device=str(device), progress=False)
        self.device = device
        self.batch = next(self.trainer._batches())
        self.batch_size = len(self.batch["video"])

    def __call__(self) -> None:
        tr = self.trainer
        tr.opt.zero_grad(set_to_none=True)
        loss, _, _ = tr._micro_step(self.batch)
        loss.backward()
        tr.opt.step()
        tr._update_ema()

    def forward_backward(self) -> None:
        tr = self.trainer
        tr.opt.zero_grad(set_to_none=True)
        loss, _, _ = tr._micro_step(self.batch)
        loss.backward()

    def flops(self) -> int:
        """FLOPs of one forward + backward of the batch, counted as `hpdm info` counts them
        (hpdm.info.flop_counter: torch's FlopCounterMode with CPU flash attention counted); the
        optimizer and EMA add a few per parameter and are not counted."""
        from hpdm.info import flop_counter

        counter = flop_counter()
        with counter:
            self.forward_backward()
        return int(counter.get_total_flops())

    def state_bytes(self) -> int:
        """Weights, gradients, optimizer state and EMA: what training holds besides activations."""
        tr = self.trainer
        params = sum(p.numel() * p.element_size() for p in tr.model.parameters())
        opt = sum(
            v.numel() * v.element_size()
            for s in tr.opt.state.values()
            for v in s.values()
            if isinstance(v, torch.Tensor)
        )
        return 3 * params + opt  # weights + grads + EMA, + optimizer moments

    def activation_bytes(self) -> int:
        """Bytes autograd saves for backward in one forward of the batch (hpdm.info.activation_bytes)."""
        from hpdm.info import activation_bytes

        tr = self.trainer
        video = self.batch["video"].to(self.device)
        boxes = sample_boxes(tr.geo, len(video), torch.Generator().manual_seed(0)).to(self.device)
        x = extract_patches(video, tr.geo, boxes)
        labels = self.batch["label"].to(self.device) if tr.cfg.model.num_classes > 0 else None
        return activation_bytes(tr.model, tr.diffusion, boxes, x, labels, None)

    def peak_cuda_bytes(self) -> int:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self()
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device)

    def close(self) -> None:
        del self.trainer
        self._tmp.cleanup()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def interleaved_times(
    fns: dict[str, Callable[[], None]], device: torch.device, rounds: int, reps: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each function, measured in alternating rounds so that a change in
    background load hits every candidate alike; returns the per-round means."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            sync(device)
            out[k].append((time.perf_counter() - t0) / reps)
    return out


def median(v: list[float]) -> float:
    return statistics.median(v) if v else math.nan


def spread(v: list[float]) -> float:
    """Relative half-range of the rounds: a rough error bar."""
    return (max(v) - min(v)) / (2 * statistics.median(v)) if len(v) > 1 else 0.0
