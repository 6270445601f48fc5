"""The HPDM network: shapes, coarse → fine information flow, adaptive computation, DCF pieces,
and the cached-context path used by tiled sampling."""

from __future__ import annotations

import copy

import pytest
import torch

from hpdm.config import ConfigError, levels_per_block
from hpdm.diffusion import Diffusion
from hpdm.info import flop_counter, model_info
from hpdm.model.hpdm import HPDM
from hpdm.pyramid import Boxes, PyramidGeometry, sample_boxes

pytestmark = pytest.mark.usefixtures("single_thread")


def geometry(cfg) -> PyramidGeometry:
    return PyramidGeometry(cfg.pyramid.patch, cfg.pyramid.target, cfg.pyramid.num_levels)


def inputs(cfg, B: int = 2, seed: int = 0):
    """Random level stack, noise levels, nested boxes and labels for the config's geometry."""
    g = torch.Generator().manual_seed(seed)
    geo = geometry(cfg)
    L = geo.num_levels
    boxes = sample_boxes(geo, B, g)
    x = torch.randn(B, L, 3, *geo.patch, generator=g)
    c_noise = torch.randn(B, L, generator=g) * 0.5
    labels = torch.randint(0, cfg.model.num_classes, (B,), generator=g)
    return x, c_noise, boxes, labels


def test_output_shapes_and_zero_init(tiny_config):
    cfg = tiny_config()
    model = HPDM(cfg)
    x, c, boxes, labels = inputs(cfg)
    out = model(x, c, boxes, labels)
    assert out.shape == x.shape == (2, 3, 3, 2, 8, 8)
    assert torch.all(out == 0)  # zero detokenizer: D starts as c_skip · x
    for L in (1, 2):  # a prefix of the levels also runs
        assert model(x[:, :L], c[:, :L], boxes[:, :L], labels).shape == (2, L, 3, 2, 8, 8)
    with pytest.raises(ValueError, match="3 levels"):
        model(
            torch.cat([x, x[:, :1]], 1),
            torch.cat([c, c[:, :1]], 1),
            Boxes.cat([boxes, boxes[:, :1]], dim=1),
            labels,
        )
    # unconditional models and the null class
    assert HPDM(tiny_config("model.num_classes=0"))(x, c, boxes).shape == x.shape
    assert model.null_class() == 8 and model.class_embed.num_embeddings == 9


def _jacobian_blocks(model, x, c, boxes, labels):
    """nonzero[k][j][b][b2]: does level k of video b depend on the input of level j of video b2?"""
    B, L = x.shape[:2]
    x = x.clone().requires_grad_(True)
    out = model(x, c, boxes, labels)
    g = torch.Generator().manual_seed(9)
    w = torch.randn(out.shape, generator=g)
    result = {}
    for k in range(L):
        for b in range(B):
            (grad,) = torch.autograd.grad((out[b, k] * w[b, k]).sum(), x, retain_graph=True)
            for j in range(L):
                for b2 in range(B):
                    result[k, b, j, b2] = grad[b2, j]
    return result


KNOBS = [
    "model.token_conv=true",
    "model.token_cond=true",
    "model.fusion=deep+pixels",
    "model.self_cond=0.5",
    # the paper presets' FIT block: conditioning read per block, wide read FFs, adaLN-Zero
    "model.cond_read=true model.cond_dim=24 model.read_mlp_dim=40 model.latent_adaln=true",
    "model.latent_adaln=true",  # adaLN with the conditioning appended to the latents
]


@pytest.mark.parametrize(
    "lpb,knob",
    [("[1,2,3]", None), ("[3,3,3]", None), ("[3,3,3]", KNOBS[2]), *(("[1,2,3]", k) for k in KNOBS)],
)
def test_information_flows_only_coarse_to_fine(tiny_config, perturbed, lpb, knob):
    cfg = tiny_config(f"model.levels_per_block={lpb}", *(knob.split() if knob else []))
    model = perturbed(HPDM(cfg))
    x, c, boxes, labels = inputs(cfg)
    grads = _jacobian_blocks(model, x, c, boxes, labels)
    for (k, b, j, b2), grad in grads.items():
        if b2 != b or j > k:  # other videos and finer levels: exactly no influence
            assert torch.all(grad == 0), (k, b, j, b2)
        else:  # the level itself and every coarser level (deep fusion)
            assert grad.abs().max() > 1e-4, (k, b, j, b2)


