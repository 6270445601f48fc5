"""Grow a low-resolution generator into a high-resolution pyramid model (paper §5.2, DESIGN §6).

The base is typically a 1-level model trained at the patch size. The grown model shares every
weight with it; its level 0 *is* the base: level-0 latents and level embedding are copied, new
levels start from the base's level-0 latents, and the new deep-context-fusion layers start as
identity (their default initialisation), so at step 0 the grown model's level 0 computes exactly
what the base computed. Then `hpdm train CONFIG --init BASE` fine-tunes it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from hpdm.checkpoint import read_config, read_weights, resolve_checkpoint
from hpdm.model.hpdm import HPDM
from hpdm.pyramid import token_grid

# Parameters whose first axis is the pyramid level: copy the base's levels, fill new ones from level 0.
PER_LEVEL = ("latents", "level_embed.weight")


def init_from_state(
    model: HPDM, base: dict[str, torch.Tensor], base_grid: tuple[int, int, int] | None = None
) -> dict[str, list[str]]:
    """Copy every compatible tensor of `base` into `model`; returns which keys were copied/grown/new.

    `base_grid`: the base's token grid, when its patch differs (e.g. T2V-1K's 16x72x128 patches
    grown from the 8x36x64 base): its positional table is resized trilinearly to this model's grid."""
    own = model.state_dict()
    report: dict[str, list[str]] = {"copied": [], "grown": [], "new": [], "ignored": []}
    with torch.no_grad():
        for key, target in own.items():
            src = base.get(key)
            if src is None:
                report["new"].append(key)
            elif src.shape == target.shape:
                target.copy_(src)
                report["copied"].append(key)
            elif key in PER_LEVEL and src.shape[1:] == target.shape[1:]:
                n = min(src.shape[0], target.shape[0])
                target[:n].copy_(src[:n])
                target[n:].copy_(src[:1].expand_as(target[n:]))
                report["grown"].append(key)
            elif key == "pos" and base_grid is not None and src.shape[1:] == target.shape[1:]:
                target.copy_(resize_positions(src, base_grid, model.grid))
                report["grown"].append(key)
            elif key == "tokenizer.weight" and target.shape[1] == 2 * src.shape[1]:
                # a base without pixel channels: its RGB weights, the new pixel channels start at zero
                d = target.shape[0]
                target.zero_()
                target.view(d, -1, 6)[..., :3].copy_(src.view(d, -1, 3))
                report["grown"].append(key)
            elif key == "tokenizer.weight" and src.shape[1] == 2 * target.shape[1]:
                raise ValueError(
                    "the base was trained with pixel context (model.fusion=deep+pixels or shallow: its "
                    "tokenizer reads 6 channels); set model.fusion the same to initialise from it"
                )
            else:
                raise ValueError(
                    f"cannot initialise '{key}' of shape {tuple(target.shape)} from the base's "
                    f"{tuple(src.shape)}: the base must have the same widths (model.dim, latent_dim, "
                    "num_latents, num_blocks, cube, patch) as the grown config"
                )
        report["ignored"] = sorted(set(base) - set(own))
    return report


def resize_positions(pos: torch.Tensor, grid, new_grid) -> torch.Tensor:
    """A learned positional table (n, d) over token grid `grid` resampled to `new_grid` (n', d)."""
    table = pos.T.reshape(1, pos.shape[1], *grid)
    out = F.interpolate(table, size=tuple(new_grid), mode="trilinear", align_corners=False)
    return out.reshape(pos.shape[1], -1).T


def init_from_checkpoint(model: HPDM, ckpt: str | Path, ema: bool = True) -> dict[str, list[str]]:
    ck = resolve_checkpoint(ckpt)
    name = "ema.safetensors" if ema and (ck / "ema.safetensors").exists() else "model.safetensors"
    base_cfg = read_config(ck)
    base_grid = token_grid(base_cfg.pyramid.patch, base_cfg.model.cube)
    return init_from_state(model, read_weights(ck / name), base_grid if base_grid != model.grid else None)
