"""The RIN block (Jabri et al. 2023) and the small layers it is made of — paper §4.3.

A block *reads* the data tokens into a small set of latents (cross-attention), *processes* the
latents (self-attention), and *writes* them back to the tokens (cross-attention). Tokens meet
only through the latents, so the cost is linear in the number of tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange


class Attention(nn.Module):
    """Multi-head (cross-)attention; queries of width `dim` attend to a context of width `ctx_dim`."""

    def __init__(self, dim: int, ctx_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(ctx_dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, ctx: torch.Tensor, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`key_mask` (b, n_ctx) bool: which context positions may be attended to (None: all)."""
        q = rearrange(self.q(x), "b n (h e) -> b h n e", h=self.heads)
        k, v = rearrange(self.kv(ctx), "b n (two h e) -> two b h n e", two=2, h=self.heads)
        if key_mask is None:
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            y = F.scaled_dot_product_attention(q, k, v, key_mask[:, None, None, :])
        return self.out(rearrange(y, "b h n e -> b n (h e)"))


def mlp(dim: int, ratio: float, dropout: float = 0.0, hidden: int | None = None) -> nn.Sequential:
    """Pre-norm MLP of `hidden` (default dim x ratio) units; `dropout` > 0 drops its output
    (residual dropout), appended last so the parameter names do not depend on it."""
    hidden = hidden or int(dim * ratio)
    layers = [nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)]
    return nn.Sequential(*layers, *([nn.Dropout(dropout)] if dropout > 0 else []))


class TokenConv(nn.Conv3d):
    """Extension (`model.token_conv`, not in the paper's RIN): a residual depthwise 3x3x3
    convolution over one patch's token grid before the block, so neighbouring tokens mix."""

    def __init__(self, dim: int, grid: tuple[int, int, int]):
        super().__init__(dim, dim, 3, padding=1, groups=dim)
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f, h, w = self.grid
        g = rearrange(x, "b (f h w) d -> b d f h w", f=f, h=h, w=w)
        return x + rearrange(super().forward(g), "b d f h w -> b (f h w) d")


