"""The HPDM network: a RIN backbone over a pyramid of patches, with deep context fusion (DCF)
and adaptive computation (AC) — paper §4, DESIGN.md §3.

Levels are folded into the batch: tensors carry a level axis `(B, L, ...)` and every block runs
once on `(B * L_b, ...)`, where `L_b = levels_per_block[b]` is the prefix of levels block `b`
processes (AC: the finer levels skip the early blocks). Weights are shared across levels; every
level has its own learned latents. The only path between levels is DCF (`fusion.py`), which reads
the coarser levels' block inputs at the finer patch's token centres, so information flows
coarse → fine only.

One block loop (`_blocks`) serves the three ways the network runs:
- `forward`: all levels of a pyramid jointly (training);
- `level_context`: the finished coarser levels of a tile, once per level (sampling, paper §4.4);
- `forward_level`: one level's tiles alone with that context (sampling).

The sampler (`hpdm.sampling`) uses only `level_context`, `forward_level`, `context_bytes` (to
size its cache), `null_class` and whether `self_cond` is set; any network with these can be
sampled (tests/test_sampling.py samples a closed-form Gaussian denoiser this way).

Options beyond the paper, each one switch (docs/extensions.md): `model.token_conv` (inside the
block), `model.token_cond` (the conditioning added to every data token), `model.fusion`
= shallow | deep+pixels (pixel context), `model.self_cond` (`self_cond.py`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from hpdm.config import Config, ModelConfig, levels_per_block
from hpdm.model.blocks import FourierEmbedding, RINBlock
from hpdm.model.fusion import DeepFusion, LevelContext, previous_level_pixels, resample_pixels
from hpdm.model.self_cond import LatentCarry, SelfCondProjection
from hpdm.pyramid import Boxes, token_grid


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
        self.levels_per_block = levels_per_block(cfg)
        self.deep = m.fusion in ("deep", "deep+pixels")  # deep context fusion (the paper)
        self.pixels = m.fusion in ("shallow", "deep+pixels")  # the previous level's RGB as 3 more channels
        self.activation_checkpointing = False
        d, dl = m.dim, m.latent_dim
        cube_vol = math.prod(self.cube)

        self.tokenizer = nn.Linear((6 if self.pixels else 3) * cube_vol, d)
        self.pos = nn.Parameter(torch.randn(self.num_tokens, d) * 0.02)
        self.detok_norm = nn.LayerNorm(d)
        self.detokenizer = nn.Linear(d, 3 * cube_vol)
        self.latents = nn.Parameter(torch.randn(self.num_levels, m.num_latents, dl) * 0.02)
        cd = m.cond_dim or dl  # the conditioning tokens' width
        self.noise_embed = FourierEmbedding(cd)
        self.level_embed = nn.Embedding(self.num_levels, cd)
        self.class_embed = nn.Embedding(m.num_classes + 1, cd) if m.num_classes > 0 else None
        self.text_proj = nn.Linear(m.text_dim, cd) if m.text_dim > 0 else None
        self.self_cond = SelfCondProjection(dl) if m.self_cond > 0 else None
        # extension: the conditioning tokens, summed, added to every data token (Linear(SiLU(·)))
        self.token_cond = nn.Sequential(nn.SiLU(), nn.Linear(cd, d)) if m.token_cond else None
        conv_grid = self.grid if m.token_conv else None
        self.blocks = nn.ModuleList(
            RINBlock(
                d,
                dl,
                m.heads,
                m.latent_layers,
                m.mlp_ratio,
                conv_grid,
                m.dropout,
                read_mlp_dim=m.read_mlp_dim or None,
                cond_dim=cd if m.cond_read else 0,
                adaln_dim=cd if m.latent_adaln else 0,
            )
            for _ in range(m.num_blocks)
        )
        self.block_cond = m.cond_read or m.latent_adaln  # the blocks take the conditioning tokens
        self.fusion = DeepFusion(
            self.levels_per_block if self.deep else [], d, self.grid, m.use_coords, m.detach_context
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                nn.init.xavier_uniform_(mod.weight)
                nn.init.zeros_(mod.bias)
        self.fusion.reset_parameters()
        nn.init.zeros_(self.detokenizer.weight)  # start as D = c_skip·x (DiT-style zero output)
        if self.self_cond is not None:
            self.self_cond.reset_parameters()
        if self.token_cond is not None:  # starts as a no-op
            nn.init.zeros_(self.token_cond[1].weight)
        for blk in self.blocks:
            blk.reset_modulation()
        nn.init.normal_(self.level_embed.weight, std=0.02)
        if self.class_embed is not None:
            nn.init.normal_(self.class_embed.weight, std=0.02)

    def null_class(self) -> int:
        """The class id that means "no class" (classifier-free guidance's unconditional branch)."""
        return self.cfg.num_classes

    def context_bytes(self, patches: int, level: int) -> int:
        """Memory of `level_context` for `patches` level-`level` patches (the sampler's cache)."""
        blocks = sum(1 for v in self.levels_per_block if v > level) if self.deep else 0
        return (
            patches * (blocks * self.num_tokens * self.cfg.dim + 3 * math.prod(self.patch) * self.pixels) * 4
        )

    # -----------------------------------------------------------------------------------------
    # the three passes

    def forward(
        self,
        x: torch.Tensor,
        c_noise: torch.Tensor,
        boxes: Boxes,
        labels: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        latents: LatentCarry | None = None,
    ) -> torch.Tensor:
        """Joint pass over levels 0..L-1: x (B, L, 3, *patch), c_noise (B, L), boxes (B, L, 3) → (B, L, 3, *patch).

        `latents`: self-conditioning's carry (`self_cond.py`), read and written when given.
        """
        B, L = x.shape[:2]
        if L > self.num_levels:
            raise ValueError(f"model was built for {self.num_levels} levels, got {L}")
        pixels = previous_level_pixels(x, boxes, self.patch) if self.pixels else None
        t, z, c, mask = self._embed(x, c_noise, 0, labels, text, pixels, latents)
        t, z = self._blocks(t, z, c, boxes, 0, mask=mask)
        return self._finish(t, z, latents)

    def level_context(
        self,
        x: torch.Tensor,
        c_noise: torch.Tensor,
        boxes: Boxes,
        target: Boxes,
        labels: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
    ) -> LevelContext:
        """What a level-ℓ patch with box `target` (N, 3) takes from its ℓ coarser patches x
        (N, ℓ, 3, *patch) (already preconditioned, c_noise (N, ℓ), boxes (N, ℓ, 3)). It does not
        change while level ℓ is sampled, so tiled sampling computes it once (paper §4.4)."""
        lvl = x.shape[1]
        pixels = resample_pixels(x[:, -1], boxes[:, -1], target, self.patch) if self.pixels else None
        blocks: list[torch.Tensor | None] = [None] * len(self.levels_per_block)
        if not self.deep:
            return LevelContext(blocks, pixels)
        last = max(b for b, v in enumerate(self.levels_per_block) if v > lvl)
        tgt = target[:, None]

        def tap(b: int, t: torch.Tensor) -> bool:  # block b's inputs: the context of level ℓ there
            if self.levels_per_block[b] > lvl:
                blocks[b] = self.fusion.context(t, boxes, tgt, (lvl,))[:, 0]
            return b == last  # later blocks never reach level ℓ

        coarse_pixels = previous_level_pixels(x, boxes, self.patch) if self.pixels else None
        t, z, c, mask = self._embed(x, c_noise, 0, labels, text, coarse_pixels, None)
        self._blocks(t, z, c, boxes, 0, tap=tap, mask=mask)
        return LevelContext(blocks, pixels)

    def forward_level(
        self,
        x: torch.Tensor,
        c_noise: torch.Tensor,
        boxes: Boxes,
        level: int,
        context: LevelContext | None,
        labels: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        latents: LatentCarry | None = None,
    ) -> torch.Tensor:
        """Level `level` alone: x (N, 3, *patch), c_noise (N,), boxes (N, 3), and above level 0
        the `context` of its coarser levels from `level_context` → (N, 3, *patch). A `latents`
        carry holds (N, 1, m, d_lat) latents here (one level)."""
        if level > 0 and context is None:
            raise ValueError(
                f"level {level} needs the context of its coarser levels; compute it with level_context()"
            )
        pixels = None
        if self.pixels:
            pixels = (context.pixels if level > 0 else torch.zeros_like(x))[:, None]
        t, z, c, mask = self._embed(x[:, None], c_noise[:, None], level, labels, text, pixels, latents)
        t, z = self._blocks(t, z, c, boxes[:, None], level, context, mask=mask)
        return self._finish(t, z, latents)[:, 0]

    # -----------------------------------------------------------------------------------------
    # pieces

    def _embed(self, x, c_noise, level, labels, text, pixels, latents):
        """Data tokens (B, L, n, d) of levels level..level+L-1, their latents (B, L, m, d_lat) with
        the conditioning tokens appended (B, L, m + c, d_lat), and when the blocks read (or are
        modulated by) the conditioning tokens instead, those (B, L, c, cond_dim) apart; and the
        conditioning tokens' key mask (B, c) bool (None without text): padded text tokens are off."""
        B, L = x.shape[:2]
        if pixels is not None:
            x = torch.cat([x, pixels], dim=2)
        cf, ch, cw = self.cube
        tokens = rearrange(
            x.flatten(0, 1), "n c (f cf) (h ch) (w cw) -> n (f h w) (cf ch cw c)", cf=cf, ch=ch, cw=cw
        )
        t = (self.tokenizer(tokens) + self.pos).view(B, L, -1, self.cfg.dim)
        level_ids = torch.arange(level, level + L, device=x.device)
        cond, mask = self._cond_tokens(c_noise, level_ids, labels, text)
        if self.token_cond is not None:  # (B, L, 1, d): noise level, level and condition, on every token
            on = cond if mask is None else cond * mask[:, None, :, None].to(cond.dtype)
            t = t + self.token_cond(on.sum(dim=2, keepdim=True))
        lat = self.latents[level_ids].expand(B, -1, -1, -1)  # (B, L, m, d_lat)
        if latents is not None:
            lat = latents.start(lat, self.self_cond)
        if self.cfg.cond_read:
            return t, lat, cond, mask
        return t, torch.cat([lat, cond], dim=2), (cond if self.block_cond else None), mask

    def _cond_tokens(self, c_noise, level_ids, labels, text) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Conditioning tokens of each level (B, L, c, cond_dim) and their key mask (B, c) bool.

        Text tokens (B, T, text_dim) come padded with exact zeros (`hpdm.text` encoders zero every
        position past a prompt's tokens, and a dropped or absent prompt is all zeros); those
        positions are masked out of every attention that reads the conditioning tokens, so a
        prompt means the same at any padded length. The mask is None without text."""
        B, L = c_noise.shape
        toks = [
            self.noise_embed(c_noise)[:, :, None],
            self.level_embed(level_ids).expand(B, L, -1)[:, :, None],
        ]
        if self.class_embed is not None:
            if labels is None:
                labels = torch.full((B,), self.null_class(), device=c_noise.device, dtype=torch.long)
            toks.append(self.class_embed(labels)[:, None, None].expand(B, L, 1, -1))
        mask = None
        if self.text_proj is not None:
            if text is None:
                text = torch.zeros(B, 1, self.cfg.text_dim, device=c_noise.device)
            toks.append(self.text_proj(text)[:, None].expand(B, L, -1, -1))
            fixed = torch.ones(B, len(toks) - 1, dtype=torch.bool, device=text.device)
            mask = torch.cat([fixed, text.ne(0).any(dim=-1)], dim=1)
        return torch.cat(toks, dim=2), mask

    def _blocks(
        self,
        t: torch.Tensor,
        z: torch.Tensor,
        c: torch.Tensor | None,
        boxes: Boxes,
        level: int,
        context: LevelContext | None = None,
        tap: Callable[[int, torch.Tensor], bool] | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The block loop over a stack of levels level..level+L-1: tokens t (B, L, n, d), latents z,
        conditioning tokens c for the blocks (or None).

        Block b runs on the levels below `levels_per_block[b]` (a prefix of the stack; the others
        keep their activations). Before it, DCF gives each of them every coarser level's block
        input: from the stack itself, or for a level sampled alone, from its cached `context`.
        `tap(b, inputs)` sees the block inputs first and ends the loop by returning True.
        """
        B, L = t.shape[:2]
        coords = self.fusion.coords(boxes) if self.deep and (L > 1 or level > 0) else None
        for b, lpb in enumerate(self.levels_per_block):
            nb = min(lpb - level, L)
            if nb <= 0:  # adaptive computation: this block skips the level
                continue
            ta, za = t[:, :nb], z[:, :nb]
            if tap is not None and tap(b, ta):
                break
            if coords is not None and level > 0:  # one level, its coarser ones cached
                ta = self.fusion.fuse(b, ta, context.blocks[b][:, None], coords[:, :nb])
            elif coords is not None and nb > 1:  # levels 1..nb-1 read the coarser ones in the stack
                ctx = self.fusion.context(ta, boxes[:, :nb], boxes[:, 1:nb], tuple(range(1, nb)))
                ta = torch.cat([ta[:, :1], self.fusion.fuse(b, ta[:, 1:], ctx, coords[:, 1:nb])], dim=1)
            ca = c[:, :nb].flatten(0, 1) if c is not None else None
            ma = mask[:, None].expand(-1, nb, -1).flatten(0, 1) if mask is not None else None
            to, zo = self._block(b, ta.flatten(0, 1), za.flatten(0, 1), ca, ma)
            t = torch.cat([to.view(B, nb, *to.shape[1:]), t[:, nb:]], dim=1)
            z = torch.cat([zo.view(B, nb, *zo.shape[1:]), z[:, nb:]], dim=1)
        return t, z

    def _block(self, b: int, x: torch.Tensor, z: torch.Tensor, c, mask) -> tuple[torch.Tensor, torch.Tensor]:
        if self.activation_checkpointing and self.training:
            return checkpoint(self.blocks[b], x, z, c, mask, use_reentrant=False)
        return self.blocks[b](x, z, c, mask)

    def _finish(self, t: torch.Tensor, z: torch.Tensor, latents: LatentCarry | None) -> torch.Tensor:
        """Detokenize (B, L, n, d) → (B, L, 3, *patch); hand the final latents to the carry."""
        B, L = t.shape[:2]
        if latents is not None:
            latents.final = z[:, :, : self.cfg.num_latents]
        cf, ch, cw = self.cube
        nf, nh, nw = self.grid
        y = self.detokenizer(self.detok_norm(t.flatten(0, 1)))
        y = rearrange(
            y, "n (f h w) (cf ch cw c) -> n c (f cf) (h ch) (w cw)", f=nf, h=nh, w=nw, cf=cf, ch=ch, cw=cw
        )
        return y.view(B, L, *y.shape[1:])


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
