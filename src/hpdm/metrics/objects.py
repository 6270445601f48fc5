"""Does the object of a generated `shapes` video stay in the video? Per-frame object masks by colour.

Every `shapes` class has one saturated colour and the backgrounds are muted (no palette colour
lies within 0.4 of a class colour), so the pixels within `tol` of the requested class's colour
are the object. From their share of each frame:

* **persistence**: the share of frames whose object area is at least `ratio` × the clip's
  median area. Real clips score 1.0 (the object bounces off the borders and never leaves); an
  object that vanishes or shrinks to a speck for a few frames lowers it.
* **area**: the mean object area as a share of the frame, to compare with the real clips'.
* **objects per frame**: connected regions of the class colour covering at least `min_area` of
  the frame. A real clip shows one; a video tiled without a shared layout can show several.
"""

from __future__ import annotations

import torch

from hpdm.data.shapes import CLASS_COLOURS


def object_areas(videos: torch.Tensor, labels: torch.Tensor, tol: float = 0.25) -> torch.Tensor:
    """videos (B, 3, F, H, W) in [-1, 1], labels (B,) → (B, F) share of each frame within `tol`
    (Euclidean, RGB in [0, 1]) of the class colour."""
    if videos.dim() != 5 or videos.shape[1] != 3:
        raise ValueError(f"object_areas: expected videos (B, 3, F, H, W), got {tuple(videos.shape)}")
    if labels.min() < 0 or labels.max() >= len(CLASS_COLOURS):
        raise ValueError(f"object_areas: labels must be shapes classes 0..{len(CLASS_COLOURS) - 1}")
    return _masks(videos, labels, tol).flatten(2).float().mean(-1)


def _masks(videos: torch.Tensor, labels: torch.Tensor, tol: float) -> torch.Tensor:
    colours = torch.tensor(CLASS_COLOURS, dtype=videos.dtype, device=videos.device)
    rgb = (videos.clamp(-1, 1) + 1) / 2
    target = colours[labels.to(videos.device)][:, :, None, None, None]
    return (rgb - target).square().sum(1) < tol**2  # (B, F, H, W)


def object_counts(
    videos: torch.Tensor, labels: torch.Tensor, tol: float = 0.25, min_area: float = 0.002
) -> torch.Tensor:
    """(B, F) number of connected regions (8-neighbourhood) of the class colour per frame that
    cover at least `min_area` of the frame; videos (B, 3, F, H, W) in [-1, 1]."""
    import torch.nn.functional as F

    inside = _masks(videos, labels, tol)
    B, T, H, W = inside.shape
    m = inside.reshape(B * T, 1, H, W)
    ids = torch.arange(1, H * W + 1, dtype=torch.float32, device=videos.device).view(1, 1, H, W)
    lab = torch.where(m, ids.expand_as(m.float()), torch.zeros(()))
    while True:  # every region takes its largest pixel id (max-propagation inside the mask)
        nxt = torch.where(m, F.max_pool2d(lab, 3, stride=1, padding=1), torch.zeros(()))
        if torch.equal(nxt, lab):
            break
        lab = nxt
    frame = torch.arange(B * T, device=lab.device)[:, None].expand(-1, H * W)
    key = frame.reshape(-1) * (H * W + 1) + lab.reshape(-1).long()  # (frame, region id) pairs
    regions, size = key.unique(return_counts=True)
    big = (regions % (H * W + 1) != 0) & (size >= min_area * H * W)  # id 0 is the background
    return torch.bincount(regions[big] // (H * W + 1), minlength=B * T).view(B, T)


def persistence(areas: torch.Tensor, ratio: float = 0.5) -> float:
    """Share of frames whose object area is at least `ratio` × its clip's median (0 for a clip
    with no object in most frames)."""
    median = areas.median(dim=1, keepdim=True).values
    present = (areas >= ratio * median) & (median > 0)
    return float(present.float().mean())
