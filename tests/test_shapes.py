"""The embedded procedural dataset `shapes`: determinism, resolution consistency, content."""

import pytest
import torch
import torch.nn.functional as F

from hpdm.data import shapes
from hpdm.data.shapes import (
    NUM_CLASSES,
    SHAPES_CLASSES,
    ShapesDataset,
    caption,
    captions,
    render,
    render_shapes,
    sample_params,
)


def _params_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_public_constants():
    assert NUM_CLASSES == len(SHAPES_CLASSES) >= 8
    assert len(set(SHAPES_CLASSES)) == NUM_CLASSES
    colours = {name.split()[0] for name in SHAPES_CLASSES}
    kinds = {name.split()[1] for name in SHAPES_CLASSES}
    assert len(colours) == len(kinds) == NUM_CLASSES  # every class differs in shape AND colour


def test_deterministic_per_seed():
    a = sample_params([0, 5, 9], seed=3)
    b = sample_params(torch.tensor([0, 5, 9]), seed=3)
    assert _params_equal(a, b)
    assert torch.equal(render(a, 4, 32, 32), render(b, 4, 32, 32))
    assert captions(a) == captions(b)

    c = sample_params([0, 5, 9], seed=4)
    assert not torch.equal(a["pos0"], c["pos0"])
    assert not torch.equal(render(a, 4, 32, 32), render(c, 4, 32, 32))
    # large seeds and indices hash fine too
    d = sample_params([2**40 + 1], seed=2**50 + 7)
    assert 0 <= int(d["class_id"][0]) < NUM_CLASSES


def test_index_independence():
    both = sample_params([3, 7], seed=1)
    alone = sample_params([3], seed=1)
    assert all(torch.equal(both[k][:1], alone[k]) for k in both)
    torch.testing.assert_close(render(both, 4, 32, 32)[:1], render(alone, 4, 32, 32), atol=1e-5, rtol=0)
    assert caption(both, 0) == caption(alone, 0)


def test_shapes_and_range():
    params = sample_params(range(4), seed=0)
    for size in [(1, 16, 16), (3, 24, 40), (5, 64, 32)]:
        v = render(params, *size)
        assert v.shape == (4, 3, *size) and v.dtype == torch.float32
        assert v.min() >= -1 and v.max() <= 1
    assert render(params, 2, 16, 16, dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="positive"):
        render(params, 0, 16, 16)


def test_resolution_consistency():
    """2x area downsampling of a 2x render (in F, H, W) reproduces the 1x render."""
    params = sample_params(range(4), seed=5)
    small = render(params, 8, 64, 64)
    big = render(params, 16, 128, 128)
    # measured ~0.015: the residue is the shape moving between the two sub-frames (no motion blur)
    assert (F.avg_pool3d(big, 2) - small).abs().mean() < 0.03
    # in space alone textures are exact box averages and edges are 1-pixel ramps: measured ~7e-4
    big_space = render(params, 8, 128, 128)[:, :, ::4]
    assert (F.avg_pool3d(big_space, (1, 2, 2)) - small[:, :, ::4]).abs().mean() < 0.003


def test_captions_name_the_class():
    params = sample_params(range(40), seed=2)
    caps = captions(params)
    assert len(caps) == 40
    for i, text in enumerate(caps):
        assert SHAPES_CLASSES[int(params["class_id"][i])] in text
        assert any(w in text for w in ("stripes", "checkerboard", "plaid", "gradient"))
        assert any(c in text for c in shapes.TEXTURE_COLORS)
        assert " moves " in text and " over " in text
    assert len(set(caps)) > 30  # captions carry per-sample attributes, not just the class


def test_all_classes_and_backgrounds_appear():
    params = sample_params(range(300), seed=0)
    assert torch.bincount(params["class_id"], minlength=NUM_CLASSES).min() > 10
    assert torch.bincount(params["bg_type"], minlength=len(shapes.BACKGROUNDS)).min() > 20


def test_class_ids_override():
    free = sample_params(range(8), seed=0)
    forced = sample_params(range(8), seed=0, class_ids=list(range(8)))
    assert forced["class_id"].tolist() == list(range(8))
    assert torch.equal(free["pos0"], forced["pos0"]) and torch.equal(free["tex_freq"], forced["tex_freq"])
    with pytest.raises(ValueError, match="class_ids"):
        sample_params(range(3), class_ids=[0, 1])
    with pytest.raises(ValueError, match="class_ids"):
        sample_params(range(1), class_ids=[NUM_CLASSES])


