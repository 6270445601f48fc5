"""EDM preconditioning with per-level input scaling, σ sampling and the loss."""

from __future__ import annotations

import math

import pytest
import torch

from hpdm.config import ConfigError, DiffusionConfig, load_config
from hpdm.diffusion import Diffusion, edm_coefficients, input_scales
from hpdm.model.hpdm import HPDM
from hpdm.pyramid import Boxes, PyramidGeometry, sample_boxes

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = PyramidGeometry((2, 8, 8), (4, 32, 32), 3)  # time pyramided only at the last level
ALL_AXES = PyramidGeometry((4, 8, 8), (16, 32, 32), 3)
TIME_WHOLE = PyramidGeometry((4, 8, 8), (4, 32, 32), 3)


def test_edm_coefficients_closed_forms():
    sd = 0.5
    for s in (0.002, 0.1, 0.5, 1.0, 3.0, 80.0):
        sigma = torch.tensor(s, dtype=torch.float64)
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, sd)
        assert c_skip.item() == pytest.approx(sd**2 / (s**2 + sd**2), rel=1e-12)
        assert c_out.item() == pytest.approx(s * sd / math.sqrt(s**2 + sd**2), rel=1e-12)
        assert c_in.item() == pytest.approx(1 / math.sqrt(s**2 + sd**2), rel=1e-12)
        assert c_noise.item() == pytest.approx(math.log(s) / 4, rel=1e-12, abs=1e-15)
    # broadcasting (B, L) σ against a per-level (L,) data std
    sigma = torch.tensor([[0.1, 1.0, 10.0]])
    sds = torch.tensor([0.5, 0.25, 0.125])
    c_skip, *_ = edm_coefficients(sigma, sds)
    torch.testing.assert_close(c_skip, sds**2 / (sigma**2 + sds**2))


@pytest.mark.parametrize("geo, factor", [(ALL_AXES, 2**1.5), (TIME_WHOLE, 2.0)])
def test_input_scales_follow_voxel_rule(geo, factor):
    cfg = DiffusionConfig(sigma_in0=1.5)
    scales = input_scales(cfg, geo)
    assert scales == pytest.approx([1.5, 1.5 * factor, 1.5 * factor**2], rel=1e-12)


def test_input_scales_tiny_and_explicit_factor():
    # tiny: level 1 doubles h and w (×2), level 2 also doubles time (×2^1.5)
    assert input_scales(DiffusionConfig(sigma_in0=1.0), TINY) == pytest.approx([1.0, 2.0, 2.0 * 2**1.5])
    cfg = DiffusionConfig(sigma_in0=2.0, sigma_in_factor=1.25, sigma_data=0.5)
    assert input_scales(cfg, TINY) == pytest.approx([2.0, 2.5, 3.125])
    diff = Diffusion(cfg, TINY)
    torch.testing.assert_close(diff.sigma_data, torch.tensor([0.25, 0.2, 0.16]))  # σ_data / σ_in,ℓ


def _boxes(B, L):
    return Boxes(torch.zeros(B, L, 3), torch.ones(B, L, 3))


def test_denoise_preconditioning_and_small_sigma_limit():
    diff = Diffusion(DiffusionConfig(sigma_in0=1.0), TINY)
    B, L = 2, 3
    g = torch.Generator().manual_seed(0)
    y = torch.randn(B, L, 3, 2, 8, 8, generator=g)
    seen = {}

    def net(x_in, c_noise, boxes, labels=None, text=None):
        seen["x_in"], seen["c_noise"] = x_in, c_noise
        return torch.tanh(torch.randn(x_in.shape, generator=g)) * 3  # any bounded output

    sigma = torch.tensor([[0.3, 1.0, 4.0], [2.0, 0.05, 0.7]])
    D = diff.denoise(net, y, sigma, _boxes(B, L))
    sd = diff.sigma_data[None, :]
    c_in = 1 / (sigma**2 + sd**2).sqrt()
    torch.testing.assert_close(seen["x_in"], c_in[..., None, None, None, None] * y)
    torch.testing.assert_close(seen["c_noise"], sigma.log() / 4)
    assert D.shape == y.shape

    tiny_sigma = torch.full((B, L), 1e-4)
    D = diff.denoise(net, y, tiny_sigma, _boxes(B, L))
    assert (D - y).abs().max() < 4e-4  # c_skip → 1, c_out ≈ σ: D(y; σ → 0) = y
    assert (diff.denoise(net, y, torch.full((B, L), 1e-2), _boxes(B, L)) - y).abs().max() > 1e-3


