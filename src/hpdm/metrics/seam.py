"""Seam score: how visible tile boundaries are in a tiled generation.

score = mean |∇v| across tile boundaries / mean |∇v| across other boundaries of the same kind,
over the spatial axes. With `cube` given, the reference set is the token-cube boundaries (on the
canvas's grid) that are not tile edges (an undertrained detokenizer can mark every token edge), so
the score isolates seams between tiles from token-grid artefacts. 1.0 means the boundaries are
statistically invisible; hard seams give values well above 1.

`blockiness` measures seams and token grids together: the gradient across even pixel boundaries
against odd ones (1.0 for real clips); `judder` does the same between frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hpdm.pyramid import tile_starts, tile_strides


def boundary_masks(
    canvas: Sequence[int], patch: Sequence[int], overlap: str, stride: int | Sequence[int] | None = None
) -> list[torch.Tensor]:
    """Per spatial axis (h, w), a bool mask over the n-1 neighbour differences marking tile edges."""
    strides = tile_strides(patch, overlap, stride)
    masks = []
    for a in (1, 2):
        n, p = canvas[a], patch[a]
        starts = tile_starts(n, p, strides[a])
        edges = {s for s in starts if s > 0} | {s + p for s in starts if s + p < n}
        m = torch.zeros(n - 1, dtype=torch.bool)
        for e in edges:  # a difference between pixels e-1 and e crosses the edge at e
            m[e - 1] = True
        masks.append(m)
    return masks


def seam_score(
    videos: torch.Tensor,
    patch: Sequence[int],
    overlap: str,
    cube: Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
) -> float:
    """videos (B, C, F, H, W) generated on a canvas tiled with `patch`, `overlap` and `stride`."""
    canvas = videos.shape[-3:]
    mh, mw = boundary_masks(canvas, patch, overlap, stride)
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


def blockiness(videos: torch.Tensor) -> float:
    """mean |∇v| across the boundaries between pixels 2k-1 and 2k / across those between 2k and
    2k+1, over the spatial axes of (B, C, F, H, W) videos.

    Every grid this model can imprint lies on even boundaries: token cubes (4 pixels wide), tile
    edges (even strides), and a coarser level's pixels upsampled 2×. Natural content has no
    preference (real `shapes` clips score 1.00), so values above 1 measure all the blocky
    artefacts together, seams and token grids alike."""
    gh = (videos[..., 1:, :] - videos[..., :-1, :]).abs().mean(dim=(0, 1, 2, 4))
    gw = (videos[..., :, 1:] - videos[..., :, :-1]).abs().mean(dim=(0, 1, 2, 3))
    g = torch.cat([gh, gw])
    edge = torch.cat([torch.arange(1, gh.numel() + 1), torch.arange(1, gw.numel() + 1)])
    even, odd = g[edge % 2 == 0], g[edge % 2 == 1]
    if even.numel() == 0 or odd.numel() == 0:
        return 1.0
    return float(even.mean() / odd.mean().clamp_min(1e-12))


def judder(videos: torch.Tensor) -> float:
    """Blockiness in time: mean |v_t - v_(t-1)| across the boundaries between frames 2k-1 and 2k
    over those between 2k and 2k+1, for (B, C, F, H, W) videos. Tokens two frames long and
    tiles starting on even frames leave their steps on the even boundaries, so generated frames
    that come in pairs score above 1; real clips, which move evenly, score 1.00. Needs >= 3 frames."""
    d = (videos[:, :, 1:] - videos[:, :, :-1]).abs().mean(dim=(0, 1, 3, 4))  # boundary t = i + 1
    t = torch.arange(1, d.numel() + 1)
    even, odd = d[t % 2 == 0], d[t % 2 == 1]
    if even.numel() == 0 or odd.numel() == 0:
        return 1.0
    return float(even.mean() / odd.mean().clamp_min(1e-12))