def test_no_fusion_keeps_levels_independent(tiny_config, perturbed):
    cfg = tiny_config("model.fusion=none")
    model = perturbed(HPDM(cfg))
    assert len(model.fusion) == 0
    x, c, boxes, labels = inputs(cfg)
    for (k, b, j, b2), grad in _jacobian_blocks(model, x, c, boxes, labels).items():
        if b2 == b and j == k:
            assert grad.abs().max() > 1e-4
        else:
            assert torch.all(grad == 0), (k, b, j, b2)


def test_detached_context_blocks_gradients_but_not_values(tiny_config, perturbed):
    cfg = tiny_config("model.detach_context=true")
    model = perturbed(HPDM(cfg))
    x, c, boxes, labels = inputs(cfg)
    x = x.requires_grad_(True)
    out = model(x, c, boxes, labels)
    (grad,) = torch.autograd.grad(out[:, 2].square().sum(), x)
    assert torch.all(grad[:, :2] == 0)  # the fine loss does not reach the coarse inputs
    assert grad[:, 2].abs().max() > 1e-4
    # ...but the fine level still reads the coarse levels in the forward pass
    x2 = x.detach().clone()
    x2[:, 0] += 1.0
    out2 = model(x2, c, boxes, labels)
    assert (out2[:, 2] - out[:, 2]).abs().max() > 1e-4


def test_adaptive_computation_routes_levels_through_listed_blocks(tiny_config, perturbed):
    cfg = tiny_config("model.levels_per_block=[1,2,3]", "model.fusion=none")
    model = perturbed(HPDM(cfg))
    B = 2
    x, c, boxes, labels = inputs(cfg, B)
    seen = {}

    def hook(b):
        def f(module, args, output):
            seen[b] = (args[0].shape[0], args[1].shape[0])

        return f

    handles = [blk.register_forward_hook(hook(b)) for b, blk in enumerate(model.blocks)]
    out = model(x, c, boxes, labels)
    for h in handles:
        h.remove()
    assert seen == {0: (B * 1, B * 1), 1: (B * 2, B * 2), 2: (B * 3, B * 3)}

    # with no fusion, level ℓ's output depends on exactly the blocks that list it
    for lvl in range(3):
        grads = torch.autograd.grad(
            out[:, lvl].square().sum(), list(model.blocks.parameters()), retain_graph=True, allow_unused=True
        )
        per_block = {}
        i = 0
        for b, blk in enumerate(model.blocks):
            n = len(list(blk.parameters()))
            per_block[b] = [gr for gr in grads[i : i + n] if gr is not None]
            i += n
        for b, lpb in enumerate(levels_per_block(cfg)):
            touched = any(gr.abs().max() > 0 for gr in per_block[b])
            assert touched == (lvl < lpb), (lvl, b)


def _measured_step_flops(cfg) -> int:
    model = HPDM(cfg)
    x, c, boxes, labels = inputs(cfg, B=1)
    diffusion = Diffusion(cfg.diffusion, geometry(cfg))
    counter = flop_counter()  # counts attention too (hpdm.info)
    with counter:
        loss, _, _ = diffusion.loss(model, x, boxes, labels, null_class=model.null_class())
        loss.backward()
    return counter.get_total_flops()