def test_loss_is_edm_weighted():
    """λ(σ)·|D − y|² equals the unit-weight MSE of F against its target (y − c_skip·ỹ) / c_out."""
    diff = Diffusion(DiffusionConfig(sigma_in0=1.0, cond_drop=0.0), TINY)
    B, L = 4, 3
    g = torch.Generator().manual_seed(1)
    x = torch.rand(B, L, 3, 2, 8, 8, generator=g) * 2 - 1
    seen = {}

    def net(x_in, c_noise, boxes, labels=None, text=None):
        seen["x_in"] = x_in
        seen["F"] = torch.randn(x_in.shape, generator=g) * 0.5
        return seen["F"]

    loss, per, sigma = diff.loss(net, x, _boxes(B, L), generator=torch.Generator().manual_seed(2))
    assert per.shape == sigma.shape == (B, L)
    e = (...,) + (None,) * 4
    y = x / diff.sigma_in[None, :, None, None, None, None]
    sd = diff.sigma_data[None, :]
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
    c_in = 1 / (sigma**2 + sd**2).sqrt()
    noisy = seen["x_in"] / c_in[e]
    assert (noisy - y).abs().mean() > 0.01  # the network saw noise
    target = (y - c_skip[e] * noisy) / c_out[e]
    want = ((seen["F"] - target) ** 2).flatten(2).mean(-1)  # (B, L)
    torch.testing.assert_close(per, want, rtol=1e-4, atol=1e-5)
    weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
    D = c_skip[e] * noisy + c_out[e] * seen["F"]
    torch.testing.assert_close(per, weight * ((D - y) ** 2).flatten(2).mean(-1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss, per.mean(0).sum())  # summed over levels, mean over videos


def test_per_video_draws_are_the_videos_own_and_lognormal():
    """A list of generators (the trainer's, one per video): each video draws what it draws alone,
    whatever batch it is in, and the vectorised draw keeps σ ~ LogNormal(P_mean, P_std) per level,
    the drop rate and both clean-context targets."""
    cfg = DiffusionConfig(P_mean=[-1.2, -0.4, 0.4], P_std=[1.2, 1.0, 0.8], cond_drop=0.25, clean_context=0.5)
    diff, L = Diffusion(cfg, TINY), TINY.num_levels
    shape = (L, 3, *TINY.patch)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    batch = diff.draw(5, shape, gens(range(5)), "cpu")
    alone = diff.draw(1, shape, gens([3]), "cpu")
    for a, b in zip(batch, alone):
        assert torch.equal(a[3:4], b)
    assert not torch.equal(batch[1][0], batch[1][1])  # videos differ
    n = 6000
    sigma, noise, drop, keep = diff.draw(n, (1, 3, 1, 2, 2), gens(range(n)), "cpu")
    assert noise.std().item() == pytest.approx(1.0, abs=0.02)
    assert drop.float().mean().item() == pytest.approx(0.25, abs=0.02)
    assert torch.all(sigma > 0) and not keep[:, 0].all()
    ln = sigma[:, -1].log()  # the finest level is never given a clean context
    assert ln.mean().item() == pytest.approx(0.4, abs=0.04) and ln.std().item() == pytest.approx(
        0.8, abs=0.04
    )
    clean = torch.tensor([diff.context_sigma(cfg.clean_context_sigma, lvl) for lvl in range(L)])
    given = sigma == clean  # levels 0..target-1 of about half the videos
    assert given[:, 0].float().mean().item() == pytest.approx(0.5, abs=0.03)
    assert given[:, 1].float().mean().item() == pytest.approx(0.25, abs=0.03)  # target 2 half the time


def test_per_level_sigmas_are_independent():
    cfg = DiffusionConfig(P_mean=[-1.2, -0.4, 0.4], P_std=[1.2, 1.0, 0.8])
    diff = Diffusion(cfg, TINY)
    s = diff.sample_sigma(20000, torch.Generator().manual_seed(0))
    assert s.shape == (20000, 3) and torch.all(s > 0)
    ln = s.log()
    torch.testing.assert_close(ln.mean(0), torch.tensor([-1.2, -0.4, 0.4]), atol=0.04, rtol=0)
    torch.testing.assert_close(ln.std(0), torch.tensor([1.2, 1.0, 0.8]), atol=0.04, rtol=0)
    corr = torch.corrcoef(ln.T)
    assert (corr - torch.eye(3)).abs().max() < 0.05
    assert torch.all(s[:, 0] != s[:, 1]) and torch.all(s[:, 1] != s[:, 2])


def test_loss_noise_is_independent_per_level_and_labels_dropped():
    diff = Diffusion(DiffusionConfig(sigma_in0=1.0, cond_drop=0.5), TIME_WHOLE)
    B, L = 64, 3
    x = torch.zeros(B, L, 3, 4, 8, 8)
    seen = {}

    def net(x_in, c_noise, boxes, labels=None, text=None):
        seen["x_in"], seen["labels"] = x_in, labels
        return torch.zeros_like(x_in)

    labels = torch.arange(B) % 8
    _, _, sigma = diff.loss(
        net, x, _boxes(B, L), labels=labels, generator=torch.Generator().manual_seed(0), null_class=8
    )
    assert torch.all(sigma[:, 0] != sigma[:, 1])
    noise = seen["x_in"] / (sigma / (sigma**2 + diff.sigma_data**2).sqrt())[..., None, None, None, None]
    assert noise.std().item() == pytest.approx(1.0, abs=0.02)  # x = 0: the input is pure unit noise
    assert (noise[:, 0] - noise[:, 1]).abs().mean() > 0.5  # each level draws its own noise
    kept = seen["labels"] == labels
    assert torch.all(seen["labels"][~kept] == 8)  # dropped labels become the null class
    assert 0.3 < (~kept).float().mean().item() < 0.7


def test_clean_context_gives_coarse_levels_the_sampling_context_noise_and_no_loss(perturbed):
    """`diffusion.clean_context`: a chosen video's levels coarser than a random target level l >= 1
    get σ = clean_context_sigma and no loss, like finished levels at sampling; the other draws are
    those of the plain run (drawn last), and p = 0 is the paper's independent σ per level."""
    cfg = load_config("tiny", ["diffusion.clean_context=1.0", "diffusion.clean_context_sigma=0.05"])
    plain_cfg = load_config("tiny")
    geo = PyramidGeometry(cfg.pyramid.patch, cfg.pyramid.target, cfg.pyramid.num_levels)
    L, B = geo.num_levels, 64
    shape = (L, 3, *geo.patch)
    gens = lambda: [torch.Generator().manual_seed(s) for s in range(B)]  # noqa: E731
    sigma, noise, drop, keep = Diffusion(cfg.diffusion, geo).draw(B, shape, gens(), "cpu")
    p_sigma, p_noise, p_drop, p_keep = Diffusion(plain_cfg.diffusion, geo).draw(B, shape, gens(), "cpu")
    assert p_keep.all() and torch.equal(noise, p_noise) and torch.equal(drop, p_drop)
    assert not keep[:, 0].any() and keep[:, -1].all()  # level 0 is always given, the finest never
    given = ~keep
    sigma_in = Diffusion(cfg.diffusion, geo).sigma_in
    assert torch.equal(sigma * sigma_in, torch.where(given, 0.05, sigma * sigma_in))  # pixel noise 0.05
    assert torch.equal(sigma[keep], p_sigma[keep])
    # given levels are a prefix: 0..l-1; both targets (1 and 2) occur
    targets = keep.int().argmax(1)
    assert torch.equal(given, torch.arange(L)[None] < targets[:, None])
    assert set(targets.tolist()) == set(range(1, L))

    # the loss leaves the given levels out; the per-level values still report them
    model = perturbed(HPDM(cfg))
    x = torch.rand(B, *shape) * 2 - 1
    boxes = sample_boxes(geo, B, torch.Generator().manual_seed(0))
    labels = torch.zeros(B, dtype=torch.long)
    diff = Diffusion(cfg.diffusion, geo)
    loss, per, sig = diff.loss(model, x, boxes, labels, generator=gens(), null_class=8)
    torch.testing.assert_close(loss, (per * keep).mean(0).sum())
    assert torch.equal(sig, sigma) and (per[given] > 0).all()
    with pytest.raises(ConfigError, match="clean_context"):
        load_config("tiny", ["diffusion.clean_context=1.5"])


def test_level_weight_scales_each_levels_loss(perturbed):
    """`diffusion.level_weight`: the loss is Σ_l w_l · mean over videos of level l's loss, with the
    same draws as the unweighted loss; weights must be one per level, >= 0 and not all zero."""
    cfg = load_config("tiny", ["diffusion.level_weight=[2.0,1.0,0.0]"])
    geo = PyramidGeometry(cfg.pyramid.patch, cfg.pyramid.target, cfg.pyramid.num_levels)
    B, L = 8, geo.num_levels
    model = perturbed(HPDM(cfg))
    x = torch.rand(B, L, 3, *geo.patch) * 2 - 1
    boxes = sample_boxes(geo, B, torch.Generator().manual_seed(0))
    labels = torch.zeros(B, dtype=torch.long)
    gens = lambda: [torch.Generator().manual_seed(s) for s in range(B)]  # noqa: E731
    args = (model, x, boxes, labels)
    loss, per, _ = Diffusion(cfg.diffusion, geo).loss(*args, generator=gens(), null_class=8)
    plain, p_per, _ = Diffusion(load_config("tiny").diffusion, geo).loss(
        *args, generator=gens(), null_class=8
    )
    torch.testing.assert_close(per, p_per)
    m = per.mean(0)
    torch.testing.assert_close(loss, 2 * m[0] + m[1])
    torch.testing.assert_close(plain, m.sum())
    for bad in ("[1.0,1.0]", "[-1.0,1.0,1.0]", "0.0"):
        with pytest.raises(ConfigError, match="level_weight"):
            load_config("tiny", [f"diffusion.level_weight={bad}"])


def test_rescale_moves_a_video_between_levels_scaled_spaces():
    from hpdm.config import load_config
    from hpdm.pyramid import PyramidGeometry

    cfg = load_config("demo")
    geo = PyramidGeometry(cfg.pyramid.patch, cfg.pyramid.target, cfg.pyramid.num_levels)
    d = Diffusion(cfg.diffusion, geo)
    x = torch.randn(1, 3, 2, 4, 4)  # pixels / σ_in,0
    y = d.rescale(x, 0, 2)
    assert torch.allclose(y * d.sigma_in[2], x * d.sigma_in[0])  # the same pixels
    assert torch.allclose(d.rescale(y, 2, 0), x)


def test_context_noise_is_pixel_noise_at_every_input_scale():
    """`diffusion.context_space=data` (default): a context σ is the std of the noise on the pixels,
    so in level ℓ's scaled space it is σ / σ_in,ℓ (the same signal-to-noise at every input
    scale); `scaled` keeps the value in every level's scaled space (configs before issue 29)."""
    geo = ALL_AXES
    data = Diffusion(DiffusionConfig(sigma_in0=4.0), geo)  # the UCF presets' input scales
    assert [data.context_sigma(0.05, lvl) for lvl in range(3)] == pytest.approx(
        [0.0125, 0.05 / 4 / 2**1.5, 0.05 / 32]
    )
    scaled = Diffusion(DiffusionConfig(sigma_in0=4.0, context_space="scaled"), geo)
    assert [scaled.context_sigma(0.05, lvl) for lvl in range(3)] == [0.05] * 3
    assert data.context_sigma(0.0, 0) == pytest.approx(1e-3 / 4)  # kept above 0: c_noise is ln(σ)/4
    with pytest.raises(ConfigError, match="context_space"):
        load_config("tiny", ["diffusion.context_space=pixels"])
