"""Pyramid geometry: nested boxes, exact crops, tiles, context crops and relative sampling grids."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hpdm.pyramid import (
    Boxes,
    PyramidGeometry,
    absolute_coords,
    context_offsets,
    extract_patches,
    level_videos,
    relative_grid,
    sample_boxes,
    tile_offsets,
    tile_strides,
    token_centres,
)

pytestmark = pytest.mark.usefixtures("single_thread")

# (patch, target, levels): the tiny preset, a non-pyramided time axis, every axis pyramided,
# odd-ish patch sizes, and four levels where time starts being pyramided late.
GEOMETRIES = [
    ((2, 8, 8), (4, 32, 32), 3),
    ((4, 8, 8), (4, 32, 32), 3),
    ((4, 8, 8), (16, 32, 32), 3),
    ((3, 6, 10), (6, 24, 40), 3),
    ((1, 4, 4), (4, 32, 32), 4),
]
IDS = ["tiny", "time-whole", "all-axes", "odd", "4-levels"]


@pytest.mark.parametrize("patch, target, L", GEOMETRIES, ids=IDS)
def test_level_sizes(patch, target, L):
    geo = PyramidGeometry(patch, target, L)
    sizes = geo.level_sizes
    assert sizes[-1] == target and sizes[0] == patch
    for lvl in range(1, L):
        for a in range(3):
            assert sizes[lvl][a] in (sizes[lvl - 1][a], 2 * sizes[lvl - 1][a])
            assert sizes[lvl][a] == max(patch[a], target[a] // 2 ** (L - 1 - lvl))
    assert geo.level_scales()[-1] == (1, 1, 1)


@pytest.mark.parametrize("patch, target, L", GEOMETRIES, ids=IDS)
def test_boxes_nested_inside_and_on_grid(patch, target, L):
    geo = PyramidGeometry(patch, target, L)
    B = 3000
    boxes = sample_boxes(geo, B, torch.Generator().manual_seed(1))
    V = torch.tensor(geo.level_sizes)  # (L, 3)
    r = torch.tensor(patch)
    pix, off, size = boxes.pixel, boxes.offset, boxes.size
    assert pix.shape == off.shape == size.shape == (B, L, 3)
    assert pix.dtype == torch.long

    # level 0 is the whole video
    assert torch.equal(pix[:, 0], torch.zeros(B, 3, dtype=torch.long))
    assert torch.equal(size[:, 0], torch.ones(B, 3))

    # normalised boxes are exactly the pixel boxes on each level's own grid
    assert torch.equal(off, (pix.double() / V.double()).float())
    assert torch.equal(size, (r.double() / V.double()).float().expand(B, L, 3))
    assert torch.all(off >= 0) and torch.all(off + size <= 1 + 1e-6)
    on_grid = off.double() * V.double()
    assert torch.allclose(on_grid, on_grid.round(), atol=1e-4)

    for lvl in range(1, L):
        ratio = V[lvl] // V[lvl - 1]
        parent = pix[:, lvl - 1] * ratio  # parent box in level-ℓ pixels: [parent, parent + r·ratio)
        rel = pix[:, lvl] - parent
        assert torch.all(rel >= 0) and torch.all(rel + r <= r * ratio), f"level {lvl} leaves its parent"
        assert torch.all(off[:, lvl] >= off[:, lvl - 1] - 1e-6)
        assert torch.all(off[:, lvl] + size[:, lvl] <= off[:, lvl - 1] + size[:, lvl - 1] + 1e-6)
        for a in range(3):
            if ratio[a] == 1:  # a non-pyramided axis stays where the parent is
                assert torch.all(rel[:, a] == 0)
            else:  # uniform over all r + 1 positions inside the parent: every one is reached
                assert set(rel[:, a].tolist()) == set(range(int(r[a]) + 1)), (lvl, a)
        if lvl == 1:
            for a in range(3):
                if V[1][a] == V[0][a]:  # not pyramided yet: whole, offset 0, size 1
                    assert torch.all(off[:, 1, a] == 0) and torch.all(size[:, 1, a] == 1)


def test_boxes_from_per_video_generators_are_each_videos_own():
    """The trainer's one generator per video: the vectorised draw gives every video the boxes a
    batch-of-one call with its generator gives, and a wrong generator count is refused."""
    geo = PyramidGeometry((4, 16, 16), (8, 64, 64), 3)
    gens = lambda: [torch.Generator().manual_seed(s) for s in range(6)]  # noqa: E731
    one = [sample_boxes(geo, 1, g) for g in gens()]
    many = sample_boxes(geo, 6, gens())
    for k in ("offset", "size", "pixel"):
        assert torch.equal(torch.cat([getattr(b, k) for b in one]), getattr(many, k))
    assert len({tuple(p.flatten().tolist()) for p in many.pixel}) > 1
    with pytest.raises(ValueError, match="generators"):
        sample_boxes(geo, 5, gens())


def test_time_axis_stays_whole_when_not_pyramided():
    geo = PyramidGeometry((4, 8, 8), (4, 32, 32), 3)
    boxes = sample_boxes(geo, 500, torch.Generator().manual_seed(0))
    assert torch.all(boxes.offset[..., 0] == 0) and torch.all(boxes.size[..., 0] == 1)
    assert torch.equal(boxes.size[0, :, 1], torch.tensor([1.0, 0.5, 0.25]))


def _dyadic_video(B, target, seed=0):
    # values k/64: every area average of up to 2^12 of them is exact in fp32, in any summation order,
    # so a one-shot avg_pool3d reference equals repeated 2x pooling bit for bit.
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-64, 65, (B, 3, *target), generator=g).float() / 64


@pytest.mark.parametrize("patch, target, L", GEOMETRIES, ids=IDS)
def test_patches_are_exact_crops_of_area_downsampled_video(patch, target, L):
    geo = PyramidGeometry(patch, target, L)
    B = 6
    video = _dyadic_video(B, target)
    boxes = sample_boxes(geo, B, torch.Generator().manual_seed(2))
    patches = extract_patches(video, geo, boxes)
    assert patches.shape == (B, L, 3, *patch)
    levels = level_videos(video, geo)
    for lvl in range(L):
        factor = tuple(t // v for t, v in zip(target, geo.level_sizes[lvl]))
        ref_video = F.avg_pool3d(video, kernel_size=factor, stride=factor)
        assert ref_video.shape[-3:] == geo.level_sizes[lvl]
        assert torch.equal(levels[lvl], ref_video)
        for b in range(B):
            f0, h0, w0 = boxes.pixel[b, lvl].tolist()
            ref = ref_video[b, :, f0 : f0 + patch[0], h0 : h0 + patch[1], w0 : w0 + patch[2]]
            assert torch.equal(patches[b, lvl], ref), (lvl, b)
    assert torch.equal(patches[:, 0], F.avg_pool3d(video, tuple(t // p for t, p in zip(target, patch))))


def test_level_videos_rejects_wrong_size():
    geo = PyramidGeometry((2, 8, 8), (4, 32, 32), 3)
    with pytest.raises(ValueError, match="pyramid target"):
        level_videos(torch.zeros(1, 3, 4, 32, 16), geo)


@pytest.mark.parametrize("canvas", [(5, 13, 17), (4, 32, 32), (2, 8, 8), (7, 9, 11), (3, 8, 20)])
@pytest.mark.parametrize("overlap", ["none", "spatial", "full"])
def test_tiles_cover_every_voxel(canvas, overlap):
    patch = (2, 4, 4)
    tiles = tile_offsets(canvas, patch, overlap)
    assert tiles.dtype == torch.long and tiles.shape[1] == 3
    assert torch.all(tiles >= 0) and torch.all(tiles + torch.tensor(patch) <= torch.tensor(canvas))
    assert len({tuple(t) for t in tiles.tolist()}) == len(tiles)  # no duplicate tiles
    count = torch.zeros(canvas, dtype=torch.int32)
    for f, h, w in tiles.tolist():
        count[f : f + patch[0], h : h + patch[1], w : w + patch[2]] += 1
    assert int(count.min()) >= 1


def test_tile_counts_and_strides():
    canvas, patch = (4, 32, 32), (2, 8, 8)
    counts = {m: len(tile_offsets(canvas, patch, m)) for m in ("none", "spatial", "full")}
    assert counts == {"none": 2 * 4 * 4, "spatial": 2 * 7 * 7, "full": 3 * 7 * 7}
    tiles = tile_offsets(canvas, patch, "none")  # an exact partition: every voxel exactly once
    count = torch.zeros(canvas, dtype=torch.int32)
    for f, h, w in tiles.tolist():
        count[f : f + 2, h : h + 8, w : w + 8] += 1
    assert torch.all(count == 1)
    # an odd canvas: the end tile is shifted inward, not dropped and not outside
    w_starts = sorted({t[2] for t in tile_offsets((2, 8, 13), (2, 8, 4), "spatial").tolist()})
    assert w_starts == [0, 2, 4, 6, 8, 9]


@pytest.mark.parametrize("canvas", [(4, 64, 64), (4, 128, 128), (5, 13, 17), (2, 40, 36)])
@pytest.mark.parametrize("stride", [18, 14, 9, 1, [2, 7, 18]])
def test_tile_stride_covers_every_voxel_and_sets_the_overlapped_axes(canvas, stride):
    patch = tuple(min(p, c) for p, c in zip((2, 32, 32), canvas))
    st = [min(v, p) for v, p in zip([stride] * 3 if isinstance(stride, int) else stride, patch)]
    tiles = tile_offsets(canvas, patch, "spatial", st)
    assert torch.all(tiles >= 0) and torch.all(tiles + torch.tensor(patch) <= torch.tensor(canvas))
    assert len({tuple(t) for t in tiles.tolist()}) == len(tiles)
    count = torch.zeros(canvas, dtype=torch.int32)
    for f, h, w in tiles.tolist():
        count[f : f + patch[0], h : h + patch[1], w : w + patch[2]] += 1
    assert int(count.min()) >= 1
    strides = tile_strides(patch, "spatial", st)
    assert strides[0] == patch[0]  # `spatial` leaves frames alone whatever the stride
    for a in (1, 2):  # consecutive starts step by the stride, except the end tile shifted inward
        starts = sorted({t[a] for t in tiles.tolist()})
        want = strides[a] if canvas[a] > patch[a] else None
        if want is not None:
            assert all(b - a_ == want for a_, b in zip(starts[:-2], starts[1:-1]))
            assert starts[-1] == canvas[a] - patch[a] and starts[-1] - starts[-2] <= want


def test_tile_stride_default_is_half_the_patch_and_dephases_token_grids():
    assert tile_strides((8, 32, 32), "spatial") == (8, 16, 16)
    assert tile_strides((8, 32, 32), "full") == (4, 16, 16)
    assert tile_strides((8, 32, 32), "none", 18) == (8, 32, 32)  # no overlap: the stride is ignored
    assert tile_strides((8, 32, 32), "full", [6, 18, 14]) == (6, 18, 14)
    with pytest.raises(ValueError, match="leave gaps"):
        tile_strides((8, 32, 32), "spatial", 33)
    assert torch.equal(
        tile_offsets((8, 128, 128), (8, 32, 32), "spatial", 16),
        tile_offsets((8, 128, 128), (8, 32, 32), "spatial"),
    )
    # with 4-pixel tokens, a stride of 18 puts neighbouring tiles' token edges 2 pixels apart
    starts = sorted({t[2] for t in tile_offsets((8, 128, 128), (8, 32, 32), "spatial", 18).tolist()})
    assert starts == [0, 18, 36, 54, 72, 90, 96]
    assert {s % 4 for s in starts} == {0, 2}


@pytest.mark.parametrize("patch, target, L", GEOMETRIES, ids=IDS)
def test_context_crop_contains_tile(patch, target, L):
    geo = PyramidGeometry(patch, target, L)
    r = torch.tensor(patch)
    g = torch.Generator().manual_seed(3)
    for lvl in range(1, L):
        Vl = torch.tensor(geo.level_sizes[lvl])
        tiles = torch.cat(
            [
                tile_offsets(geo.level_sizes[lvl], patch, "full"),
                (torch.rand(200, 3, generator=g) * (Vl - r + 1)).long(),  # arbitrary integer tile positions
            ]
        )
        for k in range(lvl):
            Vk = torch.tensor(geo.level_sizes[k])
            c = context_offsets(geo, lvl, tiles, k)
            assert c.dtype == torch.long and c.shape == tiles.shape
            assert torch.all(c >= 0) and torch.all(c + r <= Vk)  # inside the level-k video
            # [c, c + r) / Vk contains [t, t + r) / Vl, in exact integer arithmetic
            assert torch.all(c * Vl <= tiles * Vk), (lvl, k)
            assert torch.all((c + r) * Vl >= (tiles + r) * Vk), (lvl, k)
            # centred on the tile (within a coarse pixel) unless clamped at the video border
            centre_gap = ((c + r / 2) / Vk - (tiles + r / 2) / Vl).abs()
            free = (c > 0) & (c + r < Vk)
            assert torch.all(centre_gap[free] <= 1.0 / Vk.expand_as(c)[free] + 1e-9)


def test_context_crop_of_same_size_level_is_the_tile():
    geo = PyramidGeometry((4, 8, 8), (4, 32, 32), 3)
    tiles = tile_offsets(geo.level_sizes[2], geo.patch, "full")
    c = context_offsets(geo, 2, tiles, 1)
    assert torch.all(c[:, 0] == tiles[:, 0])  # time is not pyramided: the crop is the tile's frames


def test_relative_grid_of_identical_boxes_hits_token_centres():
    g = torch.Generator().manual_seed(4)
    grid = (2, 3, 5)
    B = 4
    x = torch.randn(B, 7, *grid, generator=g)
    size = torch.rand(B, 3, generator=g) * 0.5 + 0.1
    offset = torch.rand(B, 3, generator=g) * (1 - size)
    rg = relative_grid(offset, size, offset, size, grid)
    assert rg.shape == (B, *grid, 3)
    y = F.grid_sample(x, rg, mode="bilinear", padding_mode="border", align_corners=False)
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)


def test_relative_grid_reads_the_target_token_centres():
    """A source holding its own absolute token coordinates, sampled at a sub-box (paper eq. 8),
    gives the sub-box's absolute token coordinates (trilinear sampling of a linear field is exact)."""
    grid = (4, 4, 8)
    src_off, src_size = torch.tensor([[0.1, 0.2, 0.0]]), torch.tensor([[0.8, 0.6, 1.0]])
    tgt_size = src_size * torch.tensor([0.5, 0.5, 0.25])
    tgt_off = src_off + src_size * torch.tensor([0.25, 0.3, 0.4])
    src_coords = absolute_coords(src_off, src_size, grid).reshape(1, *grid, 3).permute(0, 4, 1, 2, 3)
    rg = relative_grid(tgt_off, tgt_size, src_off, src_size, grid)
    y = F.grid_sample(src_coords, rg, mode="bilinear", padding_mode="border", align_corners=False)
    want = absolute_coords(tgt_off, tgt_size, grid).reshape(1, *grid, 3).permute(0, 4, 1, 2, 3)
    torch.testing.assert_close(y, want, atol=1e-5, rtol=0)


