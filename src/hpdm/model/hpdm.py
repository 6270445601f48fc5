"""The HPDM network: a RIN backbone over a pyramid of patches, with deep context fusion (DCF)
and adaptive computation (AC) — paper §4, DESIGN.md §3.

Levels are folded into the batch: tensors carry a level axis `(B, L, ...)` and every block runs
once on `(B * L_b, ...)`, where `L_b = levels_per_block[b]` is the prefix of levels block `b`
processes. Weights are shared across levels; every level has its own learned latents. The only
path between levels is DCF, which reads coarser levels' block inputs at the finer patch's token
centres, so information flows coarse → fine only. With `model.cube0` level 0 has its own token
grid and runs through each block in a call of its own.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from hpdm.config import Config, ModelConfig, levels_per_block
from hpdm.pyramid import absolute_coords, relative_grid, token_grid


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
        token_attn: bool = False,
    ):
        super().__init__()
        # optional local mixing of the data tokens (a depthwise 3x3x3 convolution over the token
        # grid, "PEG"), off in the paper's RIN; `grid` turns it on
        self.grid = grid
        self.token_conv = nn.Conv3d(dim, dim, 3, padding=1, groups=dim) if grid is not None else None
        # optional self-attention among the data tokens of one patch (not in RIN, where tokens
        # meet only through the latents); its output projection starts at zero (a no-op)
        self.token_norm = nn.LayerNorm(dim) if token_attn else None
        self.token_attn = Attention(dim, dim, heads) if token_attn else None
        self.read_norm_z, self.read_norm_x = nn.LayerNorm(latent_dim), nn.LayerNorm(dim)
        self.read = Attention(latent_dim, dim, heads)
        self.read_mlp = mlp(latent_dim, mlp_ratio, dropout)
        self.process_norm = nn.ModuleList(nn.LayerNorm(latent_dim) for _ in range(latent_layers))
        self.process = nn.ModuleList(Attention(latent_dim, latent_dim, heads) for _ in range(latent_layers))
        self.process_mlp = nn.ModuleList(mlp(latent_dim, mlp_ratio, dropout) for _ in range(latent_layers))
        self.write_norm_x, self.write_norm_z = nn.LayerNorm(dim), nn.LayerNorm(latent_dim)
        self.write = Attention(dim, latent_dim, heads)
        self.write_mlp = mlp(dim, mlp_ratio, dropout)

    def forward(
        self, x: torch.Tensor, z: torch.Tensor, grid: tuple[int, int, int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`grid`: the token grid of x when it is not the one the block was built for (level 0's
        own grid with `model.cube0`); the convolution's weights do not depend on it."""
        if self.token_conv is not None:
            f, h, w = grid or self.grid
            g = rearrange(x, "b (f h w) d -> b d f h w", f=f, h=h, w=w)
            x = x + rearrange(self.token_conv(g), "b d f h w -> b (f h w) d")
        if self.token_attn is not None:
            h = self.token_norm(x)
            x = x + self.token_attn(h, h)
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


