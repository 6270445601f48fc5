"""Geometry of the patch pyramid — the one idea training, deep context fusion and tiling share.

Everything speaks in *boxes* in normalised coordinates of the whole video: an offset
`δ ∈ [0,1]^3` and a size `s ∈ (0,1]^3`, per axis (f, h, w). Level ℓ's *virtual video* has
size `V^ℓ = max(r, R / 2^(L-1-ℓ))`; a level-ℓ patch has size `s^ℓ = r / V^ℓ` and, in training
and tiling alike, an integer pixel offset on level ℓ's own grid, so a patch is always an exact
crop of the (area-downsampled) level video, never an interpolation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hpdm.errors import ConfigError

AXES = ("frames", "height", "width")


def _is_pow2(x: int) -> bool:
    return x > 0 and (x & (x - 1)) == 0


@dataclass(frozen=True)
class PyramidGeometry:
    """Level sizes of a pyramid of `num_levels` levels of `patch`-sized patches over `target`."""

    patch: tuple[int, int, int]
    target: tuple[int, int, int]
    num_levels: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch", tuple(int(v) for v in self.patch))
        object.__setattr__(self, "target", tuple(int(v) for v in self.target))
        if self.num_levels < 1:
            raise ConfigError("pyramid.num_levels must be >= 1")
        for a, (r, R) in enumerate(zip(self.patch, self.target)):
            if r <= 0:
                raise ConfigError(f"pyramid: patch {AXES[a]} must be positive, got {r}")
            if R % r or not _is_pow2(R // r):
                raise ConfigError(
                    f"pyramid: target {AXES[a]} {R} is not patch {AXES[a]} {r} × 2^k; "
                    f"use {nearest_pow2_multiple(R, r)}"
                )

    @property
    def level_sizes(self) -> list[tuple[int, int, int]]:
        """V^ℓ for every level, coarse to fine; the last one is the target."""
        L = self.num_levels
        return [
            tuple(max(r, R >> (L - 1 - lvl)) for r, R in zip(self.patch, self.target)) for lvl in range(L)
        ]

    def min_levels(self) -> int:
        """Fewest levels for which level 0 is the whole video at patch size."""
        return 1 + max(int(math.log2(R // r)) for r, R in zip(self.patch, self.target))

    def box_sizes(self, device=None) -> torch.Tensor:
        """(L, 3) patch size of every level in normalised whole-video units."""
        sizes = torch.tensor(self.level_sizes, dtype=torch.float64, device=device)
        return (torch.tensor(self.patch, dtype=torch.float64, device=device) / sizes).float()

    def level_scales(self) -> list[tuple[int, int, int]]:
        """Per-axis downsampling factor of each level w.r.t. the target."""
        return [tuple(R // v for R, v in zip(self.target, V)) for V in self.level_sizes]

    def grown_axes(self, level: int) -> tuple[bool, bool, bool]:
        """Axes along which level `level` is twice level `level - 1` (the pyramided ones there)."""
        sizes = self.level_sizes
        return tuple(sizes[level - 1][a] < sizes[level][a] for a in range(3))

    def voxels(self, level: int) -> int:
        return math.prod(self.level_sizes[level])


def nearest_pow2_multiple(value: int, base: int) -> int:
    k = max(0, round(math.log2(max(value, 1) / base)))
    return base * 2**k


def valid_sizes(patch: Sequence[int], near: Sequence[int], count: int = 3) -> list[tuple[int, int, int]]:
    """A few valid output sizes (patch × 2^k per axis) close to `near`, nearest first."""
    options = []
    for a in range(3):
        k0 = max(0, round(math.log2(max(near[a], 1) / patch[a])))
        options.append(sorted({patch[a] * 2**k for k in (k0 - 1, k0, k0 + 1) if k >= 0}))
    cands = [(f, h, w) for f in options[0] for h in options[1] for w in options[2]]
    cands.sort(key=lambda c: sum(abs(math.log2(c[a] / max(near[a], 1))) for a in range(3)))
    return cands[:count]


# ---------------------------------------------------------------------------------------------
# Level videos and crops


def downsample2(x: torch.Tensor, axes: Sequence[bool]) -> torch.Tensor:
    """2× area (average) downsampling of (B, C, F, H, W) along the flagged axes."""
    k = tuple(2 if a else 1 for a in axes)
    if k == (1, 1, 1):
        return x
    return F.avg_pool3d(x, kernel_size=k, stride=k)


def level_videos(video: torch.Tensor, geo: PyramidGeometry) -> list[torch.Tensor]:
    """Every level's virtual video, by repeated exact 2× area downsampling of the target clip."""
    if tuple(video.shape[-3:]) != geo.target:
        raise ValueError(f"video size {tuple(video.shape[-3:])} != pyramid target {geo.target}")
    out = [video]
    for lvl in range(geo.num_levels - 1, 0, -1):
        out.append(downsample2(out[-1], geo.grown_axes(lvl)))
    return out[::-1]


