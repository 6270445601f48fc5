"""Does the object of a generated `shapes` video stay in the video? Per-frame object masks by colour.

Every `shapes` class has one saturated colour and the backgrounds are muted (no palette colour
lies within 0.4 of a class colour), so the pixels within `tol` of the requested class's colour
are the object. From their share of each frame:

* **persistence**: the share of frames whose object area is at least `ratio` × the clip's
  median area. Real clips score 1.0 (the object bounces off the borders and never leaves); an
  object that vanishes or shrinks to a speck for a few frames lowers it.
* **area**: the mean object area as a share of the frame, to compare with the real clips'.
"""

from __future__ import annotations

import torch

from hpdm.data.shapes import CLASS_COLOURS


def object_areas(videos: torch.Tensor, labels: torch.Tensor, tol: float = 0.25) -> torch.Tensor:
    """videos (B, 3, F, H, W) in [-1, 1], labels (B,) → (B, F) share of each frame within `tol`
    (Euclidean, RGB in [0, 1]) of the class colour."""
    if videos.dim() != 5 or videos.shape[1] != 3:
        raise ValueError(f"object_areas: expected videos (B, 3, F, H, W), got {tuple(videos.shape)}")
    colours = torch.tensor(CLASS_COLOURS, dtype=videos.dtype, device=videos.device)
    if labels.min() < 0 or labels.max() >= len(colours):
        raise ValueError(f"object_areas: labels must be shapes classes 0..{len(colours) - 1}")
    rgb = (videos.clamp(-1, 1) + 1) / 2
    target = colours[labels.to(videos.device)][:, :, None, None, None]
    inside = (rgb - target).square().sum(1) < tol**2  # (B, F, H, W)
    return inside.flatten(2).float().mean(-1)


def persistence(areas: torch.Tensor, ratio: float = 0.5) -> float:
    """Share of frames whose object area is at least `ratio` × its clip's median (0 for a clip
    with no object in most frames)."""
    median = areas.median(dim=1, keepdim=True).values
    present = (areas >= ratio * median) & (median > 0)
    return float(present.float().mean())