class HPDM(nn.Module):
    """Hierarchical patch denoiser `F(c_in·y, c_noise)` for a stack of pyramid levels."""

    def __init__(self, cfg: Config):
        super().__init__()
        m: ModelConfig = cfg.model
        self.cfg = m
        self.num_levels = cfg.pyramid.num_levels
        self.patch = tuple(cfg.pyramid.patch)
        self.cube = tuple(m.cube)
        self.grid = token_grid(self.patch, self.cube)
        self.num_tokens = math.prod(self.grid)
        # level 0 may have its own, smaller cube: then it has its own tokenizer, positions and
        # detokenizer, and runs through each block in a call of its own (`split0`)
        self.cube0 = tuple(m.cube0) if m.cube0 is not None else self.cube
        self.split0 = self.cube0 != self.cube
        self.grid0 = token_grid(self.patch, self.cube0)
        self.num_tokens0 = math.prod(self.grid0)
        self.levels_per_block = levels_per_block(cfg)
        self.deep = m.fusion == "deep"
        self.shallow = m.fusion == "shallow"
        self.activation_checkpointing = False
        self._pair_cache: dict = {}
        d, dl = m.dim, m.latent_dim
        # shallow fusion or pixel context: the previous level's RGB as 3 extra input channels
        self.pixels = self.shallow or m.pixel_context
        in_ch = 6 if self.pixels else 3
        cube_vol = math.prod(self.cube)

        self.tokenizer = nn.Linear(in_ch * cube_vol, d)
        self.pos = nn.Parameter(torch.randn(self.num_tokens, d) * 0.02)
        self.detok_norm = nn.LayerNorm(d)
        self.detokenizer = nn.Linear(d, 3 * cube_vol)
        if self.split0:
            self.tokenizer0 = nn.Linear(in_ch * math.prod(self.cube0), d)
            self.pos0 = nn.Parameter(torch.randn(self.num_tokens0, d) * 0.02)
            self.detokenizer0 = nn.Linear(d, 3 * math.prod(self.cube0))

        self.latents = nn.Parameter(torch.randn(self.num_levels, m.num_latents, dl) * 0.02)
        self.noise_embed = FourierEmbedding(dl)
        self.level_embed = nn.Embedding(self.num_levels, dl)
        self.class_embed = nn.Embedding(m.num_classes + 1, dl) if m.num_classes > 0 else None
        self.text_proj = nn.Linear(m.text_dim, dl) if m.text_dim > 0 else None
        # latent self-conditioning (RIN): latents start from z_init + Linear(LN(previous latents))
        self.self_cond = nn.Sequential(nn.LayerNorm(dl), nn.Linear(dl, dl)) if m.self_cond > 0 else None
        # direct conditioning of the data tokens: + Linear(SiLU(sum of the conditioning tokens))
        self.token_cond = nn.Sequential(nn.SiLU(), nn.Linear(dl, d)) if m.token_cond else None

        self.blocks = nn.ModuleList(
            RINBlock(
                d,
                dl,
                m.heads,
                m.latent_layers,
                m.mlp_ratio,
                self.grid if m.token_conv else None,
                m.dropout,
                m.token_attn,
            )
            for _ in range(m.num_blocks)
        )
        # DCF layers only where a block processes a level that has coarser levels.
        self.coord_dim = 6 if m.use_coords else 0
        self.fusion = nn.ModuleDict()
        if self.deep:
            for b, nb in enumerate(self.levels_per_block):
                if nb > 1:
                    self.fusion[str(b)] = nn.Linear(2 * d + self.coord_dim, d)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                nn.init.xavier_uniform_(mod.weight)
                nn.init.zeros_(mod.bias)
        for lin in self.fusion.values():  # identity on the activations, zero on context and coords
            nn.init.zeros_(lin.weight)
            with torch.no_grad():
                lin.weight[:, : self.cfg.dim].copy_(torch.eye(self.cfg.dim))
        nn.init.zeros_(self.detokenizer.weight)  # start as D = c_skip·x (DiT-style zero output)
        if self.split0:
            nn.init.zeros_(self.detokenizer0.weight)
        if self.self_cond is not None:  # previous latents start with no effect
            nn.init.zeros_(self.self_cond[1].weight)
        if self.token_cond is not None:  # starts as a no-op
            nn.init.zeros_(self.token_cond[1].weight)
        for blk in self.blocks:  # token self-attention starts as a no-op
            if blk.token_attn is not None:
                nn.init.zeros_(blk.token_attn.out.weight)
        nn.init.normal_(self.level_embed.weight, std=0.02)
        if self.class_embed is not None:
            nn.init.normal_(self.class_embed.weight, std=0.02)

    # -----------------------------------------------------------------------------------------
    # pieces

    def null_class(self) -> int:
        return self.cfg.num_classes

    def _grid(self, level0: bool) -> tuple[int, int, int]:
        return self.grid0 if level0 and self.split0 else self.grid

    def _tokenize(self, x: torch.Tensor, level0: bool = False) -> torch.Tensor:
        own = level0 and self.split0
        cf, ch, cw = self.cube0 if own else self.cube
        t = rearrange(x, "n c (f cf) (h ch) (w cw) -> n (f h w) (cf ch cw c)", cf=cf, ch=ch, cw=cw)
        return self.tokenizer0(t) + self.pos0 if own else self.tokenizer(t) + self.pos

    def _detokenize(self, t: torch.Tensor, level0: bool = False) -> torch.Tensor:
        own = level0 and self.split0
        cf, ch, cw = self.cube0 if own else self.cube
        nf, nh, nw = self._grid(level0)
        y = (self.detokenizer0 if own else self.detokenizer)(self.detok_norm(t))
        return rearrange(
            y, "n (f h w) (cf ch cw c) -> n c (f cf) (h ch) (w cw)", f=nf, h=nh, w=nw, cf=cf, ch=ch, cw=cw
        )

    def _cond_tokens(
        self,
        c_noise: torch.Tensor,
        level_ids: torch.Tensor,
        labels: torch.Tensor | None,
        text: torch.Tensor | None,
    ) -> torch.Tensor:
        """Conditioning tokens appended to each level's latents: (B, L, c, d_lat)."""
        B, L = c_noise.shape
        toks = [
            self.noise_embed(c_noise)[:, :, None],
            self.level_embed(level_ids).expand(B, L, -1)[:, :, None],
        ]
        if self.class_embed is not None:
            if labels is None:
                labels = torch.full((B,), self.null_class(), device=c_noise.device, dtype=torch.long)
            toks.append(self.class_embed(labels)[:, None, None].expand(B, L, 1, -1))
        if self.text_proj is not None:
            if text is None:
                text = torch.zeros(B, 1, self.cfg.text_dim, device=c_noise.device)
            tt = self.text_proj(text)  # (B, T, d_lat)
            toks.append(tt[:, None].expand(B, L, -1, -1))
        return torch.cat(toks, dim=2)

    def _coords(self, offset: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        """Raw DCF coordinates per token: absolute centre (t, y, x) and patch size s → (..., n, 6)."""
        centres = absolute_coords(offset, size, self.grid)
        return torch.cat([centres, size[..., None, :].expand_as(centres)], dim=-1)

    def _sample_context(
        self,
        xs: torch.Tensor,
        src_off: torch.Tensor,
        src_size: torch.Tensor,
        tgt_off: torch.Tensor,
        tgt_size: torch.Tensor,
        pairs: torch.Tensor,
        weights: torch.Tensor,
        src_grid: tuple[int, int, int] | None = None,
    ) -> torch.Tensor:
        """Deep context for T target patches from S source patches (paper eqs. 7–8).

        xs (B, S, n, d) source activations on the token grid `src_grid` (default: the model's);
        boxes (B, S|T, 3); pairs (P, 2) of (target, source); weights (T, P) averaging matrix. One
        batched grid_sample over all pairs. Returns (B, T, n_target, d).
        """
        B, S, n, d = xs.shape
        ti, si = pairs[:, 0], pairs[:, 1]
        src = xs[:, si]  # (B, P, n, d)
        if self.cfg.detach_context:
            src = src.detach()
        f, h, w = src_grid or self.grid
        src = rearrange(src, "b p (f h w) d -> (b p) d f h w", f=f, h=h, w=w)
        grid = relative_grid(tgt_off[:, ti], tgt_size[:, ti], src_off[:, si], src_size[:, si], self.grid)
        sampled = F.grid_sample(
            src, grid.flatten(0, 1).to(src.dtype), mode="bilinear", padding_mode="border", align_corners=False
        )
        sampled = rearrange(sampled, "(b p) d f h w -> b p (f h w) d", b=B)
        return torch.einsum("tp,bpnd->btnd", weights.to(sampled.dtype), sampled)

    def _pairs(self, targets: tuple[int, ...], device) -> tuple[torch.Tensor, torch.Tensor]:
        """(target position, source level) pairs with source < target level, and the averaging matrix."""
        key = (targets, str(device))
        if key not in self._pair_cache:
            pairs = [(i, s) for i, t in enumerate(targets) for s in range(t)]
            weights = torch.zeros(len(targets), len(pairs), device=device)
            for p, (i, _) in enumerate(pairs):
                weights[i, p] = 1.0 / targets[i]
            self._pair_cache[key] = (torch.tensor(pairs, device=device, dtype=torch.long), weights)
        return self._pair_cache[key]

    def _pairs_split(self, targets: tuple[int, ...], device) -> list:
        """`_pairs` cut by source: [(pairs from level 0, weights), (pairs from levels ≥ 1 with the
        source counted from level 1, weights) or None], for level 0's own token grid."""
        key = ("split", targets, str(device))
        if key not in self._pair_cache:
            pairs, weights = self._pairs(targets, device)
            first = pairs[:, 1] == 0
            rest = pairs[~first] - torch.tensor([0, 1], device=device)
            self._pair_cache[key] = [
                (pairs[first], weights[:, first]),
                (rest, weights[:, ~first]) if len(rest) else None,
            ]
        return self._pair_cache[key]

    def _context(self, ts, own0, src_off, src_size, tgt_off, tgt_size, targets) -> torch.Tensor:
        """Averaged deep context (B, T, n, d) for the levels `targets` from every coarser level of
        the token groups `ts` (one group, or level 0 alone then the rest when `own0`)."""
        if not own0:
            pairs, w = self._pairs(targets, ts[0].device)
            return self._sample_context(ts[0], src_off, src_size, tgt_off, tgt_size, pairs, w)
        out = None
        for g, part in enumerate(self._pairs_split(targets, ts[0].device)):
            if part is None:
                continue
            a = 0 if g == 0 else 1
            ctx = self._sample_context(
                ts[g], src_off[:, a:], src_size[:, a:], tgt_off, tgt_size, *part, self._grid(g == 0)
            )
            out = ctx if out is None else out + ctx
        return out

    def _fuse(self, b: int, a: torch.Tensor, ctx: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        parts = [a, ctx] + ([coords] if self.coord_dim else [])
        return self.fusion[str(b)](torch.cat(parts, dim=-1))

    def _block(
        self, b: int, x: torch.Tensor, z: torch.Tensor, grid=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.activation_checkpointing and self.training:
            return checkpoint(self.blocks[b], x, z, grid, use_reentrant=False)
        return self.blocks[b](x, z, grid)

    def _embed(
        self,
        x,
        c_noise,
        offset,
        size,
        level_ids,
        labels,
        text,
        prev=None,
        prev_mask=None,
        pixels=None,
        own0=False,
    ):
        """Data tokens as a list of groups of levels (B, L_g, n_g, d) — all levels in one group, or
        with `own0` the first level (level 0 with its own cube) alone, then the rest — and the
        latents with the conditioning tokens (B, L, m + c, d_lat)."""
        B, L = x.shape[:2]
        if self.pixels:
            if pixels is None:
                pixels = self._shallow_context(x, offset, size)
            x = torch.cat([x, pixels], dim=2)
        groups = [x[:, :1], x[:, 1:]] if own0 else [x]
        tokens = [
            self._tokenize(g.flatten(0, 1), own0 and i == 0).view(B, g.shape[1], -1, self.cfg.dim)
            for i, g in enumerate(groups)
            if g.shape[1]
        ]
        cond = self._cond_tokens(c_noise, level_ids, labels, text)
        if self.token_cond is not None:  # (B, L, 1, d): noise level, level and condition, on every token
            add = self.token_cond(cond.sum(dim=2, keepdim=True))
            tokens = [t + a for t, a in zip(tokens, add.split([t.shape[1] for t in tokens], dim=1))]
        lat = self.latents[level_ids].expand(B, -1, -1, -1)  # (B, L, m, d_lat)
        if prev is not None:
            if self.self_cond is None:
                raise ValueError("previous latents given, but the model has model.self_cond=0")
            upd = self.self_cond(prev)
            if prev_mask is not None:  # (B, L): which level instances are self-conditioned
                upd = upd * prev_mask[:, :, None, None].to(upd.dtype)
            lat = lat + upd
        z = torch.cat([lat, cond], dim=2)  # (B, L, m + c, d_lat)
        return tokens, z

    def resample_pixels(
        self, src: torch.Tensor, src_offset: torch.Tensor, src_size: torch.Tensor, offset, size
    ) -> torch.Tensor:
        """A coarser patch's pixels src (B, 3, *patch) resampled onto the patch with box (offset,
        size) (B, 3): the pixel context of a level-ℓ tile from its level-(ℓ-1) crop."""
        grid = relative_grid(
            offset[:, None], size[:, None], src_offset[:, None], src_size[:, None], self.patch
        )
        return F.grid_sample(src, grid[:, 0], mode="bilinear", padding_mode="border", align_corners=False)

    def _shallow_context(self, x: torch.Tensor, offset: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        """Previous level's input pixels resampled onto each patch's pixel grid (zeros for level 0)."""
        B, L = x.shape[:2]
        prev = torch.zeros_like(x)
        if L > 1:
            grid = relative_grid(offset[:, 1:], size[:, 1:], offset[:, :-1], size[:, :-1], self.patch)
            src = x[:, :-1].flatten(0, 1)
            s = F.grid_sample(
                src, grid.flatten(0, 1), mode="bilinear", padding_mode="border", align_corners=False
            )
            prev = torch.cat([prev[:, :1], s.view(B, L - 1, *s.shape[1:])], dim=1)
        return prev

    # -----------------------------------------------------------------------------------------
    # forward passes

    def forward(
        self,
        x: torch.Tensor,
        c_noise: torch.Tensor,
        offset: torch.Tensor,
        size: torch.Tensor,
        labels: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        prev: torch.Tensor | None = None,
        prev_mask: torch.Tensor | None = None,
        return_latents: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Joint pass over levels 0..L-1: x (B, L, 3, *patch), c_noise (B, L), boxes (B, L, 3) → (B, L, 3, *patch).

        Self-conditioning: `prev` (B, L, m, d_lat) are latents of an earlier pass, used where
        `prev_mask` (B, L) is true (everywhere when None). `return_latents` also returns this
        pass's final latents (B, L, m, d_lat).
        """
        B, L = x.shape[:2]
        if L > self.num_levels:
            raise ValueError(f"model was built for {self.num_levels} levels, got {L}")
        level_ids = torch.arange(L, device=x.device)
        own0 = self.split0
        ts, z = self._embed(x, c_noise, offset, size, level_ids, labels, text, prev, prev_mask, own0=own0)
        coords = self._coords(offset, size) if self.deep else None
        for b, lpb in enumerate(self.levels_per_block):
            ts, z = self._stack_block(b, min(lpb, L), ts, z, offset, size, coords, own0)
        outs = [
            self._detokenize(t.flatten(0, 1), own0 and g == 0).view(B, t.shape[1], *x.shape[2:])
            for g, t in enumerate(ts)
        ]
        out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
        if return_latents:
            return out, z[:, :, : self.cfg.num_latents]
        return out

    def _stack_block(self, b, nb, ts, z, offset, size, coords, own0=False):
        """Block `b` on the first `nb` levels of a stack of token groups (DCF first); the other
        levels keep their activations. With `own0`, level 0 (its own token grid) runs in a call of
        its own; the block treats every sample alike, so this changes nothing else."""
        B = ts[0].shape[0]
        ctx = None
        if self.deep and nb > 1:  # levels 1 .. nb-1 read every coarser level's block input
            targets = tuple(range(1, nb))
            ctx = self._context(
                ts, own0, offset[:, :nb], size[:, :nb], offset[:, 1:nb], size[:, 1:nb], targets
            )
        if not own0:
            (t,) = ts
            ta, za = t[:, :nb], z[:, :nb]
            if ctx is not None:
                ta = torch.cat([ta[:, :1], self._fuse(b, ta[:, 1:], ctx, coords[:, 1:nb])], dim=1)
            to, zo = self._block(b, ta.flatten(0, 1), za.flatten(0, 1))
            t = torch.cat([to.view(B, nb, *to.shape[1:]), t[:, nb:]], dim=1)
            z = torch.cat([zo.view(B, nb, *zo.shape[1:]), z[:, nb:]], dim=1)
            return [t], z
        groups, zs = list(ts), []
        if nb > 1:  # levels 1 .. nb-1 in one call
            rest = ts[1]
            ta = rest[:, : nb - 1]
            if ctx is not None:
                ta = self._fuse(b, ta, ctx, coords[:, 1:nb])
            to, zo = self._block(b, ta.flatten(0, 1), z[:, 1:nb].flatten(0, 1))
            groups[1] = torch.cat([to.view(B, nb - 1, *to.shape[1:]), rest[:, nb - 1 :]], dim=1)
            zs = [zo.view(B, nb - 1, *zo.shape[1:])]
        t0, z0 = self._block(b, ts[0][:, 0], z[:, 0], self.grid0)
        groups[0] = t0[:, None]
        z = torch.cat([z0[:, None], *zs, z[:, nb:]], dim=1)
        return groups, z

    def context(
        self,
        x: torch.Tensor,
        c_noise: torch.Tensor,
        offset: torch.Tensor,
        size: torch.Tensor,
        tgt_offset: torch.Tensor,
        tgt_size: torch.Tensor,
        labels: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
    ) -> list[torch.Tensor | None]:
        """Fused-context inputs for a level-ℓ patch from its ℓ coarser patches, once for all steps.

        x (B, ℓ, 3, *patch) coarse patches (already preconditioned), boxes (B, ℓ, 3), target box
        (B, 3). Returns per block the averaged context (B, n, d) — or None where the block does not
        process level ℓ. Used by tiled sampling to cache what does not change between steps.
        """
        B, lvl = x.shape[:2]
        if not self.deep:
            raise ValueError("context caching needs model.fusion=deep")
        level_ids = torch.arange(lvl, device=x.device)
        own0 = self.split0
        ts, z = self._embed(x, c_noise, offset, size, level_ids, labels, text, own0=own0)
        coords = self._coords(offset, size)
        last = max(b for b, v in enumerate(self.levels_per_block) if v > lvl)
        out: list[torch.Tensor | None] = []
        for b in range(last + 1):  # later blocks never reach the target level
            lpb = self.levels_per_block[b]
            if lvl < lpb:  # the block processes the target level, so every coarse level is active
                ctx = self._context(ts, own0, offset, size, tgt_offset[:, None], tgt_size[:, None], (lvl,))
                out.append(ctx[:, 0])
            else:
                out.append(None)
            if b == last:
                break
            ts, z = self._stack_block(b, min(lpb, lvl), ts, z, offset, size, coords, own0)
        out += [None] * (len(self.levels_per_block) - len(out))
        return out

    def forward_level(
        self,
        x: torch.Tensor,
        c_noise: torch.Tensor,
        offset: torch.Tensor,
        size: torch.Tensor,
        level: int,
        context: list[torch.Tensor | None] | None,
        labels: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        prev: torch.Tensor | None = None,
        return_latents: bool = False,
        pixels: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """One level alone, given cached context from `context()`: x (B, 3, *patch), c_noise (B,), boxes (B, 3).

        `prev` (B, m, d_lat): latents of an earlier pass (self-conditioning); `return_latents`
        also returns this pass's final latents. `pixels` (B, 3, *patch): with
        `model.pixel_context`, the previous level's input resampled onto the patch
        (`resample_pixels`); required above level 0.
        """
        B = x.shape[0]
        if self.pixels:
            if pixels is None and level > 0:
                raise ValueError(
                    f"level {level} needs the previous level's pixels as context (resample_pixels)"
                )
            pixels = torch.zeros_like(x) if pixels is None else pixels
        level_ids = torch.tensor([level], device=x.device)
        own0 = level == 0 and self.split0
        ts, z = self._embed(
            x[:, None],
            c_noise[:, None],
            offset[:, None],
            size[:, None],
            level_ids,
            labels,
            text,
            prev[:, None] if prev is not None else None,
            pixels=pixels[:, None] if pixels is not None else None,
            own0=own0,
        )
        t, z = ts[0][:, 0], z[:, 0]
        grid = self.grid0 if own0 else None
        coords = self._coords(offset, size) if self.deep and level > 0 else None
        for b, lpb in enumerate(self.levels_per_block):
            if level >= lpb:
                continue
            if coords is not None:
                if context is None or context[b] is None:
                    raise ValueError(
                        f"block {b} needs the context of level {level}; compute it with context()"
                    )
                t = self._fuse(b, t, context[b], coords)
            t, z = self.blocks[b](t, z, grid)
        out = self._detokenize(t, own0).view(B, *x.shape[1:])
        if return_latents:
            return out, z[:, : self.cfg.num_latents]
        return out


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