def test_adaptive_computation_flops(tiny_config):
    cfg = tiny_config("model.levels_per_block=[1,2,3]")
    info = model_info(cfg, batch=1, measure_memory=False)
    no_ac = copy.deepcopy(cfg)
    no_ac.model.levels_per_block = None
    assert info["train_step_flops"] == _measured_step_flops(cfg)
    assert info["train_step_flops_without_ac"] == _measured_step_flops(no_ac)
    assert info["train_step_flops"] < info["train_step_flops_without_ac"]
    assert info["ac_flops_saving"] == pytest.approx(
        1 - info["train_step_flops"] / info["train_step_flops_without_ac"]
    )
    assert info["ac_flops_saving"] > 0.1
    # block b runs on B × levels_per_block[b] samples, so its FLOPs scale with it; fusion adds a Linear
    # (2d + 6 → d) on every token of every fused level: 6 M K N FLOPs forward + backward.
    d, n = cfg.model.dim, HPDM(cfg).num_tokens  # 8 tokens: (2, 8, 8) patches in (1, 4, 4) cubes
    blocks = [bl["train_step_flops"] for bl in info["blocks"]]
    for b, nb in enumerate([1, 2, 3]):
        fusion = 6 * (nb - 1) * n * (2 * d + 6) * d
        assert blocks[b] == pytest.approx(nb * blocks[0] + fusion, rel=1e-9)
    assert [lv["blocks"] for lv in info["levels"]] == [[0, 1, 2], [1, 2], [2]]


def test_fusion_is_identity_at_init(tiny_config):
    for overrides, coord_dim in [((), 6), (("model.use_coords=false",), 0)]:
        model = HPDM(tiny_config(*overrides))
        assert sorted(model.fusion) == ["1", "2"]  # block 0 only processes level 0: nothing to fuse
        d = model.cfg.dim
        g = torch.Generator().manual_seed(0)
        a = torch.randn(2, 2, model.num_tokens, d, generator=g)
        ctx = torch.randn(2, 2, model.num_tokens, d, generator=g)
        coords = torch.rand(2, 2, model.num_tokens, 6, generator=g)
        for b in model.fusion:
            assert model.fusion[b].in_features == 2 * d + coord_dim
            assert torch.equal(model.fusion.fuse(int(b), a, ctx, coords), a)


