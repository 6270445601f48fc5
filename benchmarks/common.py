"""Shared pieces of the benchmark scripts: the machine, configs for the compared models, a timed
training step, memory, interleaved timing, Markdown tables and JSON results.

Benchmarks print tables of measured numbers and write `benchmarks/results/<name>.json`; they are
never run by CI and assert nothing.
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


def setup(args: argparse.Namespace) -> torch.device:
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the trainer's default (train.tf32); fp32 otherwise
        torch.backends.cudnn.allow_tf32 = True
    return dev


def write_result(name: str, payload: dict, out: str | None = None) -> Path:
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
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


def variant_config(
    preset: str, target, patch, variant: str, overrides: list[str] | None = None, batch: int = 1
) -> Config:
    """`hpdm+ac`, `hpdm` (AC off) or `full-res` (one level whose patch is the target) of a preset,
    on the procedural dataset (the data path is not timed)."""
    cfg = load_config(preset, list(overrides or []))
    patch = tuple(patch or cfg.pyramid.patch)
    levels = PyramidGeometry(patch, target, 1).min_levels()
    common = [
        "data.dataset=shapes",
        "data.num_workers=0",
        f"train.batch_size={batch}",
        "train.grad_accum=1",
        f"pyramid.target=[{','.join(map(str, target))}]",
    ]
    if variant == "full-res":
        extra = [
            f"pyramid.patch=[{','.join(map(str, target))}]",
            "pyramid.num_levels=1",
            "model.levels_per_block=null",
        ]
    else:
        extra = [f"pyramid.patch=[{','.join(map(str, patch))}]", f"pyramid.num_levels={levels}"]
        if variant == "hpdm":
            extra.append("model.levels_per_block=null")
        else:
            lpb = cfg.model.levels_per_block
            if lpb is None or cfg.pyramid.num_levels != levels or max(lpb) != levels:
                lpb = ac_schedule(cfg.model.num_blocks, levels)
            extra.append(f"model.levels_per_block=[{','.join(map(str, lpb))}]")
    try:
        out = load_config(preset, [*(overrides or []), *common, *extra])
    except ConfigError as e:
        raise SystemExit(f"{variant} at target {size_str(target)}, patch {size_str(patch)}: {e}") from None
    out.name = f"{variant} {size_str(target)}"
    return out


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
