"""Samplers and the tiled cascade: closed-form checks, tiling invariants, caching, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from hpdm.config import ConfigError, load_config
from hpdm.diffusion import Diffusion, edm_coefficients
from hpdm.model.hpdm import HPDM
from hpdm.pyramid import Boxes, PyramidGeometry, paste_add, tile_offsets
from hpdm.sampling import (
    Cascade,
    Cond,
    Sampler,
    _Run,
    edm_sampler,
    karras_sigmas,
    level_steps,
    sample_level,
)


def perturbed_model(cfg, seed: int = 0) -> HPDM:
    torch.manual_seed(seed)
    model = HPDM(cfg)
    with torch.no_grad():  # zero/identity initial layers would hide bugs
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config("tiny")
    return cfg, perturbed_model(cfg)


# ---------------------------------------------------------------------------------------------
# Closed form: the optimal denoiser of Gaussian data N(0, s² I) is D(x; σ) = x · s² / (s² + σ²).


# Discretisation error shrinks with the step count (Heun: 1.08 at 32 steps, 1.005 at 128;
# Euler: 0.84 at 32, 0.96 at 128), so the closed-form checks use enough steps to be exact-ish.
@pytest.mark.parametrize("heun,churn,steps", [(True, 10.0, 128), (True, 0.0, 128), (False, 0.0, 256)])
def test_sampler_reproduces_gaussian_variance(heun, churn, steps):
    s = 0.7
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(64, 4096, generator=g)
    sigmas = karras_sigmas(steps, 0.002, 80.0, 7.0)
    out = edm_sampler(
        lambda x, sig: x * s**2 / (s**2 + sig**2),
        noise,
        sigmas,
        heun=heun,
        S_churn=churn,
        S_tmin=0.05,
        S_tmax=50.0,
        S_noise=1.0,
        randn=lambda: torch.randn(64, 4096, generator=g),
    )
    var = out.var().item()
    assert abs(var / s**2 - 1) < 0.03, var


class GaussianOracle(torch.nn.Module):
    """Stands in for HPDM: returns the F that makes D the optimal denoiser of N(0, s_ℓ² I)."""

    def __init__(self, model: HPDM, diffusion: Diffusion, data_std: float):
        super().__init__()
        self.inner = model
        self.diffusion = diffusion
        self.data_std = data_std
        self.null_class, self.context_bytes = model.null_class, model.context_bytes
        self.self_cond = None  # no latent self-conditioning

    def forward_level(self, x, c_noise, boxes, level, context, labels=None, text=None, latents=None):
        sigma = (4 * c_noise).exp()[:, None, None, None, None]
        sd = self.diffusion.sigma_data[level]
        s = self.data_std / self.diffusion.sigma_in[level]  # the data std in level ℓ's scaled space
        c_skip, c_out, c_in, _ = edm_coefficients(sigma, sd)
        y = x / c_in
        D = y * s**2 / (s**2 + sigma**2)
        return (D - c_skip * y) / c_out


def test_cascade_level0_with_optimal_denoiser_has_data_variance(tiny):
    cfg, model = tiny
    cfg = load_config("tiny", ["diffusion.sigma_in0=1.5"])
    geo = PyramidGeometry(cfg.pyramid.patch, cfg.pyramid.target, cfg.pyramid.num_levels)
    s = 0.5
    oracle = GaussianOracle(model, Diffusion(cfg.diffusion, geo), s)
    for sampler, steps in (("heun", 128), ("euler", 256)):
        cfg.sample.sampler0, cfg.sample.steps = sampler, steps
        cascade = Cascade(oracle, cfg, "cpu")  # the cascade only uses the network's interface
        plan = cascade.plan(geo, "none", None)[0]
        gens = [torch.Generator().manual_seed(i) for i in range(256)]
        run = _Run(geo, oracle.diffusion, Cond(None, None), gens, False)
        denoise = cascade.level_denoiser(plan, run, [], [], 1.0, "none")
        y = sample_level(plan, denoise, cascade._start(plan, run, []), cfg.sample, gens, False)
        x = y * oracle.diffusion.sigma_in[0]  # back to data space
        assert abs(x.var().item() / s**2 - 1) < 0.05, (sampler, x.var().item())


# ---------------------------------------------------------------------------------------------
# Tiling


@pytest.mark.parametrize("canvas", [(4, 16, 16), (5, 17, 23), (3, 9, 8)])
@pytest.mark.parametrize("overlap", ["none", "spatial", "full"])
def test_overlap_weights_sum_to_one_and_cover_every_voxel(canvas, overlap):
    patch = (2, 8, 8)
    tiles = tile_offsets(canvas, patch, overlap)
    idx = torch.zeros(len(tiles), dtype=torch.long)
    counts = paste_add(torch.zeros(1, 1, *canvas), torch.ones(len(tiles), 1, *patch), tiles, idx)
    assert counts.min() >= 1
    weights = paste_add(torch.zeros(1, 1, *canvas), torch.ones(len(tiles), 1, *patch), tiles, idx) / counts
    assert torch.allclose(weights, torch.ones_like(weights))
    assert (tiles + torch.tensor(patch) <= torch.tensor(canvas)).all()


def test_tiled_equals_untiled_when_canvas_is_one_tile(tiny):
    """With output size = patch every level is one tile: the cascade must equal a direct sampler."""
    cfg, model = tiny
    patch = tuple(cfg.pyramid.patch)
    gen = Sampler(model, cfg).generate(num=2, labels=[1, 5], size=patch, seed=3, cache="none", progress=False)
    geo = PyramidGeometry(patch, patch, cfg.pyramid.num_levels)
    diffusion = Diffusion(cfg.diffusion, geo)
    s = cfg.sample
    labels = torch.tensor([1, 5])
    gens = [torch.Generator().manual_seed(3 * 100_003 + i) for i in range(2)]
    off, size = torch.zeros(2, 1, 3), torch.ones(2, 1, 3)
    done, ctx = [], []
    for lvl in range(geo.num_levels):
        heun = (s.sampler0 if lvl == 0 else s.sampler) == "heun"

        def D(y, sigma, lvl=lvl):
            # the context noise is pixel noise (diffusion.context_space=data): σ / σ_in,k when scaled
            sig_c = [
                torch.tensor(max(s.context_sigma, 1e-3) / float(diffusion.sigma_in[k])) for k in range(lvl)
            ]
            sd = diffusion.sigma_data
            xs = [c * edm_coefficients(sig_c[k], sd[k])[2] for k, c in enumerate(ctx)]
            c_skip, c_out, c_in, c_noise = edm_coefficients(torch.tensor(sigma), sd[lvl])
            stack = torch.stack(xs + [c_in * y], dim=1)
            cn = torch.stack(
                [edm_coefficients(sig_c[k], sd[k])[3].expand(2) for k in range(lvl)] + [c_noise.expand(2)], 1
            )
            F = model(stack, cn, Boxes(off.expand(2, lvl + 1, 3), size.expand(2, lvl + 1, 3)), labels)[:, -1]
            return c_skip * y + c_out * F

        noise = torch.stack([torch.randn(3, *patch, generator=g) for g in gens])
        y = edm_sampler(
            D,
            noise,
            karras_sigmas(level_steps(s, lvl), s.sigma_min, s.sigma_max, s.rho),
            heun=heun,
            S_churn=s.S_churn if heun else 0.0,
            S_tmin=s.S_tmin,
            S_tmax=s.S_tmax,
            S_noise=s.S_noise,
            randn=lambda: torch.stack([torch.randn(3, *patch, generator=g) for g in gens]),
        )
        done.append(y)
        eps = torch.stack([torch.randn(3, *patch, generator=g) for g in gens])
        ctx.append(y + max(s.context_sigma, 1e-3) / float(diffusion.sigma_in[lvl]) * eps)
    for lvl in range(geo.num_levels):
        ref = (done[lvl] * diffusion.sigma_in[lvl]).clamp(-1, 1)
        torch.testing.assert_close(gen.levels[lvl], ref, atol=1e-5, rtol=1e-4)


def test_cached_and_uncached_sampling_agree(tiny):
    _, model = tiny
    cfg = load_config("tiny", ["sample.steps=3"])  # Heun: 5 evaluations reuse each level's context
    c = Sampler(model, cfg)
    a = c.generate(num=2, seed=1, cache="context", progress=False, guidance=1.5)
    b = c.generate(num=2, seed=1, cache="none", progress=False, guidance=1.5)
    for x, y in zip(a.levels, b.levels):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("size", [None, (4, 32, 64)])
def test_cached_and_uncached_sampling_agree_with_pixel_context(size):
    """`model.fusion=deep+pixels`, also at a size where level 0 is two tiles."""
    cfg = load_config("tiny", ["model.fusion=deep+pixels", "sample.steps=3"])
    c = Sampler(perturbed_model(cfg), cfg)
    a = c.generate(num=2, seed=1, size=size, cache="context", progress=False, guidance=1.5)
    b = c.generate(num=2, seed=1, size=size, cache="none", progress=False, guidance=1.5)
    if size:
        assert a.levels[0].shape[-1] == 2 * cfg.pyramid.patch[-1]
    for x, y in zip(a.levels, b.levels):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


def test_cache_falls_back_when_over_budget(tiny):
    cfg, model = tiny
    cfg = load_config("tiny", ["sample.cache_budget_mb=0"])
    a = Sampler(model, cfg).generate(num=1, seed=4, cache="context", progress=False)
    b = Sampler(model, cfg).generate(num=1, seed=4, cache="none", progress=False)
    torch.testing.assert_close(a.video, b.video, atol=1e-5, rtol=1e-4)


def test_same_seed_same_video_different_seed_differs(tiny):
    cfg, model = tiny
    c = Sampler(model, cfg)
    a = c.generate(num=2, seed=7, progress=False)
    b = c.generate(num=2, seed=7, progress=False)
    d = c.generate(num=2, seed=8, progress=False)
    assert torch.equal(a.video, b.video)
    assert (a.video - d.video).abs().mean() > 1e-3
    # a video depends on (seed, position), not on how many are generated with it
    one = c.generate(num=1, seed=7, progress=False)
    torch.testing.assert_close(one.video[0], a.video[0], atol=1e-5, rtol=1e-4)


def test_given_coarse_levels_are_kept_and_condition_the_finer_ones(tiny):
    cfg, model = tiny
    c = Sampler(model, cfg)
    ref = c.generate(num=2, seed=3, progress=False)
    low = ref.levels[0]
    other = torch.flip(low, dims=[-1])
    a = c.generate(num=2, seed=3, given=[low], progress=False)
    b = c.generate(num=2, seed=3, given=[low], progress=False)
    d = c.generate(num=2, seed=3, given=[other], progress=False)
    torch.testing.assert_close(a.levels[0], low, atol=1e-6, rtol=0)  # kept as given
    assert torch.equal(a.video, b.video)  # deterministic
    assert (a.video - d.video).abs().mean() > 1e-4  # the finer levels read the given level
    assert a.settings["given_levels"] == 1 and ref.settings["given_levels"] == 0
    two = c.generate(num=2, seed=3, given=a.levels[:2], progress=False)
    torch.testing.assert_close(two.levels[1], a.levels[1], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="given level 0 has shape"):
        c.generate(num=1, seed=3, given=[low], progress=False)
    with pytest.raises(ValueError, match="leave at least one to sample"):
        c.generate(num=2, seed=3, given=a.levels, progress=False)


def test_any_size_wider_than_training(tiny):
    cfg, model = tiny
    gen = Sampler(model, cfg).generate(num=1, size=(4, 32, 64), seed=0, progress=False)
    assert gen.video.shape == (1, 3, 4, 32, 64)
    assert [list(lv.shape[-3:]) for lv in gen.levels] == [[2, 8, 16], [2, 16, 32], [4, 32, 64]]
    assert gen.settings["levels"][2]["tiles"] > gen.settings["levels"][1]["tiles"]


def test_tile_stride_retiles_the_finer_levels_only(tiny):
    cfg, model = tiny
    size = (4, 32, 32)  # the training size: level 0 is one tile
    cfg3 = load_config("tiny", ["sample.tile_stride=3"])
    a = Sampler(model, cfg).generate(num=1, size=size, seed=0, progress=False)
    b = Sampler(model, cfg3).generate(num=1, size=size, seed=0, progress=False)
    geo = PyramidGeometry(cfg.pyramid.patch, size, cfg.pyramid.num_levels)
    for lvl, info in enumerate(b.settings["levels"]):
        want = tile_offsets(geo.level_sizes[lvl], cfg.pyramid.patch, "spatial", 3)
        assert info["tiles"] == len(want)
    assert b.settings["sample"]["tile_stride"] == 3
    assert b.settings["levels"][2]["tiles"] > a.settings["levels"][2]["tiles"]
    assert torch.equal(a.levels[0], b.levels[0])  # level 0 is one tile either way
    assert (a.video - b.video).abs().mean() > 1e-4


def test_pyramid_consistency_pulls_each_level_towards_the_coarser_one(tiny):
    from hpdm.pyramid import downsample2

    cfg, model = tiny
    geo = PyramidGeometry(cfg.pyramid.patch, cfg.pyramid.target, cfg.pyramid.num_levels)

    def miss(gen):  # mean |2x average of level l - level l-1| over the finer levels
        out = []
        for lvl in range(1, geo.num_levels):
            axes = [geo.level_sizes[lvl - 1][a] < geo.level_sizes[lvl][a] for a in range(3)]
            out.append(float((downsample2(gen.levels[lvl], axes) - gen.levels[lvl - 1]).abs().mean()))
        return out

    off = Sampler(model, cfg).generate(num=2, seed=3, progress=False)
    zero = Sampler(model, load_config("tiny", ["sample.consistency=0"])).generate(
        num=2, seed=3, progress=False
    )
    assert torch.equal(off.video, zero.video)
    on = Sampler(model, load_config("tiny", ["sample.consistency=1"])).generate(num=2, seed=3, progress=False)
    assert torch.equal(on.levels[0], off.levels[0])  # level 0 has no coarser level
    for m_on, m_off in zip(miss(on), miss(off)):
        assert m_on < 0.5 * m_off
    # only at σ >= consistency_sigma: above the schedule's top nothing changes
    late = load_config("tiny", ["sample.consistency=1", "sample.consistency_sigma=1000"])
    assert torch.equal(Sampler(model, late).generate(num=2, seed=3, progress=False).video, off.video)
    for bad in (["sample.consistency=1.5"], ["sample.consistency=-0.1"], ["sample.consistency_sigma=-1"]):
        with pytest.raises(ConfigError, match="sample.consistency"):
            load_config("tiny", bad)


def test_start_sigma_starts_finer_levels_from_the_upsampled_coarser_one(tiny):
    import torch.nn.functional as F

    cfg, model = tiny

    def gap(gen):  # mean |level l - trilinear up(level l-1)| over the finer levels
        return [
            float(
                (
                    gen.levels[lvl]
                    - F.interpolate(
                        gen.levels[lvl - 1],
                        size=gen.levels[lvl].shape[-3:],
                        mode="trilinear",
                        align_corners=False,
                    )
                )
                .abs()
                .mean()
            )
            for lvl in range(1, len(gen.levels))
        ]

    # a given level 0 inside [-1, 1], so that clamping the outputs does not enter the comparison
    low = [0.5 * torch.tanh(torch.randn(2, 3, 2, 8, 8, generator=torch.Generator().manual_seed(0)))]

    def run(*over):
        return Sampler(model, load_config("tiny", list(over))).generate(
            num=2, seed=3, given=low, progress=False
        )

    off = run()
    # just above sigma_min almost nothing is left to denoise: each finer level is its coarser one, upsampled
    near = run("sample.start_sigma=0.003")
    assert max(gap(near)) < 0.03 and min(gap(off)) > 0.1
    one = run("sample.start_sigma=[0,0.003,0]")  # per level: level 1 only
    assert gap(one)[0] < 0.03 and gap(one)[1] > 0.1
    mid = run("sample.start_sigma=1.0")
    assert max(gap(near)) < min(gap(mid)) and (mid.video - off.video).abs().mean() > 1e-3
    full = Sampler(model, load_config("tiny", ["sample.start_sigma=1.0"])).generate(
        num=2, seed=3, progress=False
    )
    assert torch.equal(full.levels[0], Sampler(model, cfg).generate(num=2, seed=3, progress=False).levels[0])
    bads = ["-1", "100", "0.001", "[0.5,0.5,0]", "[0,0.5]"]
    for bad in (["sample.start_sigma=" + b] for b in bads):
        with pytest.raises(ConfigError, match="sample.start_sigma"):
            load_config("tiny", bad)


def test_impossible_size_lists_valid_ones(tiny):
    cfg, model = tiny
    with pytest.raises(ConfigError, match=r"valid sizes near it: 4x32x64"):
        Sampler(model, cfg).generate(num=1, size=(4, 30, 64), progress=False)


def test_bad_class_id_is_a_clear_error(tiny):
    cfg, model = tiny
    with pytest.raises(ValueError, match="out of range"):
        Sampler(model, cfg).generate(num=1, labels=[8], progress=False)


def test_karras_schedule_endpoints():
    s = karras_sigmas(10, 0.002, 80.0, 7.0)
    assert len(s) == 11 and s[-1] == 0
    assert math.isclose(float(s[0]), 80.0) and math.isclose(float(s[-2]), 0.002, rel_tol=1e-9)
    assert (s[:-1][1:] < s[:-1][:-1]).all()


def test_guidance_per_level(tiny):
    """A list of guidance scales applies one per level: [2, 1, 1] guides level 0 exactly like a
    scale of 2 and leaves the finer levels unguided; a wrong length is a clear error."""
    cfg, model = tiny
    c = Sampler(model, cfg)
    every = c.generate(num=2, seed=3, progress=False, guidance=2.0)
    first = c.generate(num=2, seed=3, progress=False, guidance=[2.0, 1.0, 1.0])
    assert torch.equal(first.levels[0], every.levels[0])
    assert (first.levels[1] - every.levels[1]).abs().max() > 1e-4
    assert first.settings["guidance"] == [2.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="2 guidance scales for 3 levels"):
        c.generate(num=1, progress=False, guidance=[2.0, 1.0])
    with pytest.raises(ConfigError, match="one guidance scale per level"):
        load_config("tiny", ["sample.cfg=[2, 1]"])


def test_guidance_interval(tiny):
    """`sample.cfg_interval` guides only at σ in [lo, hi]: an interval holding every σ of the
    schedule is plain guidance, one holding none is no guidance (at the finer levels too, where
    the cached context was built for both branches and an unguided step takes its conditional
    half), and one in between differs from both."""
    cfg, model = tiny

    def run(interval, guidance, cache="context"):
        c = load_config("tiny", [f"sample.cfg_interval={interval}"])
        return Sampler(model, c).generate(num=2, seed=5, progress=False, guidance=guidance, cache=cache)

    guided = Sampler(model, cfg).generate(num=2, seed=5, progress=False, guidance=2.0)
    plain = Sampler(model, cfg).generate(num=2, seed=5, progress=False, guidance=1.0)
    assert torch.equal(run("[0.0, 1000.0]", 2.0).video, guided.video)
    for cache in ("context", "none"):
        torch.testing.assert_close(run("[0.0, 0.0]", 2.0, cache).video, plain.video, atol=1e-5, rtol=1e-4)
    part = run("[0.5, 5.0]", 2.0).video
    assert (part - guided.video).abs().max() > 1e-4 and (part - plain.video).abs().max() > 1e-4
    for bad in ("[5.0, 0.5]", "[0.5]", "[-1.0, 2.0]"):
        with pytest.raises(ConfigError, match="cfg_interval"):
            load_config("tiny", [f"sample.cfg_interval={bad}"])


# ---------------------------------------------------------------------------------------------
# Autoguidance (sample.guide): level 0 denoises with D + (w - 1)(D_cond - D_guide).


def _one_step(cfg_overrides=()):
    """A config whose level 0 is one deterministic Euler step from σ = 2: the level-0 output is
    then the denoiser's output itself, so guidance terms add up linearly and can be checked."""
    return load_config(
        "tiny",
        [
            "sample.steps=1",
            "sample.min_steps=1",
            "sample.sampler0=euler",
            "sample.sigma_max=2.0",
            "sample.S_churn=0",
            *cfg_overrides,
        ],
    )