def crop(
    x: torch.Tensor, offsets: torch.Tensor, size: Sequence[int], index: torch.Tensor | None = None
) -> torch.Tensor:
    """Exact crops: x (B, C, F, H, W), integer offsets (N, 3) → (N, C, *size).

    `index` (N,) picks the source video of each crop (default: crop n comes from video n).
    Vectorised with advanced indexing; no loop over crops.
    """
    n = offsets.shape[0]
    if index is None:
        index = torch.arange(n, device=x.device)
    offsets = offsets.to(x.device).long()
    f = offsets[:, 0, None] + torch.arange(size[0], device=x.device)
    h = offsets[:, 1, None] + torch.arange(size[1], device=x.device)
    w = offsets[:, 2, None] + torch.arange(size[2], device=x.device)
    out = x[index[:, None, None, None], :, f[:, :, None, None], h[:, None, :, None], w[:, None, None, :]]
    return out.permute(0, 4, 1, 2, 3)  # (N, C, f, h, w)


# ---------------------------------------------------------------------------------------------
# Training: nested boxes


@dataclass
class Boxes:
    """Boxes of patches, the one geometry type of training, deep context fusion and tiling.

    `offset` and `size` (..., 3) are in normalised whole-video coordinates (f, h, w); `pixel`
    (..., 3) long is the offset on the patch's own level grid, when the box is one (always in
    training and tiling). Leading dims are free: (B, L) per level of a batch, (T,) per tile.
    """

    offset: torch.Tensor
    size: torch.Tensor
    pixel: torch.Tensor | None = None

    @classmethod
    def on_grid(cls, pixel: torch.Tensor, level_size: Sequence[int], patch: Sequence[int]) -> Boxes:
        """Boxes of `patch`-sized patches at integer offsets `pixel` (..., 3) on a level grid of `level_size`."""
        V = torch.tensor(level_size, dtype=torch.float64, device=pixel.device)
        r = torch.tensor(patch, dtype=torch.float64, device=pixel.device)
        offset = (pixel.double() / V).float()
        size = (r / V).float().expand_as(offset).contiguous()
        return cls(offset, size, pixel)

    def to(self, device) -> Boxes:
        pixel = self.pixel.to(device) if self.pixel is not None else None
        return Boxes(self.offset.to(device), self.size.to(device), pixel)

    def __getitem__(self, index) -> Boxes:
        """Index the leading dims, e.g. `boxes[:, 1:]` (levels) or `boxes[a:b]` (tiles)."""
        pixel = self.pixel[index] if self.pixel is not None else None
        return Boxes(self.offset[index], self.size[index], pixel)

    def __len__(self) -> int:
        return self.offset.shape[0]

    @staticmethod
    def stack(boxes: Sequence[Boxes], dim: int = 0) -> Boxes:
        """Boxes stacked along a new leading dim (e.g. coarse levels of the same tiles: dim=1)."""
        return Boxes._join(torch.stack, boxes, dim)

    @staticmethod
    def cat(boxes: Sequence[Boxes], dim: int = 0) -> Boxes:
        """Boxes concatenated along an existing leading dim (tiles: dim=0, levels: dim=1)."""
        return Boxes._join(torch.cat, boxes, dim)

    @staticmethod
    def _join(join, boxes: Sequence[Boxes], dim: int) -> Boxes:
        pixels = [b.pixel for b in boxes]
        pixel = join(pixels, dim) if all(p is not None for p in pixels) else None
        return Boxes(join([b.offset for b in boxes], dim), join([b.size for b in boxes], dim), pixel)


