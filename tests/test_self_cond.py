"""Latent self-conditioning (RIN): a no-op at init, masked per (video, level), coarse → fine only,
trained with a gradient-free first pass, and carried from step to step by the tiled sampler."""

from __future__ import annotations

import json

import pytest
import torch

from hpdm.config import ConfigError, load_config
from hpdm.diffusion import Diffusion
from hpdm.model.hpdm import HPDM
from hpdm.pyramid import PyramidGeometry, sample_boxes
from hpdm.sampling import Cascade
from hpdm.train import Trainer

pytestmark = pytest.mark.usefixtures("single_thread")


def _inputs(cfg, B: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    geo = PyramidGeometry(cfg.pyramid.patch, cfg.pyramid.target, cfg.pyramid.num_levels)
    L = geo.num_levels
    boxes = sample_boxes(geo, B, g)
    x = torch.randn(B, L, 3, *geo.patch, generator=g)
    c_noise = torch.randn(B, L, generator=g) * 0.5
    labels = torch.randint(0, cfg.model.num_classes, (B,), generator=g)
    prev = torch.randn(B, L, cfg.model.num_latents, cfg.model.latent_dim, generator=g)
    return x, c_noise, boxes.offset, boxes.size, labels, prev


def test_config_rejects_rates_outside_0_1(tiny_config):
    with pytest.raises(ConfigError, match="self_cond"):
        tiny_config("model.self_cond=1.5")


def test_previous_latents_have_no_effect_at_init(tiny_config):
    cfg = tiny_config("model.self_cond=0.9")
    model = HPDM(cfg)
    x, c, off, size, labels, prev = _inputs(cfg)
    out, lat = model(x, c, off, size, labels, return_latents=True)
    assert lat.shape == prev.shape
    torch.testing.assert_close(model(x, c, off, size, labels, prev=prev), out, rtol=0, atol=0)


def test_a_model_without_self_conditioning_refuses_latents(tiny_config):
    cfg = tiny_config()
    x, c, off, size, labels, prev = _inputs(cfg)
    with pytest.raises(ValueError, match="self_cond"):
        HPDM(cfg)(x, c, off, size, labels, prev=prev)


def test_mask_selects_level_instances_and_influence_runs_coarse_to_fine(tiny_config, perturbed):
    cfg = tiny_config("model.self_cond=0.9", "model.levels_per_block=[3,3,3]")
    model = perturbed(HPDM(cfg))
    x, c, off, size, labels, prev = _inputs(cfg)
    base = model(x, c, off, size, labels)
    B, L = x.shape[:2]
    # self-conditioning only the finest level changes only the finest level
    mask = torch.zeros(B, L, dtype=torch.bool)
    mask[:, -1] = True
    out = model(x, c, off, size, labels, prev=prev, prev_mask=mask)
    torch.testing.assert_close(out[:, :-1], base[:, :-1], rtol=0, atol=0)
    assert (out[:, -1] - base[:, -1]).abs().max() > 1e-4
    # only level 0 of video 0: video 1 is untouched, every level of video 0 changes (deep fusion)
    mask = torch.zeros(B, L, dtype=torch.bool)
    mask[0, 0] = True
    out = model(x, c, off, size, labels, prev=prev, prev_mask=mask)
    torch.testing.assert_close(out[1], base[1], rtol=0, atol=0)
    for k in range(L):
        assert (out[0, k] - base[0, k]).abs().max() > 1e-4, k
    # gradients: level k's output depends on level j's previous latents only for j <= k
    prev = prev.clone().requires_grad_(True)
    out = model(x, c, off, size, labels, prev=prev)
    for k in range(L):
        (g,) = torch.autograd.grad(out[:, k].square().sum(), prev, retain_graph=True)
        for j in range(L):
            if j > k:
                assert torch.all(g[:, j] == 0), (k, j)
            else:
                assert g[:, j].abs().max() > 0, (k, j)


def test_forward_level_matches_joint_pass_with_previous_latents(tiny_config, perturbed):
    cfg = tiny_config("model.self_cond=0.9")
    model = perturbed(HPDM(cfg))
    x, c, off, size, labels, prev = _inputs(cfg)
    joint, lat = model(
        x[:, :1], c[:, :1], off[:, :1], size[:, :1], labels, prev=prev[:, :1], return_latents=True
    )
    alone, lat1 = model.forward_level(
        x[:, 0], c[:, 0], off[:, 0], size[:, 0], 0, None, labels, prev=prev[:, 0], return_latents=True
    )
    torch.testing.assert_close(alone, joint[:, 0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lat1, lat[:, 0], rtol=1e-5, atol=1e-6)


def test_loss_draws_are_unchanged_and_first_pass_carries_no_gradient(tiny_config, perturbed):
    cfg = tiny_config("model.self_cond=0.5")
    geo = PyramidGeometry(cfg.pyramid.patch, cfg.pyramid.target, cfg.pyramid.num_levels)
    diff = Diffusion(cfg.diffusion, geo)
    shape = (geo.num_levels, 3, *geo.patch)
    gens = lambda: [torch.Generator().manual_seed(s) for s in range(6)]  # noqa: E731
    plain = diff.draw(6, shape, gens(), "cpu")
    with_sc = diff.draw(6, shape, gens(), "cpu", self_cond=0.5)
    assert len(with_sc) == 5 and with_sc[4].shape == (6, geo.num_levels) and with_sc[4].dtype == torch.bool
    for a, b in zip(plain, with_sc):
        assert torch.equal(a, b)

    model = perturbed(HPDM(cfg))
    calls = []
    model.register_forward_hook(
        lambda m, args, kw, out: calls.append(torch.is_grad_enabled()), with_kwargs=True
    )
    x, _, off, size, labels, _ = _inputs(cfg, B=6)
    loss, _, _ = diff.loss(model, x.clamp(-1, 1), off, size, labels, generator=gens(), self_cond=0.5)
    assert calls == [False, True]  # a gradient-free first pass, then the trained pass
    loss.backward()
    assert model.self_cond[1].weight.grad.abs().max() > 0
    calls.clear()
    diff.loss(model, x.clamp(-1, 1), off, size, labels, generator=gens())
    assert calls == [True]


def test_sampler_feeds_latents_back_and_cache_agrees(tiny_config, perturbed):
    cfg = load_config("tiny", ["model.self_cond=0.9"])
    model = perturbed(HPDM(cfg)).eval()
    c = Cascade(model, cfg)
    a = c.generate(num=2, seed=3, cache="context", progress=False, guidance=1.5)
    b = c.generate(num=2, seed=3, cache="none", progress=False, guidance=1.5)
    for x, y in zip(a.levels, b.levels):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # the same weights with the self-conditioning path switched off
        model.self_cond[1].weight.zero_()
        model.self_cond[1].bias.zero_()
    d = c.generate(num=2, seed=3, cache="context", progress=False, guidance=1.5)
    for k, (x, y) in enumerate(zip(a.levels, d.levels)):
        assert (x - y).abs().mean() > 1e-4, k


def test_trainer_with_self_conditioning_resumes_exactly(tiny_config, tmp_path):
    common = ["model.self_cond=0.9", "train.steps=4", "train.ckpt_every=100", "train.batch_size=2"]
    common += ["train.log_every=2"]
    straight = Trainer(tiny_config(*common, f"train.out_dir={tmp_path / 'a'}"), progress=False)
    straight.train()
    cfg = tiny_config(*common, f"train.out_dir={tmp_path / 'b'}")
    Trainer(cfg, progress=False).train(until=2)
    second = Trainer(cfg, resume="auto", progress=False)
    second.train()
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, second.model.state_dict()[k]), k
    logs = [
        [json.loads(s)["loss"] for s in (tmp_path / d / "log.jsonl").read_text().splitlines()]
        for d in ("a", "b")
    ]
    assert logs[0] == logs[1] and all(map(lambda v: v == v, logs[0]))