def test_autoguidance_adds_the_guide_difference_at_level_0(tiny):
    _, model = tiny
    guide_cfg = load_config(
        "tiny", ["pyramid.num_levels=1", "pyramid.target=[2,8,8]", "model.levels_per_block=null"]
    )
    guide = perturbed_model(guide_cfg, seed=7)

    def run(w, cfg_scale=1.0, g=guide):
        c = _one_step([f"sample.guide_scale={w}"])
        return Sampler(model, c, guide=g).generate(
            num=2, seed=1, progress=False, guidance=[cfg_scale, 1.0, 1.0]
        )

    plain = Sampler(model, _one_step()).generate(num=2, seed=1, progress=False, guidance=[1.0, 1.0, 1.0])
    one, two, three = (run(w).levels[0] for w in (1.0, 2.0, 3.0))
    one_c, two_c = run(1.0, cfg_scale=2.0).levels[0], run(2.0, cfg_scale=2.0).levels[0]
    # outputs are clamped to [-1, 1]; where none is, the level-0 output is D itself
    free = torch.stack([v.abs() < 0.999 for v in (one, two, three, one_c, two_c)]).all(0)
    assert free.float().mean() > 0.5
    assert torch.equal(one, plain.levels[0])  # scale 1: the guide has no effect
    assert (two - one)[free].abs().max() > 1e-3
    # linear in the scale: each unit adds the same (D_cond - D_guide)
    torch.testing.assert_close((three - two)[free], (two - one)[free], atol=1e-5, rtol=0)
    # on top of classifier-free guidance: the autoguidance term does not depend on the cfg scale
    torch.testing.assert_close((two_c - one_c)[free], (two - one)[free], atol=1e-5, rtol=0)
    # `sample.guide_interval`: only at σ in [lo, hi] (the one step here is at σ = 2)
    c_out = _one_step(["sample.guide_scale=2", "sample.guide_interval=[0.0, 1.0]"])
    c_in = _one_step(["sample.guide_scale=2", "sample.guide_interval=[1.0, 3.0]"])
    outside = Sampler(model, c_out, guide=guide).generate(
        num=2, seed=1, progress=False, guidance=[1.0, 1.0, 1.0]
    )
    inside = Sampler(model, c_in, guide=guide).generate(
        num=2, seed=1, progress=False, guidance=[1.0, 1.0, 1.0]
    )
    assert torch.equal(outside.levels[0], one) and torch.equal(inside.levels[0], two)
    with pytest.raises(ConfigError, match="guide_interval"):
        load_config("tiny", ["sample.guide_interval=[3.0, 1.0]"])
    # the model as its own guide: D_cond - D_guide = 0 at every step, whatever the scale
    self_guided = Sampler(model, _one_step(["sample.guide_scale=3"]), guide=model).generate(
        num=2, seed=1, progress=False, guidance=[2.0, 1.0, 1.0]
    )
    cfg_only = Sampler(model, _one_step()).generate(num=2, seed=1, progress=False, guidance=[2.0, 1.0, 1.0])
    torch.testing.assert_close(self_guided.video, cfg_only.video, atol=1e-5, rtol=1e-4)


