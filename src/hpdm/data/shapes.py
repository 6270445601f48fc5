"""`shapes`: the embedded procedural video dataset.

Every clip is one saturated, dark-outlined shape (its class: fixed shape + colour) that moves
with constant velocity, bounces off the frame borders and turns slowly, over a fine, muted,
slowly drifting background texture (stripes, checkerboard, plaid or a rippled gradient).

The scene is defined in continuous normalised coordinates — time t in [0, 1], space y, x in
[0, 1] — and only *sampled* by `render`, so a sample index is the same scene at any length
and resolution (frame i of F is at t = (i + 0.5) / F, pixel j of H at y = (j + 0.5) / H).
Everything is antialiased for the pixel size it is rendered at, so 2x area downsampling of a
2x render matches the 1x render (the pyramid builds its levels exactly that way):
  * textures are sums of plane waves, each attenuated by the sinc of the pixel box (and
    frame duration), which makes box-downsampling consistency exact for them;
  * shape edges use coverage = clamp(0.5 - sdf / pixel, 0, 1) on analytic SDFs.
Non-square renders stretch the unit square (the scene does not depend on aspect ratio).

Scene parameters come from a counter-based integer hash of (seed, index, field), so they are
deterministic and do not depend on which other indices share the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "SHAPES_CLASSES",
    "NUM_CLASSES",
    "CLASS_COLOURS",
    "TEXTURE_COLORS",
    "BACKGROUNDS",
    "SIZE_RANGE",
    "sample_params",
    "render",
    "caption",
    "captions",
    "render_shapes",
    "ShapesDataset",
]

# class id -> (colour name, shape name, RGB in [0, 1]); saturated so shapes pop off muted textures
_CLASSES: list[tuple[str, str, tuple[float, float, float]]] = [
    ("red", "circle", (0.95, 0.13, 0.10)),
    ("green", "square", (0.12, 0.82, 0.22)),
    ("blue", "triangle", (0.22, 0.45, 1.00)),
    ("yellow", "star", (1.00, 0.90, 0.10)),
    ("magenta", "ring", (0.95, 0.22, 0.90)),
    ("cyan", "cross", (0.10, 0.90, 0.95)),
    ("orange", "hexagon", (1.00, 0.56, 0.05)),
    ("white", "heart", (0.98, 0.98, 0.98)),
]
SHAPES_CLASSES: list[str] = [f"{c} {s}" for c, s, _ in _CLASSES]
NUM_CLASSES: int = len(SHAPES_CLASSES)
CLASS_COLOURS: list[tuple[float, float, float]] = [c for _, _, c in _CLASSES]  # RGB in [0, 1]

# muted texture palette: name -> (light, dark); names deliberately differ from the shape colours
# so a caption's colour words are unambiguous
_PALETTE: list[tuple[str, tuple[float, float, float], tuple[float, float, float]]] = [
    ("slate", (0.50, 0.55, 0.63), (0.27, 0.30, 0.37)),
    ("teal", (0.40, 0.58, 0.56), (0.19, 0.32, 0.32)),
    ("olive", (0.56, 0.57, 0.38), (0.31, 0.32, 0.19)),
    ("brown", (0.60, 0.47, 0.36), (0.34, 0.25, 0.18)),
    ("plum", (0.56, 0.43, 0.57), (0.31, 0.22, 0.33)),
    ("grey", (0.58, 0.58, 0.58), (0.31, 0.31, 0.31)),
    ("sand", (0.70, 0.65, 0.52), (0.44, 0.40, 0.30)),
    ("rose", (0.66, 0.48, 0.51), (0.38, 0.25, 0.28)),
]
TEXTURE_COLORS: list[str] = [name for name, _, _ in _PALETTE]
BACKGROUNDS: list[str] = ["stripes", "checkerboard", "plaid", "gradient"]

_NUM_WAVES = 8  # plane waves per texture (checkerboard needs all 8)
SIZE_RANGE = (0.14, 0.21)  # default bounding radius of the object, fraction of the frame side
_OUTLINE = 0.015  # outline width in normalised units (~1 px at 64, ~4 px at 256)
_OUTLINE_RGB = (0.05, 0.05, 0.07)
_STRIPE_PERIOD = (1 / 20, 1 / 8)  # of the frame; 3.2..8 px at 64 px, so seams would show
_CHECKER_PERIOD = (1 / 14, 1 / 6)
_RIPPLE_PERIOD = (1 / 16, 1 / 8)

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


# ----------------------------------------------------------------------------- hashing


def _mul32(x: torch.Tensor | int, c: int) -> torch.Tensor | int:
    """(x * c) mod 2^32 for x < 2^32 without int64 overflow (split c into 16-bit halves)."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def _mix32(x: torch.Tensor | int) -> torch.Tensor | int:
    """`lowbias32` integer hash (C. Wellons): a bijection of [0, 2^32) with good avalanche."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _uniforms(seed: int, indices: torch.Tensor, num_fields: int) -> torch.Tensor:
    """Counter-based uniforms in [0, 1): (B, num_fields), a pure function of (seed, index, field)."""
    s = _mix32((seed & _M32) ^ _mix32(((seed >> 32) + _GOLDEN) & _M32))
    idx = indices.to(torch.int64)
    key = _mix32((_mix32((idx & _M32) ^ _mix32((idx >> 32) & _M32)) + s) & _M32)  # (B,)
    field = torch.arange(num_fields, dtype=torch.int64)
    h = _mix32((key[:, None] + _mix32(field * _GOLDEN & _M32)[None, :]) & _M32)
    h = _mix32(h ^ s)
    return (h >> 8).to(torch.float32) * (1.0 / (1 << 24))  # 24 bits: exact in float32


# ----------------------------------------------------------------------------- parameters


def _as_index_tensor(indices: torch.Tensor | Sequence[int] | int) -> torch.Tensor:
    idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
    if (idx < 0).any():
        raise ValueError(f"shapes: sample indices must be >= 0, got {idx[idx < 0].tolist()[:4]}")
    return idx


def _square_wave_terms(
    f: torch.Tensor, dirn: torch.Tensor, phase: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """Square-ish wave sin(th) + sin(3 th)/3, th = 2 pi f (dirn . p) + phase, as cos waves."""
    half_pi = math.pi / 2
    return [
        (f[:, None] * dirn, phase - half_pi, 1.0),
        (3 * f[:, None] * dirn, 3 * phase - half_pi, 1 / 3),
    ]


def sample_params(
    indices: torch.Tensor | Sequence[int],
    seed: int = 0,
    class_ids: torch.Tensor | Sequence[int] | None = None,
    size_range: tuple[float, float] = SIZE_RANGE,
) -> dict[str, torch.Tensor]:
    """Scene parameters for each sample index, deterministic in (seed, index).

    `class_ids` forces the class of each sample; every other parameter stays as drawn.
    `size_range` bounds the object's bounding radius (fraction of the frame side); the same index
    keeps its other parameters whatever the range. Returns a
    dict of tensors with leading dim B: `index`, `class_id` (long), `shape_color` (B, 3), `size`
    (bounding radius), `pos0` / `velocity` ((B, 2) as (x, y), normalised units and per clip; pos0
    is the unfolded start in [0, 1 - 2 size]), `angle0`, `spin` (rad, rad per clip), `bg_type`
    (index into BACKGROUNDS), `bg_palette` (B, 2) indices into TEXTURE_COLORS, `bg_color_a/b`,
    `tex_period`, `tex_angle`, `tex_freq` (B, M, 2), `tex_phase`, `tex_amp` (B, M), `tex_drift`
    (B, 2) and `grad` (B, 3). Slice every entry alike to take a sub-batch.
    """
    idx = _as_index_tensor(indices)
    B = idx.numel()
    # (B, 40): column k is field k, drawn in a fixed order and never reused, so adding a field at
    # the end keeps every existing scene unchanged
    u = _uniforms(seed, idx, 40)
    col = iter(range(u.shape[1]))
    U = lambda: u[:, next(col)]

    cls = (U() * NUM_CLASSES).long().clamp_max(NUM_CLASSES - 1)
    if class_ids is not None:
        forced = torch.as_tensor(class_ids, dtype=torch.int64).reshape(-1)
        if forced.numel() != B:
            raise ValueError(
                f"shapes: class_ids has {forced.numel()} entries for {B} indices; pass one per index"
            )
        if ((forced < 0) | (forced >= NUM_CLASSES)).any():
            raise ValueError(f"shapes: class_ids must be in [0, {NUM_CLASSES}), got {forced.tolist()}")
        cls = forced.clone()

    # shape: bounding radius, unfolded start position, velocity, rotation
    lo, hi = size_range
    if not 0 < lo <= hi < 0.5:
        raise ValueError(f"shapes: size_range must satisfy 0 < lo <= hi < 0.5, got {tuple(size_range)}")
    size = lo + (hi - lo) * U()  # default 9..13 px radius at 64 px
    span = 1 - 2 * size  # the centre lives in [size, 1 - size]
    pos0 = torch.stack([U(), U()], 1) * span[:, None]
    speed = 0.25 + 0.6 * U()  # frame widths per clip
    heading = 2 * math.pi * U()
    velocity = speed[:, None] * torch.stack([heading.cos(), heading.sin()], 1)
    angle0 = 0.8 * (U() - 0.5)
    spin = 2.4 * (U() - 0.5)  # rad per clip: slow enough to keep e.g. hearts upright-ish

    # background: type, colours, plane waves
    bg_type = (U() * len(BACKGROUNDS)).long().clamp_max(len(BACKGROUNDS) - 1)
    pal_a = (U() * len(_PALETTE)).long().clamp_max(len(_PALETTE) - 1)
    pal_b = (pal_a + 1 + (U() * (len(_PALETTE) - 1)).long().clamp_max(len(_PALETTE) - 2)) % len(_PALETTE)
    is_grad = bg_type == 3
    pal_b = torch.where(is_grad, pal_b, pal_a)  # gradients blend two hues, patterns use one
    light = torch.tensor([p[1] for p in _PALETTE])
    dark = torch.tensor([p[2] for p in _PALETTE])
    color_a, color_b = light[pal_a], dark[pal_b]

    def log_uniform(lo_hi: tuple[float, float], x: torch.Tensor) -> torch.Tensor:
        lo, hi = math.log(lo_hi[0]), math.log(lo_hi[1])
        return torch.exp(lo + (hi - lo) * x)

    u_period, u_angle, u_ph1, u_ph2 = U(), U(), U(), U()
    period = torch.where(
        bg_type == 1, log_uniform(_CHECKER_PERIOD, u_period), log_uniform(_STRIPE_PERIOD, u_period)
    )
    f = 1.0 / period
    tex_angle = math.pi * u_angle  # direction of the wave vector (stripes run perpendicular)
    n = torch.stack([tex_angle.cos(), tex_angle.sin()], 1)
    t = torch.stack([-tex_angle.sin(), tex_angle.cos()], 1)
    ph_u, ph_v = 2 * math.pi * u_ph1, 2 * math.pi * u_ph2

    freq = torch.zeros(B, _NUM_WAVES, 2)  # cycles per unit along (x, y)
    phase = torch.zeros(B, _NUM_WAVES)
    amp = torch.zeros(B, _NUM_WAVES)

    def put(j: int, mask: torch.Tensor, k: torch.Tensor, ph: torch.Tensor, a: torch.Tensor | float) -> None:
        freq[:, j] = torch.where(mask[:, None], k, freq[:, j])
        phase[:, j] = torch.where(mask, ph, phase[:, j])
        amp[:, j] = torch.where(mask, torch.as_tensor(a, dtype=torch.float32).expand(B), amp[:, j])

    # texture value = sum of waves, mixing the two colours at 0.5 + value; every pattern keeps
    # |value| <= 0.5 so the mix stays inside [0, 1]
    # stripes: one square-ish wave
    for j, (k, ph, w) in enumerate(_square_wave_terms(f, n, ph_u)):
        put(j, bg_type == 0, k, ph, 0.5 * w)
    # checkerboard: 0.5 sq(u) sq(v) = sum over harmonic pairs of products of sines, each product
    # sin a sin b = (cos(a - b) - cos(a + b)) / 2, i.e. two plane waves
    j = 0
    for i_h, w_i in ((1, 1.0), (3, 1 / 3)):
        for j_h, w_j in ((1, 1.0), (3, 1 / 3)):
            a = 0.5 * 0.5 * w_i * w_j
            ku, kv = i_h * f[:, None] * n, j_h * f[:, None] * t
            pu, pv = i_h * ph_u, j_h * ph_v
            put(j, bg_type == 1, ku - kv, pu - pv, a)
            put(j + 1, bg_type == 1, ku + kv, pu + pv + math.pi, a)
            j += 2
    # plaid: two crossing square-ish waves
    for j, (k, ph, w) in enumerate(_square_wave_terms(f, n, ph_u) + _square_wave_terms(f, t, ph_v)):
        put(j, bg_type == 2, k, ph, 0.25 * w)
    # rippled gradient: three random fine plane waves on top of a linear ramp
    for j in range(3):
        a_dir = 2 * math.pi * U()
        k = (1.0 / log_uniform(_RIPPLE_PERIOD, U()))[:, None] * torch.stack([a_dir.cos(), a_dir.sin()], 1)
        put(j, is_grad, k, 2 * math.pi * U(), 0.1)
    g_dir = 2 * math.pi * U()
    grad = torch.zeros(B, 3)  # mix = grad[0] + grad[1] (x - 0.5) + grad[2] (y - 0.5) + waves
    grad[:, 0] = 0.5
    grad[:, 1:] = 0.4 * torch.stack([g_dir.cos(), g_dir.sin()], 1) * is_grad[:, None]

    drift_dir, drift_speed = 2 * math.pi * U(), 0.06 * U()
    drift = drift_speed[:, None] * torch.stack([drift_dir.cos(), drift_dir.sin()], 1)

    return {
        "index": idx,
        "class_id": cls,
        "shape_color": torch.tensor([c[2] for c in _CLASSES])[cls],
        "size": size,
        "pos0": pos0,
        "velocity": velocity,
        "angle0": angle0,
        "spin": spin,
        "bg_type": bg_type,
        "bg_palette": torch.stack([pal_a, pal_b], 1),
        "bg_color_a": color_a,
        "bg_color_b": color_b,
        "tex_period": period,
        "tex_angle": tex_angle,
        "tex_freq": freq,
        "tex_phase": phase,
        "tex_amp": amp,
        "tex_drift": drift,
        "grad": grad,
    }


# ----------------------------------------------------------------------------- signed distances
# Inigo Quilez's 2-D SDFs, vectorised; local coords have y pointing *down* (image rows), shapes
# fit in the unit circle (the bounding radius `size` is their scale).


def _length(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(x * x + y * y)


def _sign(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, 1.0, -1.0)


def _sdf_circle(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _length(x, y) - 0.85


def _sdf_box(x: torch.Tensor, y: torch.Tensor, bx: float = 0.66, by: float = 0.66) -> torch.Tensor:
    qx, qy = x.abs() - bx, y.abs() - by
    return _length(qx.clamp_min(0), qy.clamp_min(0)) + torch.maximum(qx, qy).clamp_max(0)


def _sdf_triangle(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # equilateral, centroid at the origin, circumradius 1, pointing up on screen
    r, k = math.sqrt(3) / 2, math.sqrt(3)
    px, py = x.abs() - r, -y + r / k
    fold = px + k * py > 0
    px, py = torch.where(fold, (px - k * py) / 2, px), torch.where(fold, (-k * px - py) / 2, py)
    px = px - px.clamp(-2 * r, 0)
    return -_length(px, py) * _sign(py)


def _sdf_star(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r, rf = 1.0, 0.45
    k1x, k1y = 0.809016994375, -0.587785252292
    px, py = x.abs(), -y  # iq's formula has y up
    d = (k1x * px + k1y * py).clamp_min(0) * 2
    px, py = px - d * k1x, py - d * k1y
    d = (-k1x * px + k1y * py).clamp_min(0) * 2
    px, py = px + d * k1x, py - d * k1y
    px, py = px.abs(), py - r
    bax, bay = -rf * k1y, rf * k1x - 1.0
    h = ((px * bax + py * bay) / (bax * bax + bay * bay)).clamp(0, r)
    return _length(px - bax * h, py - bay * h) * _sign(py * bax - px * bay)


def _sdf_ring(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (_length(x, y) - 0.68).abs() - 0.24


def _sdf_cross(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    bx, by = 0.86, 0.28
    px, py = x.abs(), y.abs()
    swap = py > px
    px, py = torch.where(swap, py, px), torch.where(swap, px, py)
    qx, qy = px - bx, py - by
    k = torch.maximum(qx, qy)
    wx, wy = torch.where(k > 0, qx, by - px), torch.where(k > 0, qy, -k)
    return _sign(k) * _length(wx.clamp_min(0), wy.clamp_min(0))


def _sdf_hexagon(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r = 0.8  # inradius; circumradius 0.92
    kx, ky, kz = -0.866025404, 0.5, 0.577350269
    px, py = x.abs(), y.abs()
    d = (kx * px + ky * py).clamp_max(0) * 2
    px, py = px - d * kx, py - d * ky
    px, py = px - px.clamp(-kz * r, kz * r), py - r
    return _length(px, py) * _sign(py)


def _sdf_heart(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    s = 0.68  # iq's heart spans ~1.2 x 1.1 with its tip at the origin; fit it in the unit circle
    px, py = x.abs() * s, -y * s + 0.55
    top = torch.sqrt((px - 0.25) ** 2 + (py - 0.75) ** 2) - math.sqrt(2) / 4
    m = (px + py).clamp_min(0) * 0.5
    low = torch.sqrt(torch.minimum(px**2 + (py - 1) ** 2, (px - m) ** 2 + (py - m) ** 2)) * _sign(px - py)
    return torch.where(px + py > 1, top, low) / s


_SDFS = [_sdf_circle, _sdf_box, _sdf_triangle, _sdf_star, _sdf_ring, _sdf_cross, _sdf_hexagon, _sdf_heart]
assert len(_SDFS) == NUM_CLASSES


# ----------------------------------------------------------------------------- rendering


def _bounce(p0: torch.Tensor, v: torch.Tensor, span: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Closed-form reflection in [0, span]: triangle wave of the unfolded p0 + v t. (B,) x (F,) -> (B, F)."""
    s = (p0[:, None] + v[:, None] * t[None, :]) / span[:, None]
    return span[:, None] * (1 - ((s % 2) - 1).abs())


