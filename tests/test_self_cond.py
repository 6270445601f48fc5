"""Latent self-conditioning (RIN): a no-op at init, masked per (video, level), coarse → fine only,
trained through the `SelfConditioned` wrapper (a gradient-free first pass), and carried from step
to step by the tiled sampler (`LatentCarry`)."""

from __future__ import annotations

import json

import pytest
import torch

from hpdm.config import ConfigError, load_config
from hpdm.diffusion import Diffusion
from hpdm.model.hpdm import HPDM
from hpdm.model.self_cond import LatentCarry, SelfConditioned
from hpdm.pyramid import PyramidGeometry, sample_boxes
from hpdm.sampling import Sampler
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
    return x, c_noise, boxes, labels, prev


def test_config_rejects_rates_outside_0_1(tiny_config):
    with pytest.raises(ConfigError, match="self_cond"):
        tiny_config("model.self_cond=1.5")


def test_previous_latents_have_no_effect_at_init(tiny_config):
    cfg = tiny_config("model.self_cond=0.9")
    model = HPDM(cfg)
    x, c, boxes, labels, prev = _inputs(cfg)
    carry = LatentCarry()
    out = model(x, c, boxes, labels, latents=carry)
    assert carry.final.shape == prev.shape
    torch.testing.assert_close(model(x, c, boxes, labels, latents=LatentCarry(prev)), out, rtol=0, atol=0)


def test_a_model_without_self_conditioning_refuses_latents(tiny_config):
    cfg = tiny_config()
    x, c, boxes, labels, prev = _inputs(cfg)
    with pytest.raises(ValueError, match="self_cond"):
        HPDM(cfg)(x, c, boxes, labels, latents=LatentCarry(prev))


def test_mask_selects_level_instances_and_influence_runs_coarse_to_fine(tiny_config, perturbed):
    cfg = tiny_config("model.self_cond=0.9", "model.levels_per_block=[3,3,3]")
    model = perturbed(HPDM(cfg))
    x, c, boxes, labels, prev = _inputs(cfg)
    base = model(x, c, boxes, labels)
    B, L = x.shape[:2]
    # self-conditioning only the finest level changes only the finest level
    mask = torch.zeros(B, L, dtype=torch.bool)
    mask[:, -1] = True
    out = model(x, c, boxes, labels, latents=LatentCarry(prev, mask))
    torch.testing.assert_close(out[:, :-1], base[:, :-1], rtol=0, atol=0)
    assert (out[:, -1] - base[:, -1]).abs().max() > 1e-4
    # only level 0 of video 0: video 1 is untouched, every level of video 0 changes (deep fusion)
    mask = torch.zeros(B, L, dtype=torch.bool)
    mask[0, 0] = True
    out = model(x, c, boxes, labels, latents=LatentCarry(prev, mask))
    torch.testing.assert_close(out[1], base[1], rtol=0, atol=0)
    for k in range(L):
        assert (out[0, k] - base[0, k]).abs().max() > 1e-4, k
    # gradients: level k's output depends on level j's previous latents only for j <= k
    prev = prev.clone().requires_grad_(True)
    out = model(x, c, boxes, labels, latents=LatentCarry(prev))
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
    x, c, boxes, labels, prev = _inputs(cfg)
    both, one = LatentCarry(prev[:, :1]), LatentCarry(prev[:, :1])
    joint = model(x[:, :1], c[:, :1], boxes[:, :1], labels, latents=both)
    alone = model.forward_level(x[:, 0], c[:, 0], boxes[:, 0], 0, None, labels, latents=one)
    torch.testing.assert_close(alone, joint[:, 0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(one.final, both.final, rtol=1e-5, atol=1e-6)
    # the carry hands this pass's final latents on as the next pass's previous ones
    assert one.next().prev is one.final and one.next().final is None


def test_wrapper_runs_a_gradient_free_first_pass_and_masks_by_rate(tiny_config, perturbed):
    """`SelfConditioned`: the loss calls it like the network; it runs the network twice (the first
    pass without gradients) and self-conditions a share `rate` of the (video, level) pairs; the
    loss's draws are the plain network's (the mask comes from the global generator)."""
    cfg = tiny_config("model.self_cond=0.5")
    geo = PyramidGeometry(cfg.pyramid.patch, cfg.pyramid.target, cfg.pyramid.num_levels)
    diff = Diffusion(cfg.diffusion, geo)
    gens = lambda: [torch.Generator().manual_seed(s) for s in range(6)]  # noqa: E731
    model = perturbed(HPDM(cfg))
    calls, masks = [], []

    def hook(m, args, kw, out):
        calls.append(torch.is_grad_enabled())
        masks.append(kw["latents"].mask if "latents" in kw else None)

    model.register_forward_hook(hook, with_kwargs=True)
    x, _, boxes, labels, _ = _inputs(cfg, B=6)
    x = x.clamp(-1, 1)
    torch.manual_seed(0)
    loss, _, sigma = diff.loss(SelfConditioned(model, 0.5), x, boxes, labels, generator=gens())
    assert calls == [False, True]  # a gradient-free first pass, then the trained pass
    assert masks[0] is None and masks[1].shape == (6, geo.num_levels) and masks[1].dtype == torch.bool
    loss.backward()
    assert model.self_cond[1].weight.grad.abs().max() > 0
    calls.clear()
    _, _, plain_sigma = diff.loss(model, x, boxes, labels, generator=gens())
    assert calls == [True] and torch.equal(sigma, plain_sigma)
    rates = []
    for rate in (0.0, 1.0):
        masks.clear()
        with torch.no_grad():
            SelfConditioned(model, rate)(x, *_inputs(cfg, B=6)[1:4])
        rates.append(masks[1].float().mean().item())
    assert rates == [0.0, 1.0]


def test_sampler_feeds_latents_back_and_cache_agrees(tiny_config, perturbed):
    cfg = load_config("tiny", ["model.self_cond=0.9"])
    model = perturbed(HPDM(cfg)).eval()
    c = Sampler(model, cfg)
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