def _write_checkpoint(folder, c, m):
    """A release-style checkpoint folder: config, weights and state."""
    from safetensors.torch import save_file

    from hpdm.config import save_config

    folder.mkdir(parents=True)
    save_config(c, folder / "config.yaml")
    save_file(m.state_dict(), str(folder / "model.safetensors"))
    (folder / "state.json").write_text("{}")


def test_autoguidance_checkpoint_and_errors(tiny, tmp_path):
    """`sample.guide` names a checkpoint (relative paths next to the model's first); a missing or
    incompatible guide and a negative scale are clear errors."""
    from hpdm.train import load_model

    cfg, model = tiny

    guide_cfg = load_config(
        "tiny", ["pyramid.num_levels=1", "pyramid.target=[2,8,8]", "model.levels_per_block=null"]
    )
    _write_checkpoint(tmp_path / "main", load_config("tiny", ["sample.guide=guide"]), model)
    _write_checkpoint(tmp_path / "main" / "guide", guide_cfg, perturbed_model(guide_cfg, seed=7))
    m, c = load_model(tmp_path / "main")
    assert c.sample.guide == str((tmp_path / "main" / "guide").resolve())
    cas = Sampler(m, c)
    assert cas.guide is not None and cas.guide.num_levels == 1
    out = cas.generate(num=1, seed=0, progress=False)
    assert out.settings["sample"]["guide"] == c.sample.guide and out.settings["sample"]["guide_scale"] == 2.0
    _, unguided = load_model(tmp_path / "main", overrides=["sample.guide=null"])
    assert unguided.sample.guide is None

    with pytest.raises(ConfigError, match="no checkpoint there"):
        load_model(tmp_path / "main", overrides=[f"sample.guide={tmp_path / 'nope'}"])
    wrong = load_config(
        "tiny",
        [
            "pyramid.patch=[2,16,16]",
            "pyramid.target=[2,16,16]",
            "pyramid.num_levels=1",
            "model.levels_per_block=null",
        ],
    )
    _write_checkpoint(tmp_path / "wrong", wrong, HPDM(wrong))
    _, c_wrong = load_model(tmp_path / "main", overrides=[f"sample.guide={tmp_path / 'wrong'}"])
    with pytest.raises(ConfigError, match=r"cannot guide this model: its patch \[2, 16, 16\]"):
        Sampler(m, c_wrong)
    with pytest.raises(ConfigError, match="guide_scale"):
        load_config("tiny", ["sample.guide_scale=-1"])