def sample_boxes(
    geo: PyramidGeometry, batch: int, generator: torch.Generator | Sequence[torch.Generator] | None = None
) -> Boxes:
    """One nested patch per level per video: level ℓ lies inside level ℓ-1, on level ℓ's pixel grid.

    Level 0 is the whole (downsampled) video. The level-ℓ offset is uniform over the integer
    positions of level ℓ's grid that keep the box inside the parent box (paper §4.2). A list of
    (CPU) generators, one per video, draws each video's boxes from its own: video i then gets
    what `sample_boxes(geo, 1, generator[i])` gives it, in one vectorised pass.
    """
    L = geo.num_levels
    if isinstance(generator, list | tuple):
        if len(generator) != batch:
            raise ValueError(f"sample_boxes: {len(generator)} generators for a batch of {batch}")
        u_all = (
            torch.stack([torch.rand(L - 1, 3, generator=g) for g in generator], 1)
            if batch
            else torch.empty(L - 1, 0, 3)
        )
    else:  # level by level over the batch (the order this function has always drawn in)
        u_all = torch.rand(L - 1, batch, 3, generator=generator)
    sizes = torch.tensor(geo.level_sizes)  # (L, 3)
    r = torch.tensor(geo.patch)
    pix = torch.zeros(batch, L, 3, dtype=torch.long)
    for lvl in range(1, L):  # a loop over levels (≤ 5), vectorised over the batch
        ratio = sizes[lvl] // sizes[lvl - 1]  # 1 or 2 per axis
        lo = pix[:, lvl - 1] * ratio  # parent box start on level ℓ's grid
        span = r * ratio - r + 1  # number of positions inside the parent
        u = u_all[lvl - 1]
        pix[:, lvl] = lo + (u * span).long().clamp_max(span - 1)
    offset = pix.double() / sizes.double()
    size = (r.double() / sizes.double()).expand(batch, -1, -1)
    return Boxes(offset.float(), size.float().contiguous(), pix)


def extract_patches(video: torch.Tensor, geo: PyramidGeometry, boxes: Boxes) -> torch.Tensor:
    """(B, C, *target) → (B, L, C, *patch): each level's patch as an exact crop of its level video."""
    levels = level_videos(video, geo)
    patches = [crop(v, boxes.pixel[:, lvl], geo.patch) for lvl, v in enumerate(levels)]
    return torch.stack(patches, dim=1)


# ---------------------------------------------------------------------------------------------
# Coordinates shared by deep context fusion and tiling