def _render_chunk(p: dict[str, torch.Tensor], F: int, H: int, W: int) -> torch.Tensor:
    """Render one chunk in float32 colour [0, 1]: (b, 3, F, H, W)."""
    b, dev = p["class_id"].shape[0], p["size"].device
    t = (torch.arange(F, dtype=torch.float32, device=dev) + 0.5) / F
    ys = (torch.arange(H, dtype=torch.float32, device=dev) + 0.5) / H
    xs = (torch.arange(W, dtype=torch.float32, device=dev) + 0.5) / W

    # --- background: sum of box-prefiltered plane waves, separable as cos(a + c) = ca cc - sa sc
    # with a = a(x) and c = c(t, y), so the per-pixel work is one batched matmul over waves
    k, drift = p["tex_freq"], p["tex_drift"]  # (b, M, 2), (b, 2)
    kd = (k * drift[:, None, :]).sum(-1)  # (b, M) cycles per clip of phase drift
    # each pixel (and frame) is the exact box average of the continuous texture, like a camera
    # with full fill factor: that is what makes avg-pooling a 2x render reproduce the 1x render
    # (sinc(q) = sinc(q/2) cos(pi q/2)); waves finer than a pixel alias only as much as real
    # area downsampling would
    amp = p["tex_amp"] * torch.sinc(k[..., 0] / W) * torch.sinc(k[..., 1] / H) * torch.sinc(kd / F)
    a = 2 * math.pi * k[..., 0, None] * xs  # (b, M, W)
    c = (
        2 * math.pi * (k[..., 1, None, None] * ys - kd[..., None, None] * t[:, None])
        + p["tex_phase"][..., None, None]
    )  # (b, M, F, H)
    c = c.reshape(b, -1, F * H).transpose(1, 2)  # (b, F*H, M)
    lhs = torch.cat([c.cos(), -c.sin()], 2)  # (b, F*H, 2M)
    rhs = torch.cat([amp[..., None] * a.cos(), amp[..., None] * a.sin()], 1)  # (b, 2M, W)
    g = p["grad"]
    m = torch.bmm(lhs, rhs).view(b, F, H, W)
    m = m + (g[:, 0, None, None, None] + g[:, 1, None, None, None] * (xs - 0.5))
    m = m + g[:, 2, None, None, None] * (ys[:, None] - 0.5)
    m = m.clamp_(0, 1)
    ca, cb = p["bg_color_a"], p["bg_color_b"]
    img = ca[:, :, None, None, None] + (cb - ca)[:, :, None, None, None] * m[:, None]  # (b, 3, F, H, W)

    # --- shape: position by reflection, local coordinates, SDF per class
    size = p["size"]
    span = 1 - 2 * size
    cx = size[:, None] + _bounce(p["pos0"][:, 0], p["velocity"][:, 0], span, t)  # (b, F)
    cy = size[:, None] + _bounce(p["pos0"][:, 1], p["velocity"][:, 1], span, t)
    ang = p["angle0"][:, None] + p["spin"][:, None] * t  # (b, F); positive turns clockwise on screen
    cos_a, sin_a = ang.cos()[..., None, None], ang.sin()[..., None, None]
    inv = (1 / size)[:, None, None, None]
    dx = (xs - cx[..., None, None]) * inv  # (b, F, 1, W)
    dy = (ys[:, None] - cy[..., None, None]) * inv  # (b, F, H, 1)
    lx = cos_a * dx + sin_a * dy  # (b, F, H, W)
    ly = cos_a * dy - sin_a * dx
    sdf = torch.empty_like(lx)
    cls = p["class_id"]
    for ci in cls.unique().tolist():
        sel = (cls == ci).nonzero().squeeze(1)
        sdf[sel] = _SDFS[ci](lx[sel], ly[sel])
    sdf = sdf * size[:, None, None, None]  # back to normalised units

    # coverage with a ~1-pixel linear ramp at this resolution; the outline is a fixed width in
    # normalised units so the scene (not the pixel grid) decides how thick it is
    pix = max(1.0 / H, 1.0 / W)
    a_fill = (0.5 - sdf / pix).clamp_(0, 1)[:, None]
    a_line = (0.5 - (sdf - _OUTLINE) / pix).clamp_(0, 1)[:, None]
    shade = (1.08 - 0.14 * ly).clamp(0, 1.2)[:, None]  # gentle top-lit shading
    fill = (p["shape_color"][:, :, None, None, None] * shade).clamp_(0, 1)
    outline = torch.tensor(_OUTLINE_RGB, device=dev)[None, :, None, None, None]
    img = torch.lerp(img, outline.expand_as(img), a_line)
    img = torch.lerp(img, fill, a_fill)
    return img