def test_shape_is_visible_in_its_colour():
    params = sample_params(range(NUM_CLASSES), seed=0, class_ids=list(range(NUM_CLASSES)))
    video = (render(params, 2, 64, 64) + 1) / 2  # (B, 3, 2, 64, 64) in [0, 1]
    colour = params["shape_color"][:, :, None, None, None]
    near = ((video - colour).abs().amax(1) < 0.15).float().mean((1, 2, 3))  # fraction of pixels
    assert near.min() > 0.02, near  # a shape of radius >= 9 px covers several % of a 64 x 64 frame
    # ... and the muted background never looks like a class colour: hide the shape and re-check
    hidden = dict(params, size=torch.full_like(params["size"], 1e-3))
    background = (render(hidden, 2, 64, 64) + 1) / 2
    assert ((background - colour).abs().amax(1) < 0.15).float().mean() < 1e-3


def test_background_has_fine_texture():
    """Fine, frame-wide texture: an independently generated patch would leave a visible seam."""
    params = sample_params(range(64), seed=0)
    hidden = dict(params, size=torch.full_like(params["size"], 1e-3))
    v = render(hidden, 2, 64, 64)
    gx = (v[..., 1:] - v[..., :-1]).abs().mean((1, 2, 3, 4))
    gy = (v[..., 1:, :] - v[..., :-1, :]).abs().mean((1, 2, 3, 4))
    assert torch.maximum(gx, gy).min() > 0.015  # measured >= 0.023 (rippled gradients are the smoothest)


def test_render_shapes_and_dataset():
    video, labels, caps = render_shapes([1, 2, 3], 4, 32, 32, seed=7)
    assert video.shape == (3, 3, 4, 32, 32) and labels.dtype == torch.long and len(caps) == 3

    ds = ShapesDataset(num_samples=10, num_frames=4, height=32, width=32, seed=7)
    assert len(ds) == 10
    item = ds[2]
    assert set(item) == {"video", "label", "caption", "index"}
    assert item["video"].shape == (3, 4, 32, 32) and item["video"].dtype == torch.float32
    assert isinstance(item["label"], int) and isinstance(item["caption"], str) and item["index"] == 2
    torch.testing.assert_close(item["video"], video[1], atol=1e-5, rtol=0)
    assert item["label"] == int(labels[1]) and item["caption"] == caps[1]
    assert ds[-1]["index"] == 9

    batch = ds.get_batch([1, 2, 3])
    assert batch["video"].shape == (3, 3, 4, 32, 32)
    assert batch["label"].tolist() == labels.tolist() and batch["caption"] == caps
    assert batch["index"].dtype == torch.long and batch["index"].tolist() == [1, 2, 3]
    with pytest.raises(IndexError):
        ds[10]
    with pytest.raises(IndexError):
        ds.get_batch([0, 11])


def test_size_range():
    """`size_range` bounds the object's radius; every other parameter of an index stays as drawn."""
    base = sample_params(range(200), seed=3)
    big = sample_params(range(200), seed=3, size_range=(0.25, 0.3))
    assert base["size"].min() >= 0.14 and base["size"].max() <= 0.21
    assert big["size"].min() >= 0.25 and big["size"].max() <= 0.3
    u_base, u_big = (base["size"] - 0.14) / 0.07, (big["size"] - 0.25) / 0.05
    torch.testing.assert_close(u_base, u_big)  # the same draw, rescaled
    for k in ("class_id", "velocity", "angle0", "tex_freq", "bg_type"):
        assert torch.equal(base[k], big[k]), k
    # the centre stays inside the frame: the object never leaves it
    span = 1 - 2 * big["size"]
    assert (big["pos0"] >= 0).all() and (big["pos0"] <= span[:, None] + 1e-6).all()
    with pytest.raises(ValueError, match="size_range"):
        sample_params(range(2), size_range=(0.3, 0.2))
    # larger objects cover more of the frame, and the dataset passes the range through
    ds = ShapesDataset(4, 2, 32, 32, seed=1, size_range=(0.25, 0.3))
    video, _, _ = render_shapes(range(4), 2, 32, 32, seed=1, size_range=(0.25, 0.3))
    torch.testing.assert_close(ds.get_batch(range(4))["video"], video)
    from hpdm.config import load_config
    from hpdm.data import build_dataset

    built = build_dataset(load_config("tiny", ["data.shape_size=[0.25,0.3]"]))
    assert built.size_range == (0.25, 0.3)
