"""Latent self-conditioning (RIN, Jabri et al. 2023; not in the HPDM paper): a network's final
latents of one pass start the next pass's latents, as `z_init + Linear(LN(z_prev))`.

`SelfConditioned` wraps a network for training (a gradient-free first pass, then the pass that
learns, self-conditioned for a share `rate` of the (video, level) pairs); at sampling,
`LatentCarry` carries one tile batch's latents from one denoiser call to the next. The network
itself only reads `carry.prev` and writes `carry.final` (`HPDM.forward(..., latents=carry)`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


class SelfCondProjection(nn.Sequential):
    """`Linear(LN(z_prev))`, added to the learned initial latents; zero at the start (a no-op)."""

    def __init__(self, latent_dim: int):
        super().__init__(nn.LayerNorm(latent_dim), nn.Linear(latent_dim, latent_dim))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self[1].weight)


@dataclass
class LatentCarry:
    """Latents between passes: `prev` (B, L, m, d_lat) start this pass where `mask` (B, L) is true
    (everywhere when None); the network sets `final` to this pass's final latents."""

    prev: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    final: torch.Tensor | None = None

    def start(self, latents: torch.Tensor, project: nn.Module | None) -> torch.Tensor:
        """The initial latents (B, L, m, d_lat) of a pass, given the learned ones."""
        if self.prev is None:
            return latents
        if project is None:
            raise ValueError("previous latents given, but the model has model.self_cond=0")
        upd = project(self.prev)
        if self.mask is not None:
            upd = upd * self.mask[:, :, None, None].to(upd.dtype)
        return latents + upd

    def next(self) -> LatentCarry:
        """The carry for the next call: this pass's final latents become the previous ones."""
        return LatentCarry(prev=self.final)


class SelfConditioned:
    """A network `net(x, c_noise, boxes, labels, text, latents=…)` trained with self-conditioning:
    called like the network, it runs a gradient-free first pass and feeds its final latents to the
    second pass for each (video, level) with probability `rate` (drawn from the global generator,
    which the trainer reseeds every step, like dropout)."""

    def __init__(self, net, rate: float):
        self.net, self.rate = net, rate

    def __call__(self, x, c_noise, boxes, labels=None, text=None) -> torch.Tensor:
        first = LatentCarry()
        with torch.no_grad():
            self.net(x, c_noise, boxes, labels, text, latents=first)
        mask = torch.rand(x.shape[:2], device=x.device) < self.rate
        return self.net(x, c_noise, boxes, labels, text, latents=LatentCarry(first.final, mask))