class RINBlock(nn.Module):
    """Read (latents ← tokens), process (K latent self-attention layers), write (tokens ← latents).

    With `cond_dim` > 0 the block first reads the conditioning tokens (N, c, cond_dim) into the
    latents (cross-attention and a feed-forward, Snap Video's FIT block, which HPDM-T2V uses);
    with `adaln_dim` > 0 the patch read and every latent layer are modulated by the mean
    conditioning token (adaLN-Zero: shift, scale and gate from `Linear(SiLU(c))`, zero at init).
    `read_mlp_dim` is the hidden width of the feed-forwards after the reads (default d_lat x ratio).
    """

    def __init__(
        self,
        dim: int,
        latent_dim: int,
        heads: int,
        latent_layers: int,
        mlp_ratio: float,
        grid: tuple[int, int, int] | None = None,
        dropout: float = 0.0,
        read_mlp_dim: int | None = None,
        cond_dim: int = 0,
        adaln_dim: int = 0,
    ):
        """`grid`: the token grid, given to turn on `TokenConv`."""
        super().__init__()
        self.token_conv = TokenConv(dim, grid) if grid is not None else None
        self.read_norm_z, self.read_norm_x = nn.LayerNorm(latent_dim), nn.LayerNorm(dim)
        self.read = Attention(latent_dim, dim, heads)
        self.read_mlp = mlp(latent_dim, mlp_ratio, dropout, read_mlp_dim)
        self.process_norm = nn.ModuleList(nn.LayerNorm(latent_dim) for _ in range(latent_layers))
        self.process = nn.ModuleList(Attention(latent_dim, latent_dim, heads) for _ in range(latent_layers))
        self.process_mlp = nn.ModuleList(mlp(latent_dim, mlp_ratio, dropout) for _ in range(latent_layers))
        self.write_norm_x, self.write_norm_z = nn.LayerNorm(dim), nn.LayerNorm(latent_dim)
        self.write = Attention(dim, latent_dim, heads)
        self.write_mlp = mlp(dim, mlp_ratio, dropout)
        self.cond_read = None
        if cond_dim > 0:
            self.cond_norm_z, self.cond_norm_c = nn.LayerNorm(latent_dim), nn.LayerNorm(cond_dim)
            self.cond_read = Attention(latent_dim, cond_dim, heads)
            self.cond_mlp = mlp(latent_dim, mlp_ratio, dropout, read_mlp_dim)
        self.modulation = None
        if adaln_dim > 0:  # one per modulated layer: the patch read, then each latent layer
            self.modulation = nn.ModuleList(
                nn.Sequential(nn.SiLU(), nn.Linear(adaln_dim, 6 * latent_dim))
                for _ in range(1 + latent_layers)
            )

    def reset_modulation(self) -> None:
        """adaLN-Zero: every modulated layer starts as the identity (its gates are zero)."""
        if self.modulation is not None:
            for m in self.modulation:
                nn.init.zeros_(m[1].weight)
                nn.init.zeros_(m[1].bias)

    def forward(
        self,
        x: torch.Tensor,
        z: torch.Tensor,
        cond: torch.Tensor | None = None,
        cond_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, n, d) data tokens, z (N, m [+ c], d_lat) latents (with the conditioning tokens
        appended, unless the block reads them), cond (N, c, cond_dim) the conditioning tokens when
        the block reads them or is modulated by them; `cond_mask` (N, c) bool: the conditioning
        tokens that exist (padded text tokens do not), as keys and in the adaLN mean."""
        if self.token_conv is not None:
            x = self.token_conv(x)
        z_mask = None  # keys of the latent self-attention and of the write
        if self.cond_read is not None:
            z = z + self.cond_read(self.cond_norm_z(z), self.cond_norm_c(cond), cond_mask)
            z = z + self.cond_mlp(z)
        elif cond_mask is not None:  # the conditioning tokens are the last c latents
            m = z.shape[1] - cond_mask.shape[1]
            z_mask = torch.cat([cond_mask.new_ones(len(z), m), cond_mask], dim=1)
        mods = None
        if self.modulation:
            if cond_mask is None:
                pooled = cond.mean(1)
            else:
                w = cond_mask[..., None].to(cond.dtype)
                pooled = (cond * w).sum(1) / w.sum(1)
            mods = [m(pooled)[:, None].chunk(6, dim=-1) for m in self.modulation]
        mod = mods[0] if mods else None
        z = z + _gated(self.read(_shifted(self.read_norm_z(z), mod, 0), self.read_norm_x(x)), mod, 0)
        z = z + _gated(_ff(self.read_mlp, z, mod), mod, 1)
        for i, (norm, attn, ff) in enumerate(zip(self.process_norm, self.process, self.process_mlp)):
            mod = mods[i + 1] if mods else None
            h = _shifted(norm(z), mod, 0)
            z = z + _gated(attn(h, h, z_mask), mod, 0)
            z = z + _gated(_ff(ff, z, mod), mod, 1)
        x = x + self.write(self.write_norm_x(x), self.write_norm_z(z), z_mask)
        x = x + self.write_mlp(x)
        return x, z


def _shifted(h: torch.Tensor, mod, k: int) -> torch.Tensor:
    """adaLN: the normalised h scaled and shifted by the k-th (shift, scale) pair of `mod`."""
    return h if mod is None else h * (1 + mod[3 * k + 1]) + mod[3 * k]


def _gated(y: torch.Tensor, mod, k: int) -> torch.Tensor:
    return y if mod is None else mod[3 * k + 2] * y


def _ff(ff: nn.Sequential, z: torch.Tensor, mod) -> torch.Tensor:
    """A pre-norm MLP (`mlp`), its norm's output modulated when `mod` is given."""
    if mod is None:
        return ff(z)
    h = _shifted(ff[0](z), mod, 1)
    for layer in list(ff)[1:]:
        h = layer(h)
    return h


class FourierEmbedding(nn.Module):
    """Sinusoidal embedding of the scalar `c_noise` followed by an MLP."""

    def __init__(self, out_dim: int, freq_dim: int = 128, max_period: float = 1e4):
        super().__init__()
        freqs = torch.exp(-math.log(max_period) * torch.arange(freq_dim // 2) / (freq_dim // 2))
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(freq_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        a = c[..., None].float() * 250.0 * self.freqs  # c_noise = ln(σ)/4 spans about ±1.5
        return self.mlp(torch.cat([a.cos(), a.sin()], dim=-1))
