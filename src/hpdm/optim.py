"""Optimisers and schedules: LAMB (You et al. 2019, the paper's optimiser), AdamW, warm-up + cosine."""

from __future__ import annotations

import math

import torch
from torch.optim import Optimizer


class LAMB(Optimizer):
    """Layer-wise adaptive moments (You et al. 2019, Algorithm 2).

    m ← β1 m + (1-β1) g;  v ← β2 v + (1-β2) g²;  m̂, v̂ bias-corrected;
    u = m̂ / (√v̂ + ε) + λ p;  p ← p − lr · (‖p‖ / ‖u‖) · u   (trust ratio 1 when either norm is 0).
    """

    def __init__(
        self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0
    ):
        if lr <= 0:
            raise ValueError(f"LAMB: learning rate must be positive, got {lr}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"].item()
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(p.grad, 1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                m_hat = m / (1 - beta1**t)
                v_hat = v / (1 - beta2**t)
                update = m_hat / (v_hat.sqrt() + group["eps"])
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                w_norm, u_norm = p.norm(), update.norm()
                trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                p.add_(update * trust, alpha=-group["lr"])
        return loss


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms, embeddings, latents and positional tables (1-D or tables)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or any(k in name for k in ("embed", "latents", "pos")):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, name: str, lr: float, weight_decay: float, betas) -> Optimizer:
    groups = param_groups(model, weight_decay)
    if name == "lamb":
        return LAMB(groups, lr=lr, betas=betas)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay)


def lr_lambda(warmup: int, total: int, schedule: str, min_ratio: float):
    """Linear warm-up, then cosine decay to `min_ratio` (or constant)."""

    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant" or total <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f