# ---------------------------------------------------------------------------------------------
# A separate level-0 model (sample.base): it samples level 0, the model samples the finer levels.


def _level0_cfg(extra=()):
    return load_config(
        "tiny", ["pyramid.num_levels=1", "pyramid.target=[2,8,8]", "model.levels_per_block=null", *extra]
    )


def test_base_model_samples_level_0(tiny):
    """Level 0 is exactly what the base samples on its own (with the same seeds, guidance and
    autoguidance); the finer levels read it as their context, so they change with the base."""
    cfg, model = tiny
    base_cfg = _level0_cfg(["model.cube=[1,2,2]"])  # its own tokens: any level-0 architecture
    base, guide = perturbed_model(base_cfg, seed=3), perturbed_model(_level0_cfg(), seed=7)
    kw = dict(num=2, seed=4, progress=False, guidance=[2.0, 1.0, 1.0])
    own = Sampler(model, cfg).generate(**kw)
    with_base = Sampler(model, cfg, base=base).generate(**kw)
    alone = Sampler(base, base_cfg).generate(num=2, seed=4, progress=False, guidance=2.0)
    torch.testing.assert_close(with_base.levels[0], alone.levels[0], atol=1e-6, rtol=0)
    assert (with_base.levels[0] - own.levels[0]).abs().max() > 1e-2
    assert (with_base.levels[1] - own.levels[1]).abs().max() > 1e-3
    # autoguidance guides the base's level 0
    c2 = load_config("tiny", ["sample.guide_scale=2"])
    guided = Sampler(model, c2, guide=guide, base=base).generate(**kw)
    guided_alone = Sampler(base, _level0_cfg(["model.cube=[1,2,2]", "sample.guide_scale=2"]), guide=guide)
    ref = guided_alone.generate(num=2, seed=4, progress=False, guidance=2.0)
    torch.testing.assert_close(guided.levels[0], ref.levels[0], atol=1e-6, rtol=0)
    assert (guided.levels[0] - with_base.levels[0]).abs().max() > 1e-3
    # the model as its own base: the same as no base
    assert torch.equal(Sampler(model, cfg, base=model).generate(**kw).video, own.video)

    # `sample.base_interval`: the base only at σ in [lo, hi], the model at the other steps
    def interval(iv):
        c = load_config("tiny", [f"sample.base_interval={iv}"])
        return Sampler(model, c, base=base).generate(**kw).levels[0]

    assert torch.equal(interval("[0.0, 1000.0]"), with_base.levels[0])
    assert torch.equal(interval("[0.0, 0.0]"), own.levels[0])
    part = interval("[0.0, 1.0]")
    assert (part - own.levels[0]).abs().max() > 1e-3 and (part - with_base.levels[0]).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="base_interval"):
        load_config("tiny", ["sample.base_interval=[2.0, 1.0]"])