def test_sampled_context_of_same_box_is_the_parent(tiny_config):
    model = HPDM(tiny_config())
    d, n = model.cfg.dim, model.num_tokens
    g = torch.Generator().manual_seed(0)
    B = 3
    xs = torch.randn(B, 2, n, d, generator=g)
    size = torch.rand(B, 1, 3, generator=g) * 0.5 + 0.2
    off = torch.rand(B, 1, 3, generator=g) * (1 - size)
    boxes = Boxes(off.expand(B, 3, 3), size.expand(B, 3, 3))  # three levels, one box

    ctx = model.fusion.context(xs, boxes[:, :2], boxes[:, 1:2], (1,))  # level 1 reads level 0
    torch.testing.assert_close(ctx[:, 0], xs[:, 0], atol=1e-5, rtol=0)

    pairs, w = model.fusion._pairs((1, 2), torch.device("cpu"))  # paper eq. 7: the mean over coarser levels
    assert pairs.tolist() == [[0, 0], [1, 0], [1, 1]]
    torch.testing.assert_close(w, torch.tensor([[1.0, 0, 0], [0, 0.5, 0.5]]))
    ctx = model.fusion.context(xs, boxes[:, :2], boxes[:, 1:], (1, 2))
    torch.testing.assert_close(ctx[:, 0], xs[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(ctx[:, 1], (xs[:, 0] + xs[:, 1]) / 2, atol=1e-5, rtol=0)


def test_sampled_context_reads_the_child_region(tiny_config):
    """A child box = the left half of its parent in w interpolates the parent's left token columns."""
    model = HPDM(tiny_config("pyramid.patch=[2,8,16]", "pyramid.target=[4,32,64]"))
    nf, nh, nw = model.grid  # (2, 2, 4)
    d = model.cfg.dim
    xs = torch.randn(1, 1, nf, nh, nw, d)
    # parent tokens along w: columns 0..3; the child's 4 columns sit at 1/8, 3/8, 5/8, 7/8 of [0, 2)
    parent = Boxes(torch.tensor([[[0.0, 0.0, 0.0]]]), torch.tensor([[[1.0, 1.0, 1.0]]]))
    child = Boxes(torch.tensor([[[0.0, 0.0, 0.0]]]), torch.tensor([[[1.0, 1.0, 0.5]]]))
    ctx = model.fusion.context(xs.flatten(2, 4), parent, child, (1,))
    ctx = ctx.view(1, nf, nh, nw, d)
    c0, c1, c2 = (xs[0, 0, ..., i, :] for i in range(3))
    # child column centres in parent token-index units: -0.25 (clamped to the border), 0.25, 0.75, 1.25
    want = torch.stack([c0, c0 + 0.25 * (c1 - c0), c0 + 0.75 * (c1 - c0), c1 + 0.25 * (c2 - c1)], dim=-2)
    torch.testing.assert_close(ctx[0], want, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "lpb,knob", [("[1,2,3]", None), ("null", None), ("null", KNOBS[2]), *(("[1,2,3]", k) for k in KNOBS)]
)
def test_cached_context_matches_joint_forward(tiny_config, perturbed, lpb, knob):
    cfg = tiny_config(f"model.levels_per_block={lpb}", *(knob.split() if knob else []))
    model = perturbed(HPDM(cfg), std=0.1)
    x, c, boxes, labels = inputs(cfg, B=3)
    with torch.no_grad():
        joint = model(x, c, boxes, labels)
        alone = model.forward_level(x[:, 0], c[:, 0], boxes[:, 0], 0, None, labels)
        torch.testing.assert_close(alone, joint[:, 0], atol=1e-5, rtol=1e-5)
        for lvl in (1, 2):
            ctx = model.level_context(x[:, :lvl], c[:, :lvl], boxes[:, :lvl], boxes[:, lvl], labels)
            assert len(ctx.blocks) == cfg.model.num_blocks
            lpbs = levels_per_block(cfg)
            assert [t is not None for t in ctx.blocks] == [lvl < v for v in lpbs]
            assert (ctx.pixels is not None) == model.pixels
            out = model.forward_level(x[:, lvl], c[:, lvl], boxes[:, lvl], lvl, ctx, labels)
            assert (out - joint[:, lvl]).abs().max() < 1e-5, lvl
            assert out.abs().max() > 1e-2  # a real output, not a trivially equal zero
        with pytest.raises(ValueError, match="context"):
            model.forward_level(x[:, 1], c[:, 1], boxes[:, 1], 1, None, labels)


def test_token_conv_mixes_neighbouring_tokens_only(perturbed):
    """With the write path cut, a block with token_conv makes each token depend on exactly its
    3x3x3 token neighbourhood (which also checks the token order of the grid reshape)."""
    from hpdm.model.blocks import RINBlock

    grid = (3, 4, 5)
    block = perturbed(RINBlock(16, 16, 2, 1, 2.0, grid))
    assert perturbed(RINBlock(16, 16, 2, 1, 2.0)).token_conv is None
    with torch.no_grad():
        block.write.out.weight.zero_()
        block.write.out.bias.zero_()
    x = torch.randn(1, 60, 16, requires_grad=True)
    z = torch.randn(1, 4, 16)
    out, _ = block(x, z)
    f, h, w = 1, 2, 4  # a token at the right edge
    (grad,) = torch.autograd.grad(out[0, (f * 4 + h) * 5 + w].sum(), x)
    reach = (grad[0].abs().sum(-1) > 0).view(grid)
    expected = torch.zeros(grid, dtype=torch.bool)
    expected[0:3, 1:4, 3:5] = True
    assert torch.equal(reach, expected)


@pytest.mark.parametrize("token_cond", [False, True])
def test_token_cond_gives_the_tokens_the_condition_directly(tiny_config, perturbed, token_cond):
    """With every block's write path cut, the data tokens see the class and noise level only
    through model.token_cond; at init (zero projection) it changes nothing."""
    cfg = tiny_config(f"model.token_cond={token_cond}")
    model = perturbed(HPDM(cfg), std=0.1)
    x, c, boxes, labels = inputs(cfg)
    if token_cond:
        fresh = HPDM(cfg)
        fresh.load_state_dict({k: v for k, v in model.state_dict().items()})
        torch.nn.init.zeros_(fresh.token_cond[1].weight)
        torch.nn.init.zeros_(fresh.token_cond[1].bias)
        plain = HPDM(tiny_config())
        plain.load_state_dict({k: v for k, v in fresh.state_dict().items() if not k.startswith("token_cond")})
        with torch.no_grad():
            assert torch.equal(fresh(x, c, boxes, labels), plain(x, c, boxes, labels))
    with torch.no_grad():
        for blk in model.blocks:
            blk.write.out.weight.zero_()
            blk.write.out.bias.zero_()
        a = model(x, c, boxes, labels)
        b = model(x, c, boxes, (labels + 1) % cfg.model.num_classes)
        d = model(x, c + 0.5, boxes, labels)
    for other in (b, d):
        diff = (a - other).abs().amax(dim=(2, 3, 4, 5))  # (B, L): every level instance
        assert bool((diff > 1e-4).all()) if token_cond else bool((diff == 0).all()), diff


def test_dropout_acts_in_training_only(tiny_config, perturbed):
    """model.dropout drops the RIN blocks' MLP outputs in train mode; eval mode is the plain network
    (same parameter names, so checkpoints load either way)."""
    plain = perturbed(HPDM(tiny_config()), std=0.1)
    assert not any(isinstance(m, torch.nn.Dropout) for m in plain.modules())
    drop = HPDM(tiny_config("model.dropout=0.3"))
    drop.load_state_dict(plain.state_dict())
    assert sum(isinstance(m, torch.nn.Dropout) for m in drop.modules()) > 0
    x, c, boxes, labels = inputs(cfg := tiny_config())
    with torch.no_grad():
        ref = plain.eval()(x, c, boxes, labels)
        assert torch.equal(drop.eval()(x, c, boxes, labels), ref)
        drop.train()
        a, b = drop(x, c, boxes, labels), drop(x, c, boxes, labels)
    assert not torch.equal(a, b) and not torch.equal(a, ref)
    with pytest.raises(ValueError, match=r"model.dropout=1.0 .*\[0, 1\)"):
        tiny_config("model.dropout=1.0")
    assert cfg.model.dropout == 0.0


def test_deep_plus_pixels_feeds_the_previous_levels_pixels(tiny_config, perturbed):
    """`model.fusion=deep+pixels`: deep fusion plus the previous level's input resampled onto the
    patch as 3 extra channels. A model grown from one without them computes exactly what it did
    (the new channels' weights start at zero), the fine level then depends on those pixels, and
    a base with the pixel channels cannot initialise one without (the error says what to set)."""
    from hpdm.grow import init_from_state

    base = perturbed(HPDM(tiny_config()))
    cfg = tiny_config("model.fusion=deep+pixels")
    model = HPDM(cfg)
    report = init_from_state(model, base.state_dict())
    assert "tokenizer.weight" in report["grown"] and not report["new"]
    x, c, boxes, labels = inputs(cfg, B=2)
    with torch.no_grad():
        torch.testing.assert_close(model(x, c, boxes, labels), base(x, c, boxes, labels))
    perturbed(model)
    x0 = x.clone().requires_grad_(True)
    out = model(x0, c, boxes, labels)
    (g,) = torch.autograd.grad(out[:, 1].square().sum(), x0)
    assert g[:, 0].abs().max() > 0 and g[:, 2].abs().max() == 0  # coarse → fine only
    assert model.deep and model.pixels
    with pytest.raises(ValueError, match="set model.fusion the same"):
        init_from_state(HPDM(tiny_config()), model.state_dict())  # the reverse: tells what to add


def test_adaln_zero_latent_layers_start_as_the_identity(perturbed):
    """`model.latent_adaln`: with the modulation at its zero init, the patch read and every latent
    layer leave the latents as they are (their gates are 0); once trained, the latents depend on
    the conditioning through it."""
    from hpdm.model.blocks import RINBlock

    block = perturbed(RINBlock(16, 8, 2, 2, 2.0, adaln_dim=12))
    block.reset_modulation()
    g = torch.Generator().manual_seed(0)
    x, z, c = (
        torch.randn(2, 6, 16, generator=g),
        torch.randn(2, 5, 8, generator=g),
        torch.randn(2, 3, 12, generator=g),
    )
    x_out, z_out = block(x, z, c)
    assert torch.equal(z_out, z) and not torch.equal(x_out, x)  # the write still runs
    perturbed(block)
    _, a = block(x, z, c)
    _, b = block(x, z, c + 1.0)
    assert (a - b).abs().max() > 1e-4


def test_conditioning_read_is_the_only_way_the_condition_enters(tiny_config, perturbed):
    """`model.cond_read`: the conditioning tokens (width `cond_dim`) are no longer latents; each
    block reads them. Cutting every block's conditioning read makes the output blind to the class."""
    cfg = tiny_config("model.cond_read=true", "model.cond_dim=24", "model.read_mlp_dim=40")
    model = perturbed(HPDM(cfg), std=0.1)
    assert model.class_embed.embedding_dim == 24 and model.blocks[0].cond_read.kv.in_features == 24
    assert model.blocks[0].read_mlp[1].out_features == 40 and model.blocks[0].cond_mlp[1].out_features == 40
    x, c, boxes, labels = inputs(cfg)
    with torch.no_grad():
        a = model(x, c, boxes, labels)
        b = model(x, c, boxes, (labels + 1) % cfg.model.num_classes)
        assert (a - b).abs().max() > 1e-4
        for blk in model.blocks:
            blk.cond_read.out.weight.zero_()
            blk.cond_read.out.bias.zero_()
        assert torch.equal(
            model(x, c, boxes, labels), model(x, c, boxes, (labels + 1) % cfg.model.num_classes)
        )
    with pytest.raises(ConfigError, match="cond_read=true"):
        tiny_config("model.cond_dim=24")  # appended to the latents, the widths must agree


def _with_labels(model, labels):
    return lambda x, c, boxes, text=None: model(x, c, boxes, labels, text)


@pytest.mark.parametrize(
    "knobs",
    [(), ("model.cond_read=true", "model.cond_dim=24"), ("model.latent_adaln=true", "model.token_cond=true")],
    ids=["latents", "cond-read", "adaln"],
)
def test_padded_text_tokens_are_masked_out(tiny_config, perturbed, knobs):
    """Text tokens come zero-padded (hpdm.text); padded positions are masked out of every attention
    (and of the pooled conditioning), so a prompt means the same padded to any length, while the
    real tokens still steer the output."""
    cfg = tiny_config("model.text_dim=12", *knobs)
    model = perturbed(HPDM(cfg), std=0.1).eval()
    x, c, boxes, labels = inputs(cfg)
    model = _with_labels(model, labels)
    g = torch.Generator().manual_seed(1)
    text = torch.randn(2, 5, 12, generator=g)
    text[0, 3:] = 0  # prompt 0 has 3 tokens, prompt 1 all 5
    long = torch.cat([text, torch.zeros(2, 27, 12)], dim=1)  # the same prompts padded to 32
    with torch.no_grad():
        a, b = model(x, c, boxes, text=text), model(x, c, boxes, text=long)
        other = text.clone()
        other[0, :3] += 1.0
        d = model(x, c, boxes, text=other)
        none, empty = model(x, c, boxes), model(x, c, boxes, text=torch.zeros(2, 7, 12))
    assert (a - b).abs().max() < 1e-5
    assert (a[0] - d[0]).abs().max() > 1e-3 and (a[1] - d[1]).abs().max() < 1e-6
    assert (none - empty).abs().max() < 1e-5  # no prompt = an all-padding prompt
