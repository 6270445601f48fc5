"""Seam score: how visible tile boundaries are in a tiled generation.

score = mean |∇v| across tile boundaries / mean |∇v| across other boundaries of the same kind,
over the spatial axes. With `cube` given, the reference set is the token-cube boundaries that are
not tile edges (tile edges always lie on the token grid, and an undertrained detokenizer can mark
every token edge), so the score isolates seams between tiles from token-grid artefacts. 1.0 means
the boundaries are statistically invisible; hard seams give values well above 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hpdm.pyramid import tile_starts


def boundary_masks(canvas: Sequence[int], patch: Sequence[int], overlap: str) -> list[torch.Tensor]:
    """Per spatial axis (h, w), a bool mask over the n-1 neighbour differences marking tile edges."""
    half = {"none": (False, False), "spatial": (True, True), "full": (True, True)}[overlap]
    masks = []
    for a, h in zip((1, 2), half):
        n, p = canvas[a], patch[a]
        starts = tile_starts(n, p, max(1, p // 2) if h else p)
        edges = {s for s in starts if s > 0} | {s + p for s in starts if s + p < n}
        m = torch.zeros(n - 1, dtype=torch.bool)
        for e in edges:  # a difference between pixels e-1 and e crosses the edge at e
            m[e - 1] = True
        masks.append(m)
    return masks


def seam_score(
    videos: torch.Tensor, patch: Sequence[int], overlap: str, cube: Sequence[int] | None = None
) -> float:
    """videos (B, C, F, H, W) generated on a canvas tiled with `patch` and `overlap`."""
    canvas = videos.shape[-3:]
    mh, mw = boundary_masks(canvas, patch, overlap)
    gh = (videos[..., 1:, :] - videos[..., :-1, :]).abs().mean(dim=(0, 1, 2, 4))  # (H-1,)
    gw = (videos[..., :, 1:] - videos[..., :, :-1]).abs().mean(dim=(0, 1, 2, 3))  # (W-1,)
    ref_h, ref_w = ~mh, ~mw
    if cube is not None:  # compare with token boundaries that are not tile edges
        on_h = (torch.arange(1, canvas[1]) % cube[1]) == 0
        on_w = (torch.arange(1, canvas[2]) % cube[2]) == 0
        if (on_h & ~mh).any() or (on_w & ~mw).any():
            ref_h, ref_w = on_h & ~mh, on_w & ~mw
    across = torch.cat([gh[mh], gw[mw]])
    inside = torch.cat([gh[ref_h], gw[ref_w]])
    if across.numel() == 0 or inside.numel() == 0:
        return 1.0  # a single tile has no seams
    return float(across.mean() / inside.mean().clamp_min(1e-12))