def test_base_model_checkpoint_and_errors(tiny, tmp_path):
    """`sample.base` names a checkpoint (next to the model's first); a missing or incompatible one
    is a clear error."""
    from hpdm.train import load_model

    _, model = tiny

    base_cfg = _level0_cfg(["sample.guide=elsewhere"])  # the base's own companions are ignored
    _write_checkpoint(tmp_path / "main", load_config("tiny", ["sample.base=base"]), model)
    _write_checkpoint(tmp_path / "main" / "base", base_cfg, perturbed_model(base_cfg, seed=3))
    m, c = load_model(tmp_path / "main")
    assert c.sample.base == str((tmp_path / "main" / "base").resolve())
    cas = Sampler(m, c)
    assert cas.base is not None and cas.base.num_levels == 1 and cas.guide is None
    out = cas.generate(num=1, seed=0, progress=False)
    assert out.settings["sample"]["base"] == c.sample.base
    with pytest.raises(ConfigError, match="sample.base=.*no checkpoint there"):
        load_model(tmp_path / "main", overrides=[f"sample.base={tmp_path / 'nope'}"])
    wrong = _level0_cfg(["model.num_classes=3"])
    _write_checkpoint(tmp_path / "wrong", wrong, HPDM(wrong))
    _, c_wrong = load_model(tmp_path / "main", overrides=[f"sample.base={tmp_path / 'wrong'}"])
    with pytest.raises(ConfigError, match=r"cannot sample level 0 of this model: its model.num_classes=3"):
        Sampler(m, c_wrong)