def render(
    params: dict[str, torch.Tensor],
    num_frames: int,
    height: int,
    width: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Render scenes from `sample_params` at any size: (B, 3, F, H, W) in [-1, 1].

    Computed in float32 on `device` (default: the parameters' device; chunks over the batch bound
    memory) and cast to `dtype`.
    """
    if min(num_frames, height, width) < 1:
        raise ValueError(f"shapes.render: need positive sizes, got F={num_frames} H={height} W={width}")
    B = params["class_id"].shape[0]
    device = torch.device(device) if device is not None else params["size"].device
    out = torch.empty(B, 3, num_frames, height, width, dtype=dtype, device=device)
    # ~0.5M pixels a chunk: measured fastest on CPU; a GPU wants few large launches
    pixels = 1 << (24 if device.type == "cuda" else 19)
    chunk = max(1, pixels // (num_frames * height * width))
    for s in range(0, B, chunk):
        part = {key: v[s : s + chunk].to(device) for key, v in params.items()}
        out[s : s + chunk] = _render_chunk(part, num_frames, height, width).mul_(2).sub_(1).to(dtype)
    return out


# ----------------------------------------------------------------------------- captions

_DIRECTIONS = ["right", "up-right", "up", "up-left", "left", "down-left", "down", "down-right"]


def caption(params: dict[str, torch.Tensor], i: int, still: bool = False) -> str:
    """English caption of sample i, e.g. 'a red circle moves up-left over thin slate stripes';
    `still`: of its first frame as an image, 'a red circle over thin slate stripes'."""
    cls = int(params["class_id"][i])
    article = "an" if SHAPES_CLASSES[cls][0] in "aeiou" else "a"
    if still:
        return f"{article} {SHAPES_CLASSES[cls]} over {_background(params, i)}"
    vx, vy = (float(v) for v in params["velocity"][i])
    speed = math.hypot(vx, vy)
    sector = round(math.atan2(-vy, vx) / (math.pi / 4)) % 8  # image y points down
    adverb = "slowly " if speed < 0.38 else "quickly " if speed > 0.68 else ""
    text = f"{article} {SHAPES_CLASSES[cls]} moves {adverb}{_DIRECTIONS[sector]}"

    extras = []
    size = float(params["size"][i])
    span = 1 - 2 * size
    end = params["pos0"][i] + params["velocity"][i]
    if bool(((end < 0) | (end > span)).any()):
        extras.append("bounces off the edge")
    spin = float(params["spin"][i])
    if abs(spin) > 0.6:
        extras.append(f"turns {'clockwise' if spin > 0 else 'counterclockwise'}")
    if extras:
        text += ", " + " and ".join(extras) + ","
    return f"{text} over {_background(params, i)}"


def _background(params: dict[str, torch.Tensor], i: int) -> str:
    bg = int(params["bg_type"][i])
    name_a, name_b = (TEXTURE_COLORS[int(j)] for j in params["bg_palette"][i])
    period = float(params["tex_period"][i])
    if bg == 0:
        deg = math.degrees(float(params["tex_angle"][i])) % 180  # of the wave vector
        orient = (
            "vertical" if min(deg, 180 - deg) < 20 else "horizontal" if abs(deg - 90) < 20 else "diagonal"
        )
        thin = "thin " if period < 1 / 12 else ""
        bg_text = f"{thin}{orient} {name_a} stripes"
    elif bg == 1:
        bg_text = f"a {'fine ' if period < 1 / 9 else ''}{name_a} checkerboard"
    elif bg == 2:
        bg_text = f"a {name_a} plaid"
    else:
        bg_text = f"a rippled {name_a}-to-{name_b} gradient"
    return bg_text


def captions(params: dict[str, torch.Tensor], still: bool = False) -> list[str]:
    """Captions of every sample in `params` (`still`: of their first frames as images)."""
    return [caption(params, i, still) for i in range(params["class_id"].shape[0])]


# ----------------------------------------------------------------------------- convenience


def render_shapes(
    indices: torch.Tensor | Sequence[int],
    num_frames: int,
    height: int,
    width: int,
    seed: int = 0,
    class_ids: torch.Tensor | Sequence[int] | None = None,
    device: torch.device | str | None = None,
    size_range: tuple[float, float] = SIZE_RANGE,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Videos (B, 3, F, H, W) in [-1, 1] on `device` (default CPU), labels (B,) long and captions
    for sample indices."""
    params = sample_params(indices, seed, class_ids, size_range)
    video = render(params, num_frames, height, width, device=device)
    return video, params["class_id"].clone(), captions(params)


class ShapesDataset(torch.utils.data.Dataset):
    """`num_samples` clips of the procedural `shapes` data at a fixed size; index i is scene i.

    `device`: where videos are drawn (the training device under `data.render=device`; a GPU
    draws a batch in milliseconds, CPU loader workers in about 20 ms a clip each). `still`: an
    image source instead, scene i's first frame as a still video with a caption without motion
    (text-to-video's image stream, `data.images: shapes`)."""

    num_classes = NUM_CLASSES

    def __init__(
        self,
        num_samples: int,
        num_frames: int,
        height: int,
        width: int,
        seed: int = 0,
        size_range: tuple[float, float] = SIZE_RANGE,
        still: bool = False,
    ):
        if num_samples < 1:
            raise ValueError(f"ShapesDataset: num_samples must be >= 1, got {num_samples}")
        self.num_samples = num_samples
        self.size_range = tuple(size_range)
        self.num_frames, self.height, self.width = num_frames, height, width
        self.seed = seed
        self.still = still
        self.device = torch.device("cpu")

    def __len__(self) -> int:
        return self.num_samples

    def _check(self, indices: torch.Tensor) -> torch.Tensor:
        indices = torch.where(indices < 0, indices + self.num_samples, indices)
        if ((indices < 0) | (indices >= self.num_samples)).any():
            raise IndexError(f"ShapesDataset: index out of range for {self.num_samples} samples")
        return indices

    def __getitem__(self, i: int) -> dict:
        idx = self._check(torch.tensor([int(i)]))
        batch = self.get_batch(idx)
        return {
            "video": batch["video"][0],
            "label": int(batch["label"][0]),
            "caption": batch["caption"][0],
            "index": int(idx[0]),
        }

    def get_batch(self, indices: torch.Tensor | Sequence[int]) -> dict:
        """Vectorised batch: video (B, 3, F, H, W), label (B,), caption list, index (B,)."""
        idx = self._check(torch.as_tensor(indices, dtype=torch.int64).reshape(-1))
        params = sample_params(idx, self.seed, None, self.size_range)
        frames = 1 if self.still else self.num_frames
        video = render(params, frames, self.height, self.width, device=self.device)
        if self.still:
            video = video.expand(-1, -1, self.num_frames, -1, -1).contiguous()
        caps = captions(params, self.still)
        return {"video": video, "label": params["class_id"].clone(), "caption": caps, "index": idx}