def token_grid(patch: Sequence[int], cube: Sequence[int]) -> tuple[int, int, int]:
    return tuple(p // c for p, c in zip(patch, cube))


def token_centres(grid: Sequence[int], device=None) -> torch.Tensor:
    """(n_f, n_h, n_w, 3) centres of a patch's tokens in the patch's own [0,1] frame."""
    axes = [(torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n for n in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def absolute_coords(offset: torch.Tensor, size: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Token centres in whole-video coordinates: (..., 3) boxes → (..., N_tokens, 3)."""
    u = token_centres(grid, offset.device).reshape(-1, 3)  # (N, 3)
    return offset[..., None, :] + size[..., None, :] * u


def relative_grid(
    tgt_offset: torch.Tensor,
    tgt_size: torch.Tensor,
    src_offset: torch.Tensor,
    src_size: torch.Tensor,
    grid: Sequence[int],
) -> torch.Tensor:
    """`F.grid_sample` grid that reads a source patch at the target patch's token centres (paper eq. 8).

    Boxes (..., 3) → (..., n_f, n_h, n_w, 3) in grid_sample's (x, y, z) = (w, h, f) order,
    normalised for `align_corners=False` (−1/+1 are the outer edges of the source patch).
    """
    u = token_centres(grid, tgt_offset.device)  # (nf, nh, nw, 3)
    shape = tgt_offset.shape[:-1] + (1, 1, 1, 3)
    rel_scale = (tgt_size / src_size).reshape(shape)
    rel_offset = ((tgt_offset - src_offset) / src_size).reshape(shape)
    src_u = rel_offset + rel_scale * u
    return (2 * src_u - 1).flip(-1)


# ---------------------------------------------------------------------------------------------
# Tiling for inference


def tile_starts(canvas: int, patch: int, stride: int) -> list[int]:
    """Start positions of tiles covering [0, canvas); the end tile is shifted inward."""
    if canvas <= patch:
        return [0]
    starts = list(range(0, canvas - patch + 1, stride))
    if starts[-1] + patch < canvas:
        starts.append(canvas - patch)
    return starts


OVERLAPPED = {"none": (False, False, False), "spatial": (False, True, True), "full": (True, True, True)}


def tile_strides(
    patch: Sequence[int], overlap: str, stride: int | Sequence[int] | None = None
) -> tuple[int, ...]:
    """Per-axis tile stride: the patch on the axes `overlap` leaves alone; on the overlapped ones
    half the patch, or `stride` (one value for every overlapped axis, or one per axis)."""
    per = [stride] * 3 if stride is None or isinstance(stride, int) else list(stride)
    out = tuple(
        (max(1, p // 2) if st is None else int(st)) if o else p
        for p, o, st in zip(patch, OVERLAPPED[overlap], per)
    )
    if any(not 1 <= st <= p for st, p in zip(out, patch)):
        raise ValueError(
            f"tile stride {list(out)} would leave gaps or stall: each must be in 1..patch {list(patch)}"
        )
    return out


def tile_offsets(
    canvas: Sequence[int], patch: Sequence[int], overlap: str, stride: int | Sequence[int] | None = None
) -> torch.Tensor:
    """(T, 3) integer offsets of tiles covering a canvas; overlap none | spatial | full, with the
    overlapped axes' stride half the patch unless `stride` says otherwise (`tile_strides`)."""
    strides = tile_strides(patch, overlap, stride)
    per_axis = [tile_starts(c, p, st) for c, p, st in zip(canvas, patch, strides)]
    grids = torch.meshgrid(*[torch.tensor(s) for s in per_axis], indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=-1)


def context_offsets(
    geo: PyramidGeometry, level: int, tile_pixel: torch.Tensor, coarse_level: int
) -> torch.Tensor:
    """Pixel offsets (T, 3) on `coarse_level`'s grid of the patch-sized crop that contains each tile.

    The crop is centred on the tile and clamped to the coarse video (DESIGN §5).
    """
    V_fine = torch.tensor(geo.level_sizes[level], dtype=torch.float64)
    V_coarse = torch.tensor(geo.level_sizes[coarse_level], dtype=torch.float64)
    r = torch.tensor(geo.patch, dtype=torch.float64)
    q = V_coarse / V_fine
    centre = (tile_pixel.double() + r / 2) * q
    start = torch.floor(centre - r / 2 + 1e-9)
    # Keep the tile inside the crop: flooring the centred start can cut off a tile whose coarse
    # extent is a fraction of a pixel (e.g. r = 1 on a pyramided axis); the range is never empty.
    lo = torch.ceil((tile_pixel.double() + r) * q - r - 1e-9).clamp(min=0)
    hi = torch.floor(tile_pixel.double() * q + 1e-9).clamp(max=V_coarse - r)
    return torch.minimum(torch.maximum(start, lo), hi).long()


def paste_add(
    canvas: torch.Tensor, tiles: torch.Tensor, offsets: torch.Tensor, index: torch.Tensor
) -> torch.Tensor:
    """Inverse of `crop`: add tiles (N, C, *size) into canvas (B, C, F, H, W) at integer offsets, in place."""
    size = tiles.shape[-3:]
    dev = canvas.device
    offsets = offsets.to(dev).long()
    f = offsets[:, 0, None] + torch.arange(size[0], device=dev)
    h = offsets[:, 1, None] + torch.arange(size[1], device=dev)
    w = offsets[:, 2, None] + torch.arange(size[2], device=dev)
    bfhw = torch.broadcast_tensors(
        index.to(dev)[:, None, None, None], f[:, :, None, None], h[:, None, :, None], w[:, None, None, :]
    )
    # (B, F, H, W, C) view of the canvas, so index_put_ writes through to it
    canvas.permute(0, 2, 3, 4, 1).index_put_(bfhw, tiles.permute(0, 2, 3, 4, 1), accumulate=True)
    return canvas