# ---------------------------------------------------------------------------------------------
# Guidance rules, in closed form


def test_guidance_rules_are_their_formulas_and_ask_only_for_what_they_use():
    """classifier_free: D_u + w(D − D_u); autoguidance: D + (w − 1)(D_c − D_g); each only inside
    its σ interval, and a branch output is computed once, when a rule first asks for it."""
    from hpdm.sampling import Step, autoguidance, classifier_free

    g = torch.Generator().manual_seed(0)
    cond, uncond, weak = (torch.randn(2, 3, 2, 4, 4, generator=g) for _ in range(3))
    calls = []

    def output(name, value):
        def run():
            calls.append(name)
            return value

        return run

    def step(sigma):
        calls.clear()
        return Step(
            cond,
            sigma,
            {
                "cond": output("cond", cond),
                "uncond": output("uncond", uncond),
                "guide": output("guide", weak),
            },
        )

    st = step(1.0)
    out = classifier_free(3.0)(cond, st)
    torch.testing.assert_close(out, uncond + 3.0 * (cond - uncond), rtol=0, atol=0)
    out2 = autoguidance(2.0)(out, st)
    torch.testing.assert_close(out2, out + (cond - weak), rtol=0, atol=0)
    assert calls == ["uncond", "cond", "guide"]
    st["uncond"]
    assert calls == ["uncond", "cond", "guide"]  # cached
    st = step(5.0)  # outside both intervals: nothing changes, nothing is computed
    assert classifier_free(3.0, [0.1, 2.0])(cond, st) is cond
    assert autoguidance(2.0, [0.1, 2.0])(cond, st) is cond
    assert calls == []


