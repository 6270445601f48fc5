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

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        q = rearrange(self.q(x), "b n (h e) -> b h n e", h=self.heads)
        k, v = rearrange(self.kv(ctx), "b n (two h e) -> two b h n e", two=2, h=self.heads)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(rearrange(y, "b h n e -> b n (h e)"))


def mlp(dim: int, ratio: float, dropout: float = 0.0) -> nn.Sequential:
    """Pre-norm MLP; `dropout` > 0 drops its output (residual dropout), appended last so the
    parameter names do not depend on it."""
    hidden = int(dim * ratio)
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
    """Read (latents ← tokens), process (K latent self-attention layers), write (tokens ← latents)."""

    def __init__(
        self,
        dim: int,
        latent_dim: int,
        heads: int,
        latent_layers: int,
        mlp_ratio: float,
        grid: tuple[int, int, int] | None = None,
        dropout: float = 0.0,
    ):
        """`grid`: the token grid, given to turn on `TokenConv`."""
        super().__init__()
        self.token_conv = TokenConv(dim, grid) if grid is not None else None
        self.read_norm_z, self.read_norm_x = nn.LayerNorm(latent_dim), nn.LayerNorm(dim)
        self.read = Attention(latent_dim, dim, heads)
        self.read_mlp = mlp(latent_dim, mlp_ratio, dropout)
        self.process_norm = nn.ModuleList(nn.LayerNorm(latent_dim) for _ in range(latent_layers))
        self.process = nn.ModuleList(Attention(latent_dim, latent_dim, heads) for _ in range(latent_layers))
        self.process_mlp = nn.ModuleList(mlp(latent_dim, mlp_ratio, dropout) for _ in range(latent_layers))
        self.write_norm_x, self.write_norm_z = nn.LayerNorm(dim), nn.LayerNorm(latent_dim)
        self.write = Attention(dim, latent_dim, heads)
        self.write_mlp = mlp(dim, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, n, d) data tokens, z (N, m + c, d_lat) latents and conditioning tokens."""
        if self.token_conv is not None:
            x = self.token_conv(x)
        z = z + self.read(self.read_norm_z(z), self.read_norm_x(x))
        z = z + self.read_mlp(z)
        for norm, attn, ff in zip(self.process_norm, self.process, self.process_mlp):
            h = norm(z)
            z = z + attn(h, h)
            z = z + ff(z)
        x = x + self.write(self.write_norm_x(x), self.write_norm_z(z))
        x = x + self.write_mlp(x)
        return x, z


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