def test_token_centres_and_boxes_on_a_level_grid():
    c = token_centres((2, 4, 4))
    assert c.shape == (2, 4, 4, 3)
    torch.testing.assert_close(c[1, 0, 3], torch.tensor([0.75, 0.125, 0.875]))
    boxes = Boxes.on_grid(torch.tensor([[0, 8, 24]]), (4, 32, 32), (2, 8, 8))
    assert torch.equal(boxes.offset, torch.tensor([[0.0, 0.25, 0.75]]))
    assert torch.equal(boxes.size, torch.tensor([[0.5, 0.25, 0.25]]))
    assert torch.equal(boxes.pixel, torch.tensor([[0, 8, 24]]))


def test_boxes_index_stack_and_cat_like_their_tensors():
    """One box type for training (B, L, 3), deep context fusion and tiling (T, 3)."""
    geo = PyramidGeometry((2, 8, 8), (4, 32, 32), 3)
    boxes = sample_boxes(geo, 5, torch.Generator().manual_seed(0))
    part = boxes[1:3, 1:]
    assert part.offset.shape == part.size.shape == part.pixel.shape == (2, 2, 3)
    assert torch.equal(part.pixel, boxes.pixel[1:3, 1:])
    stacked = Boxes.stack([boxes[:, 0], boxes[:, 2]], dim=1)
    assert torch.equal(stacked.offset, boxes.offset[:, [0, 2]])
    joined = Boxes.cat([boxes[:2], boxes[2:]])
    assert all(torch.equal(getattr(joined, k), getattr(boxes, k)) for k in ("offset", "size", "pixel"))
    assert Boxes.stack([boxes[:, 0], Boxes(boxes.offset[:, 1], boxes.size[:, 1])], 1).pixel is None
    assert len(boxes) == 5


def test_grown_axes_name_the_pyramided_axes_of_each_level():
    geo = PyramidGeometry((8, 32, 32), (16, 128, 128), 3)  # 8x32x32 -> 8x64x64 -> 16x128x128
    assert geo.grown_axes(1) == (False, True, True)
    assert geo.grown_axes(2) == (True, True, True)
