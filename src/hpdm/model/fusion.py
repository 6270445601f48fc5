"""How a level sees the coarser ones: deep context fusion (paper §4.3, eqs. 7–8) and the pixel
context of shallow fusion.

Deep context fusion (DCF): before every block, each finer level's tokens are concatenated with
the coarser levels' block inputs, resampled (trilinear) at the finer tokens' centres and averaged
over the coarser levels, and with the tokens' raw coordinates, then projected back to the token
width by a per-block linear layer that starts as the identity on the tokens. It is the only path
between levels, and it points coarse → fine.

Shallow fusion (the paper's ablation, and `model.fusion=deep+pixels` on top of DCF): the previous
level's input pixels resampled onto the patch, as 3 extra input channels.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from hpdm.pyramid import Boxes, absolute_coords, relative_grid

FUSIONS = ("deep", "shallow", "deep+pixels", "none")


class LevelContext(NamedTuple):
    """What a level-ℓ patch takes from its ℓ coarser patches, fixed while level ℓ is sampled:
    per block the averaged deep context (N, n, d) — None where the block does not process level ℓ,
    or without DCF — and with pixel context the previous level's pixels on the patch (N, 3, *patch)."""

    blocks: list[torch.Tensor | None]
    pixels: torch.Tensor | None

    def rows(self, index) -> LevelContext:
        """The context of some of the patches (a slice or an index along dim 0)."""
        return LevelContext(
            [c[index] if c is not None else None for c in self.blocks],
            self.pixels[index] if self.pixels is not None else None,
        )


class DeepFusion(nn.ModuleDict):
    """Deep context fusion's per-block projections `str(b) → Linear(2d + 6, d)`, one for every
    block that processes a level with coarser levels (`levels_per_block[b] > 1`), and the resampling."""

    def __init__(
        self,
        levels_per_block: list[int],
        dim: int,
        grid: tuple[int, int, int],
        use_coords: bool = True,
        detach: bool = False,
    ):
        self_coord_dim = 6 if use_coords else 0
        super().__init__(
            {
                str(b): nn.Linear(2 * dim + self_coord_dim, dim)
                for b, nb in enumerate(levels_per_block)
                if nb > 1
            }
        )
        self.dim, self.grid, self.coord_dim, self.detach = dim, grid, self_coord_dim, detach
        self._pair_cache: dict = {}

    def reset_parameters(self) -> None:
        """Identity on the tokens, zero on the context and coordinates: a fresh DCF changes nothing."""
        for lin in self.values():
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
            with torch.no_grad():
                lin.weight[:, : self.dim].copy_(torch.eye(self.dim))

    def coords(self, boxes: Boxes) -> torch.Tensor:
        """Raw coordinates per token: absolute centre (t, y, x) and patch size s → (..., n, 6)."""
        centres = absolute_coords(boxes.offset, boxes.size, self.grid)
        return torch.cat([centres, boxes.size[..., None, :].expand_as(centres)], dim=-1)

    def fuse(self, b: int, tokens: torch.Tensor, context: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        parts = [tokens, context] + ([coords] if self.coord_dim else [])
        return self[str(b)](torch.cat(parts, dim=-1))

    def context(
        self, src: torch.Tensor, src_boxes: Boxes, tgt_boxes: Boxes, targets: tuple[int, ...]
    ) -> torch.Tensor:
        """Averaged deep context (B, T, n, d) for T target patches, the i-th of level `targets[i]`,
        from every coarser one of the S source patches src (B, S, n, d) (source s is level s).

        One batched `grid_sample` over all (target, source) pairs.
        """
        B = src.shape[0]
        pairs, weights = self._pairs(targets, src.device)
        ti, si = pairs[:, 0], pairs[:, 1]
        x = src[:, si]  # (B, P, n, d)
        if self.detach:
            x = x.detach()
        f, h, w = self.grid
        x = rearrange(x, "b p (f h w) d -> (b p) d f h w", f=f, h=h, w=w)
        grid = relative_grid(
            tgt_boxes.offset[:, ti],
            tgt_boxes.size[:, ti],
            src_boxes.offset[:, si],
            src_boxes.size[:, si],
            self.grid,
        )
        sampled = F.grid_sample(
            x, grid.flatten(0, 1).to(x.dtype), mode="bilinear", padding_mode="border", align_corners=False
        )
        sampled = rearrange(sampled, "(b p) d f h w -> b p (f h w) d", b=B)
        return torch.einsum("tp,bpnd->btnd", weights.to(sampled.dtype), sampled)

    def _pairs(self, targets: tuple[int, ...], device) -> tuple[torch.Tensor, torch.Tensor]:
        """(target position, source level) pairs with source < target level, and the averaging matrix."""
        key = (targets, str(device))
        if key not in self._pair_cache:
            pairs = [(i, s) for i, t in enumerate(targets) for s in range(t)]
            weights = torch.zeros(len(targets), len(pairs), device=device)
            for p, (i, _) in enumerate(pairs):
                weights[i, p] = 1.0 / targets[i]
            self._pair_cache[key] = (torch.tensor(pairs, device=device, dtype=torch.long), weights)
        return self._pair_cache[key]


def resample_pixels(src: torch.Tensor, src_boxes: Boxes, boxes: Boxes, patch) -> torch.Tensor:
    """A coarser patch's pixels src (N, 3, *patch) resampled onto the patches `boxes` (N, 3)."""
    grid = relative_grid(
        boxes.offset[:, None], boxes.size[:, None], src_boxes.offset[:, None], src_boxes.size[:, None], patch
    )
    return F.grid_sample(src, grid[:, 0], mode="bilinear", padding_mode="border", align_corners=False)


def previous_level_pixels(x: torch.Tensor, boxes: Boxes, patch) -> torch.Tensor:
    """Each level's previous level's input x (B, L, 3, *patch) resampled onto its patch (zeros at level 0)."""
    B, L = x.shape[:2]
    prev = torch.zeros_like(x)
    if L > 1:
        grid = relative_grid(
            boxes.offset[:, 1:], boxes.size[:, 1:], boxes.offset[:, :-1], boxes.size[:, :-1], patch
        )
        s = F.grid_sample(
            x[:, :-1].flatten(0, 1),
            grid.flatten(0, 1),
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )
        prev = torch.cat([prev[:, :1], s.view(B, L - 1, *s.shape[1:])], dim=1)
    return prev