def test_pyramid_consistency_is_its_formula():
    """D + c · up(coarse − down(D)) at σ >= the threshold, D below it."""
    from hpdm.sampling import pyramid_consistency

    g = torch.Generator().manual_seed(1)
    D = torch.randn(1, 3, 4, 8, 8, generator=g)
    coarse = torch.randn(1, 3, 2, 4, 4, generator=g)
    wrapped = pyramid_consistency(lambda y, s: D, coarse, (True, True, True), 0.5, 0.1)
    down = D.view(1, 3, 2, 2, 4, 2, 4, 2).mean((3, 5, 7))
    up = torch.nn.functional.interpolate(coarse - down, size=(4, 8, 8), mode="trilinear", align_corners=False)
    torch.testing.assert_close(wrapped(None, 1.0), D + 0.5 * up)
    assert wrapped(None, 0.05) is D


def test_no_function_in_the_sampler_is_long():
    """Issue 28: the sampler reads like EDM's; no function over 60 lines."""
    import ast
    import inspect

    import hpdm.sampling as sampling

    tree = ast.parse(inspect.getsource(sampling))
    long = {
        n.name: n.end_lineno - n.lineno + 1
        for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.end_lineno - n.lineno + 1 > 60
    }
    assert not long, long


def test_layout_sigma_samples_level0_whole_first_when_it_is_several_tiles(tiny, monkeypatch):
    """`sample.layout_sigma`: at a size whose level 0 is several tiles, level 0 is first sampled
    at the patch size (one tile), then the tiles start from it, stretched, at σ = layout_sigma;
    at the training size, where level 0 is one tile, the option changes nothing."""
    import hpdm.sampling as sampling

    cfg, model = tiny
    on = load_config("tiny", ["sample.layout_sigma=2.0"])
    base = Sampler(model, cfg).generate(num=2, seed=3, progress=False)
    assert torch.equal(Sampler(model, on).generate(num=2, seed=3, progress=False).video, base.video)

    calls = []
    real = sampling.sample_level

    def spy(plan, denoise, noise, *a, **kw):
        calls.append((plan.level, tuple(plan.canvas), len(plan.tiles), float(plan.sigmas[0]), noise.clone()))
        out = real(plan, denoise, noise, *a, **kw)
        calls[-1] += (out,)
        return out

    monkeypatch.setattr(sampling, "sample_level", spy)
    wide = Sampler(model, on).generate(num=2, size=(4, 32, 64), seed=3, progress=False)
    (_, thumb_canvas, thumb_tiles, thumb_sigma, _, thumb), (_, canvas, tiles, sigma, noise, _) = calls[:2]
    assert (
        thumb_canvas == tuple(cfg.pyramid.patch) and thumb_tiles == 1 and thumb_sigma == cfg.sample.sigma_max
    )
    assert canvas == (2, 8, 16) and tiles > 1 and sigma == pytest.approx(2.0)
    stretched = torch.nn.functional.interpolate(thumb, size=canvas, mode="trilinear", align_corners=False)
    assert (
        (noise - stretched / 2.0).std() - 1
    ).abs() < 0.2  # the start: the stretched thumbnail + unit noise
    assert wide.levels[0].shape[-3:] == canvas
    with pytest.raises(ConfigError, match="layout_sigma"):
        load_config("tiny", ["sample.layout_sigma=-1"])
