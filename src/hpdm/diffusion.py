"""EDM preconditioning with per-level input scaling, σ sampling and the training loss (DESIGN.md §4).

Level ℓ diffuses the scaled signal `y = x / σ_in,ℓ` with EDM preconditioning at data std
`σ_data,ℓ = σ_data / σ_in,ℓ`. With EDM's coefficients the network target
`(y − c_skip·y_noisy) / c_out` is the v-prediction target (paper §4.6).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from hpdm.config import DiffusionConfig
from hpdm.pyramid import Boxes, PyramidGeometry


class Draws(NamedTuple):
    """The random draws of one loss evaluation (`Diffusion.draw`)."""

    sigma: torch.Tensor  # (B, L) noise level per video and level
    noise: torch.Tensor  # (B, *shape) unit Gaussian noise
    drop: torch.Tensor  # (B,) bool: the condition is dropped (classifier-free guidance)
    keep: torch.Tensor  # (B, L) bool: the level carries loss (false: given as clean context)


def edm_coefficients(sigma: torch.Tensor, sigma_data: torch.Tensor | float):
    """EDM (Karras et al. 2022, Table 1): c_skip, c_out, c_in, c_noise."""
    s2 = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / s2
    c_out = sigma * sigma_data / s2.sqrt()
    c_in = 1 / s2.sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def input_scales(cfg: DiffusionConfig, geo: PyramidGeometry) -> list[float]:
    """σ_in,ℓ per level: σ_in,0 · sqrt(|V^ℓ| / |V^0|) by default, or σ_in,0 · factor^ℓ."""
    if cfg.sigma_in_factor is not None:
        return [cfg.sigma_in0 * cfg.sigma_in_factor**lvl for lvl in range(geo.num_levels)]
    return [cfg.sigma_in0 * math.sqrt(geo.voxels(lvl) / geo.voxels(0)) for lvl in range(geo.num_levels)]


def _per_level(v: float | list[float], L: int) -> torch.Tensor:
    return torch.tensor(v if isinstance(v, list) else [v] * L, dtype=torch.float32)


def _gen_device(generator: torch.Generator | None, device) -> torch.device:
    return generator.device if generator is not None else torch.device(device or "cpu")


class Diffusion:
    """Preconditioned denoiser and loss over a stack of pyramid levels."""

    def __init__(self, cfg: DiffusionConfig, geo: PyramidGeometry):
        self.cfg = cfg
        self.geo = geo
        self.sigma_in = torch.tensor(input_scales(cfg, geo), dtype=torch.float32)  # (L,)
        self.sigma_data = cfg.sigma_data / self.sigma_in  # (L,) data std in each level's scaled space
        self.P_mean = _per_level(cfg.P_mean, geo.num_levels)
        self.P_std = _per_level(cfg.P_std, geo.num_levels)
        self.level_weight = _per_level(cfg.level_weight, geo.num_levels)

    def rescale(self, x: torch.Tensor, from_level: int, to_level: int) -> torch.Tensor:
        """A video in level `from_level`'s scaled space (x / σ_in) in level `to_level`'s."""
        return x * float(self.sigma_in[from_level] / self.sigma_in[to_level])

    def context_sigma(self, value: float, level: int) -> float:
        """The σ of the noise on a finished (or given) coarse level `level`, in its scaled space,
        from a configured value (`sample.context_sigma`, `clean_context_sigma`) in
        `context_space`. Kept above 0 (as configured) because the network's noise input is ln(σ)/4."""
        value = max(float(value), 1e-3)
        return value / float(self.sigma_in[level]) if self.cfg.context_space == "data" else value

    def sample_sigma(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """An independent σ per level per video, LogNormal(P_mean, P_std): (B, L)."""
        n = torch.randn(
            batch, self.geo.num_levels, generator=generator, device=_gen_device(generator, device)
        )
        return (self.P_mean.to(n.device) + self.P_std.to(n.device) * n).exp().to(device)

    def draw(
        self,
        batch: int,
        shape: tuple[int, ...],
        generator: torch.Generator | list[torch.Generator] | None,
        device,
    ) -> Draws:
        """The loss's random draws: σ (B, L), unit noise (B, *shape), condition drop (B,) and, with
        `clean_context` > 0, which videos and levels are given as clean context (drawn last, so
        turning it on leaves the earlier draws unchanged), as the loss mask (B, L).

        A list of generators draws each video from its own, so a video's draws do not depend on
        the batch it is in (the trainer keys them by the video's position in the sample stream):
        two calls per video (its noise, then 2L + 3 uniforms for everything else — L of them once
        drew self-conditioning's mask and still keep the stream's layout), vectorised over the batch.
        """
        L = self.geo.num_levels
        if isinstance(generator, list | tuple):
            gdev = generator[0].device if generator else torch.device(device or "cpu")
            noise = torch.empty((len(generator), *shape), device=gdev)
            u = torch.empty(len(generator), 2 * L + 3, device=gdev)
            for i, g in enumerate(generator):
                noise[i].normal_(generator=g)
                u[i].uniform_(generator=g)
            u = u.to(device).double().clamp(1e-12, 1 - 1e-12)
            n_sigma = (math.sqrt(2) * torch.erfinv(2 * u[:, :L] - 1)).float()  # inverse normal CDF
            u_drop, u_chosen, u_target = u[:, L], u[:, -2], u[:, -1]
            target = 1 + (u_target * (L - 1)).long().clamp_max(max(L - 2, 0))
            return self._finish(n_sigma, noise.to(device), u_drop, u_chosen, target, shape)
        gdev = _gen_device(generator, device)
        n_sigma = torch.randn(batch, L, generator=generator, device=gdev).to(device)
        noise = torch.randn((batch, *shape), generator=generator, device=gdev).to(device)
        u_drop = torch.rand(batch, generator=generator, device=gdev).to(device)
        u_chosen = target = None
        if self.cfg.clean_context > 0 and L > 1:
            u_chosen = torch.rand(batch, generator=generator, device=gdev).to(device)
            target = torch.randint(1, L, (batch,), generator=generator, device=gdev).to(device)
        return self._finish(n_sigma, noise, u_drop, u_chosen, target, shape)

    def _finish(self, n_sigma, noise, u_drop, u_chosen, target, shape) -> Draws:
        """`draw`'s results from its raw draws (standard normals for σ, uniforms for the masks)."""
        L = self.geo.num_levels
        dev = noise.device
        sigma = (self.P_mean.to(dev) + self.P_std.to(dev) * n_sigma).exp()
        drop = u_drop < self.cfg.cond_drop
        keep = torch.ones_like(sigma, dtype=torch.bool)
        if self.cfg.clean_context > 0 and L > 1:
            given = (u_chosen < self.cfg.clean_context)[:, None] & (
                torch.arange(L, device=dev)[None] < target[:, None]
            )
            clean = [self.context_sigma(self.cfg.clean_context_sigma, lvl) for lvl in range(L)]
            sigma = torch.where(given, torch.tensor(clean, device=dev)[None].expand_as(sigma), sigma)
            keep = ~given
        return Draws(sigma, noise, drop, keep[:, : shape[0]])

    def coefficients(self, sigma: torch.Tensor, levels: int):
        """EDM coefficients for σ (B, L') of levels 0..L'-1, broadcastable over (B, L', 3, *patch)."""
        sd = self.sigma_data[:levels].to(sigma.device)
        e = (...,) + (None,) * 4
        return tuple(c[e] if k < 3 else c for k, c in enumerate(edm_coefficients(sigma, sd)))

    def denoise(
        self, net, y: torch.Tensor, sigma: torch.Tensor, boxes: Boxes, labels=None, text=None
    ) -> torch.Tensor:
        """D(y; σ) = c_skip·y + c_out·F(c_in·y, c_noise) for levels 0..L'-1: y (B, L', 3, ...) in scaled space."""
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma, y.shape[1])
        out = net(c_in * y, c_noise, boxes, labels, text)
        return c_skip * y + c_out * out

    def loss(
        self,
        net,
        x: torch.Tensor,
        boxes: Boxes,
        labels: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        null_class: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """EDM loss summed over levels. x (B, L, 3, *patch) clean patches in [-1, 1]; `net` is
        called as `net(c_in·y, c_noise, boxes, labels, text)` (an HPDM, or one wrapped, e.g.
        `SelfConditioned`).

        Returns (loss, per-sample per-level loss (B, L) detached, σ (B, L)). Conditions are
        dropped with p = cond_drop (per video, for all its levels). `generator` may be a list of
        one generator per video (see `draw`).
        """
        B, L = x.shape[:2]
        dev = x.device
        y = x / self.sigma_in.to(dev)[None, :, None, None, None, None]
        sigma, noise, drop, keep = self.draw(B, y.shape[1:], generator, dev)
        sigma = sigma[:, :L]
        if labels is not None and null_class is not None:
            labels = torch.where(drop, torch.full_like(labels, null_class), labels)
        if text is not None:
            text = text * (~drop).to(text.dtype)[:, None, None]
        e = (...,) + (None,) * 4
        D = self.denoise(net, y + sigma[e] * noise, sigma, boxes, labels, text)
        sd = self.sigma_data.to(dev)
        weight = (sigma**2 + sd**2) / (sigma * sd) ** 2  # EDM λ(σ): unit weight on the F-target
        per = weight * ((D - y) ** 2).flatten(2).mean(-1)  # (B, L)
        # levels given as clean context carry no loss (the per-level log still shows them)
        lw = self.level_weight[:L].to(dev)
        return (per * keep * lw).mean(0).sum(), per.detach(), sigma
