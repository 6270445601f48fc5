"""`hpdm info`: parameters, tokens per level, FLOPs per training step by level and block, and memory.

FLOPs are measured with `torch.utils.flop_counter.FlopCounterMode` on one video (forward +
backward). Levels are folded into the batch, so block b's FLOPs are shared equally by the levels
it processes; that is how the per-level split below is derived. Activation memory is measured by
summing the bytes of the tensors autograd saves for backward during one forward pass.
"""

from __future__ import annotations

import copy
import math

import torch
from torch.utils.flop_counter import FlopCounterMode

from hpdm.config import Config, levels_per_block
from hpdm.diffusion import Diffusion
from hpdm.model.hpdm import HPDM, count_parameters
from hpdm.pyramid import PyramidGeometry, sample_boxes


def _step_inputs(cfg: Config, batch: int):
    geo = PyramidGeometry(cfg.pyramid.patch, cfg.pyramid.target, cfg.pyramid.num_levels)
    boxes = sample_boxes(geo, batch, torch.Generator().manual_seed(0))
    x = torch.randn(batch, geo.num_levels, 3, *geo.patch)
    labels = torch.zeros(batch, dtype=torch.long) if cfg.model.num_classes > 0 else None
    text = torch.zeros(batch, 8, cfg.model.text_dim) if cfg.model.text_dim > 0 else None
    return geo, boxes, x, labels, text


def _measure(cfg: Config, batch: int):
    """FLOPs of one training step, total and by module (forward + backward)."""
    model = HPDM(cfg)
    geo, boxes, x, labels, text = _step_inputs(cfg, batch)
    diffusion = Diffusion(cfg.diffusion, geo)
    counter = FlopCounterMode(display=False, depth=None)
    with counter:
        loss, _, _ = diffusion.loss(
            model, x, boxes.offset, boxes.size, labels, text, null_class=model.null_class()
        )
        loss.backward()
    by_module = counter.get_flop_counts()

    def flops(suffix: str) -> int:
        key = next((k for k in by_module if k.endswith(suffix)), None)
        return int(sum(by_module[key].values())) if key else 0

    return model, geo, diffusion, (boxes, x, labels, text), int(counter.get_total_flops()), flops


def model_info(cfg: Config, batch: int = 1, measure_memory: bool = True) -> dict:
    """Measured numbers for one training step of `batch` videos on the CPU in fp32."""
    model, geo, diffusion, inputs, total, flops = _measure(cfg, batch)
    lpb = levels_per_block(cfg)
    L = geo.num_levels
    blocks = [flops(f"blocks.{b}") for b in range(len(lpb))]
    fusion = [flops(f"fusion.{b}") for b in range(len(lpb))]
    per_level = [0.0] * L
    tokens = [model.num_tokens0] + [model.num_tokens] * (L - 1)
    for b, nb in enumerate(lpb):
        active = range(min(nb, L))
        for lvl in active:
            # levels are folded into the batch: shares by token count (equal unless level 0 has
            # its own cube, `model.cube0`)
            per_level[lvl] += blocks[b] * tokens[lvl] / sum(tokens[k] for k in active)
            if lvl > 0 and nb > 1:
                per_level[lvl] += fusion[b] / (nb - 1)
    rest = total - sum(blocks) - sum(fusion)
    per_level = [v + rest / L for v in per_level]  # tokenizer, detokenizer, conditioning

    if cfg.model.levels_per_block is not None:  # the same model with adaptive computation off
        no_ac_cfg = copy.deepcopy(cfg)
        no_ac_cfg.model.levels_per_block = None
        no_ac_total = _measure(no_ac_cfg, batch)[4]
    else:
        no_ac_total = total

    out = {
        "name": cfg.name,
        "parameters": count_parameters(model),
        "levels": [
            {
                "level": lvl,
                "virtual_size": list(geo.level_sizes[lvl]),
                "tokens": model.num_tokens0 if lvl == 0 else model.num_tokens,
                "blocks": [b for b, nb in enumerate(lpb) if lvl < nb],
                "train_step_flops": per_level[lvl] / batch,
            }
            for lvl in range(L)
        ],
        "blocks": [
            {"block": b, "levels": lpb[b], "train_step_flops": (blocks[b] + fusion[b]) / batch}
            for b in range(len(lpb))
        ],
        "train_step_flops": total / batch,
        "train_step_flops_without_ac": no_ac_total / batch,
        "ac_flops_saving": 1 - total / no_ac_total if no_ac_total else 0.0,
        "batch": batch,
    }
    if measure_memory:
        out["activation_bytes_per_video"] = activation_bytes(model, diffusion, *inputs) / batch
    return out


def activation_bytes(model, diffusion, boxes, x, labels, text) -> int:
    """Bytes of tensors saved for backward during one training forward (deduplicated by storage)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        try:
            ptr = t.untyped_storage().data_ptr()
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        except (RuntimeError, NotImplementedError):
            pass
        return t

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _, _ = diffusion.loss(
            model, x, boxes.offset, boxes.size, labels, text, null_class=model.null_class()
        )
    del loss
    return sum(v for k, v in seen.items() if k not in params)


def _fmt_flops(v: float) -> str:
    for unit, scale in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if v >= scale:
            return f"{v / scale:.2f} {unit}"
    return f"{v:.0f} FLOP"


def format_info(info: dict) -> str:
    lines = [
        f"config            {info['name']}",
        f"parameters        {info['parameters']:,} ({info['parameters'] * 4 / 2**20:.1f} MiB fp32)",
        f"train step FLOPs  {_fmt_flops(info['train_step_flops'])} per video (forward + backward)",
        f"without AC        {_fmt_flops(info['train_step_flops_without_ac'])} per video "
        f"(AC saves {100 * info['ac_flops_saving']:.1f}%)",
    ]
    if "activation_bytes_per_video" in info:
        lines.append(
            f"activations       {info['activation_bytes_per_video'] / 2**20:.1f} MiB per video saved for backward"
        )
    lines.append("")
    lines.append("level  virtual size (FxHxW)  tokens  blocks        FLOPs/video")
    for lv in info["levels"]:
        size = "x".join(map(str, lv["virtual_size"]))
        lines.append(
            f"{lv['level']:>5}  {size:<20}  {lv['tokens']:>6}  {str(lv['blocks']):<12}  "
            f"{_fmt_flops(lv['train_step_flops'])}"
        )
    lines.append("")
    lines.append("block  levels  FLOPs/video")
    for bl in info["blocks"]:
        lines.append(f"{bl['block']:>5}  {bl['levels']:>6}  {_fmt_flops(bl['train_step_flops'])}")
    return "\n".join(lines)


def human_bytes(n: float) -> str:
    if n <= 0:
        return "0 B"
    k = min(4, int(math.log(n, 1024)))
    return f"{n / 1024**k:.1f} {['B', 'KiB', 'MiB', 'GiB', 'TiB'][k]}"
