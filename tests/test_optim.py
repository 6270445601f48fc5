"""LAMB against its update formula, parameter groups, and the warm-up + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch

from hpdm.optim import LAMB, build_optimizer, lr_lambda, param_groups

pytestmark = pytest.mark.usefixtures("single_thread")


def _lamb_by_hand(p, grads, lr, b1, b2, eps, wd):
    """You et al. 2019, Algorithm 2, one tensor = one layer."""
    m = torch.zeros_like(p)
    v = torch.zeros_like(p)
    trusts = []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        u = m_hat / (v_hat.sqrt() + eps) + wd * p
        trust = (p.norm() / u.norm()).item()
        trusts.append(trust)
        p = p - lr * trust * u
    return p, trusts


def test_lamb_matches_update_formula_for_two_steps():
    lr, betas, eps, wd = 0.1, (0.9, 0.999), 1e-6, 0.01
    p0 = torch.tensor([[3.0, -4.0, 1.5], [0.5, 2.0, -1.0]], dtype=torch.float64)
    grads = [
        torch.tensor([[0.1, 0.2, -0.3], [0.05, -0.4, 0.0]], dtype=torch.float64),
        torch.tensor([[-0.2, 0.1, 0.3], [0.5, 0.1, -0.2]], dtype=torch.float64),
    ]
    param = torch.nn.Parameter(p0.clone())
    opt = LAMB([param], lr=lr, betas=betas, eps=eps, weight_decay=wd)
    for g in grads:
        param.grad = g.clone()
        opt.step()
    want, trusts = _lamb_by_hand(p0, grads, lr, *betas, eps, wd)
    torch.testing.assert_close(param.detach(), want, rtol=1e-12, atol=1e-12)
    # the layer-wise trust ratio matters here: without it the step would be several times smaller
    assert all(t > 2 for t in trusts)
    assert opt.state[param]["step"].item() == 2


def test_lamb_trust_ratio_is_one_for_zero_weights():
    param = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    opt = LAMB([param], lr=0.5, weight_decay=0.1)
    param.grad = torch.tensor([1.0, -2.0, 0.0, 4.0], dtype=torch.float64)
    opt.step()
    # u = m̂ / (√v̂ + ε) = sign(g) (up to ε) and ‖p‖ = 0 → trust 1: p = −lr · u
    torch.testing.assert_close(
        param.detach(), torch.tensor([-0.5, 0.5, 0.0, -0.5], dtype=torch.float64), atol=1e-6, rtol=0
    )
    with pytest.raises(ValueError, match="learning rate"):
        LAMB([param], lr=0.0)


def test_param_groups_exclude_norms_biases_embeddings():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)
            self.norm = torch.nn.LayerNorm(4)
            self.class_embed = torch.nn.Embedding(3, 4)
            self.latents = torch.nn.Parameter(torch.zeros(2, 4))
            self.pos = torch.nn.Parameter(torch.zeros(5, 4))

    model = Tiny()
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert [p is model.lin.weight for p in decay["params"]] == [True]
    assert len(no_decay["params"]) == 6
    assert isinstance(build_optimizer(model, "lamb", 1e-3, 0.01, (0.9, 0.99)), LAMB)
    adamw = build_optimizer(model, "adamw", 1e-3, 0.01, (0.9, 0.99))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 0.01


def test_lr_schedule_warmup_and_cosine():
    f = lr_lambda(warmup=10, total=110, schedule="cosine", min_ratio=0.1)
    warm = [f(s) for s in range(10)]
    assert warm == pytest.approx([(s + 1) / 10 for s in range(10)])  # linear, reaching 1 at the end
    assert f(10) == pytest.approx(1.0)
    assert f(35) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert f(60) == pytest.approx(0.55)  # half-way: the mean of 1 and min_ratio
    assert f(110) == pytest.approx(0.1)  # cosine end value
    assert f(500) == pytest.approx(0.1)  # and it stays there
    assert all(f(s) >= f(s + 1) for s in range(10, 110))
    const = lr_lambda(warmup=4, total=100, schedule="constant", min_ratio=0.1)
    assert [const(s) for s in (0, 3, 4, 99)] == pytest.approx([0.25, 1.0, 1.0, 1.0])
    assert lr_lambda(0, 100, "cosine", 0.0)(0) == pytest.approx(1.0)
