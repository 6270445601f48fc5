"""Samplers and the coarse-to-fine tiled cascade (paper §4.4, DESIGN.md §4–§5).

Level 0 is generated first; each finer level is a *canvas* of its virtual size covered by
patch-sized tiles. At every sampler step all tiles are denoised (in batches), the denoiser
outputs are averaged over overlaps on the canvas, and one sampler step is taken on the whole
canvas, so any noise a stochastic step adds is drawn once per canvas voxel. Each tile sees the
finished coarser levels through crops that contain it; their fused context does not change
while a level is sampled, so it is computed once per tile and cached.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from hpdm.config import Config, ConfigError, SampleConfig, check_steps
from hpdm.diffusion import Diffusion, edm_coefficients
from hpdm.model.hpdm import HPDM
from hpdm.pyramid import (
    PyramidGeometry,
    context_offsets,
    crop,
    downsample2,
    paste_add,
    pixel_boxes,
    tile_offsets,
    valid_sizes,
)

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]


class ContextCrop(NamedTuple):
    """One finished coarser level as context for a batch of tiles: its crops around the tiles,
    preconditioned (c_in · crop at the context σ), the network's noise input at that σ, and the
    crops' boxes in whole-video units."""

    x: torch.Tensor  # (T, 3, *patch) c_in-scaled crops
    c_noise: torch.Tensor  # () ln(σ_context) / 4
    offset: torch.Tensor  # (T, 3) box offsets
    size: torch.Tensor  # (T, 3) box sizes

    def tiles(self, sl: slice) -> ContextCrop:
        """The context of a slice of the tiles."""
        return ContextCrop(self.x[sl], self.c_noise, self.offset[sl], self.size[sl])

    def twice(self) -> ContextCrop:
        """The context for a conditional and an unconditional pass in one batch."""
        return ContextCrop(
            torch.cat([self.x] * 2), self.c_noise, torch.cat([self.offset] * 2), torch.cat([self.size] * 2)
        )


def context_sigma(s: SampleConfig) -> float:
    """The noise level at which finished coarse levels are fed as context; kept above 0 because
    the network's noise input is ln(σ) / 4."""
    return max(s.context_sigma, 1e-3)


# ---------------------------------------------------------------------------------------------
# EDM samplers (Karras et al. 2022, Algorithm 2), on any tensor


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float, device=None) -> torch.Tensor:
    """σ_0 > … > σ_{N-1} from the Karras schedule, followed by σ_N = 0: (N + 1,) float64."""
    i = torch.arange(steps, dtype=torch.float64, device=device)
    t = (
        sigma_max ** (1 / rho) + i / max(steps - 1, 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
    ) ** rho
    return torch.cat([t, torch.zeros(1, dtype=torch.float64, device=device)])


def edm_sampler(
    denoise: Denoiser,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    heun: bool = True,
    S_churn: float = 0.0,
    S_tmin: float = 0.0,
    S_tmax: float = float("inf"),
    S_noise: float = 1.0,
    randn: Callable[[], torch.Tensor] | None = None,
    on_step: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Heun (2nd order, stochastic with S_churn) or Euler (1st order). `noise` is N(0, I)."""
    n = len(sigmas) - 1
    x = noise.double() * sigmas[0]
    for i in range(n):
        t_cur, t_next = float(sigmas[i]), float(sigmas[i + 1])
        gamma = min(S_churn / n, math.sqrt(2) - 1) if S_tmin <= t_cur <= S_tmax else 0.0
        t_hat = t_cur + gamma * t_cur
        if gamma > 0:
            eps = randn() if randn is not None else torch.randn_like(x)
            x = x + math.sqrt(t_hat**2 - t_cur**2) * S_noise * eps.double()
        d = (x - denoise(x.float(), t_hat).double()) / t_hat
        x_next = x + (t_next - t_hat) * d
        if heun and t_next > 0:
            d2 = (x_next - denoise(x_next.float(), t_next).double()) / t_next
            x_next = x + (t_next - t_hat) * (0.5 * d + 0.5 * d2)
        x = x_next
        if on_step is not None:
            on_step()
    return x.float()


def level_steps(s: SampleConfig, level: int, steps: int | list[int] | None = None) -> int:
    """N at level 0, halved per finer level by default (paper: 128/64/32); a list gives one per
    level as it is. `steps` (when given) overrides `s.steps`."""
    n = steps or s.steps
    if isinstance(n, list | tuple):
        return n[level]
    return max(s.min_steps, n >> level) if s.halve_steps else n


# ---------------------------------------------------------------------------------------------
# The tiled cascade


def output_geometry(cfg: Config, size: tuple[int, int, int] | None) -> PyramidGeometry:
    """Geometry of a generation at `size` (default: the training target), with a clear error."""
    p = cfg.pyramid
    size = tuple(size) if size is not None else tuple(p.target)
    try:
        geo = PyramidGeometry(p.patch, size, p.num_levels)
    except ConfigError as e:
        near = ", ".join("x".join(map(str, v)) for v in valid_sizes(p.patch, size))
        raise ConfigError(
            f"cannot generate {'x'.join(map(str, size))}: {e}. Every axis must be the patch "
            f"{'x'.join(map(str, p.patch))} times a power of two; valid sizes near it: {near}"
        ) from None
    for a in range(3):
        if geo.level_sizes[0][a] > p.patch[a] and p.target[a] == p.patch[a]:
            raise ConfigError(
                f"cannot generate {'x'.join(map(str, size))}: axis {'FHW'[a]} was not pyramided in training "
                f"(target = patch = {p.patch[a]}); keep it at {p.patch[a]}"
            )
    return geo


@dataclass
class LevelPlan:
    level: int
    canvas: tuple[int, int, int]
    tiles: torch.Tensor  # (T, 3) pixel offsets
    steps: int
    heun: bool


@dataclass
class Generation:
    """Generated pyramid: `levels[ℓ]` is (B, 3, *V^ℓ) in [-1, 1]; `video` is the finest."""

    levels: list[torch.Tensor]
    settings: dict = field(default_factory=dict)

    @property
    def video(self) -> torch.Tensor:
        return self.levels[-1]


class Cascade:
    """Coarse-to-fine tiled generation with a trained HPDM."""

    def __init__(
        self,
        model: HPDM,
        cfg: Config,
        device=None,
        guide: HPDM | None = None,
        base: HPDM | None = None,
    ):
        """`guide`: the weaker model for autoguidance at level 0; by default the checkpoint that
        `cfg.sample.guide` names (none when null). `base`: a separate model that samples level 0;
        by default the checkpoint that `cfg.sample.base` names (none when null: `model` does)."""
        self.model = model.eval()
        self.cfg = cfg
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.patch = tuple(cfg.pyramid.patch)
        self.guide = self._companion(guide, "guide")
        self.base = self._companion(base, "base")

    def _companion(self, net: HPDM | None, key: str) -> HPDM | None:
        path = getattr(self.cfg.sample, key)
        if net is None and path:
            from hpdm.checkpoint import load_model

            net, net_cfg = load_model(
                path, device=self.device, overrides=["sample.guide=null", "sample.base=null"]
            )
            check_companion(self.cfg, net_cfg, key)
        return net.eval() if net is not None else None

    def plan(self, geo: PyramidGeometry, overlap: str, steps: int | list[int] | None) -> list[LevelPlan]:
        s = self.cfg.sample
        if steps is not None:
            check_steps(steps, geo.num_levels)
        return [
            LevelPlan(
                level=lvl,
                canvas=geo.level_sizes[lvl],
                tiles=tile_offsets(geo.level_sizes[lvl], self.patch, overlap, s.tile_stride),
                steps=level_steps(s, lvl, steps),
                heun=(s.sampler0 if lvl == 0 else s.sampler) == "heun",
            )
            for lvl in range(geo.num_levels)
        ]

    @torch.no_grad()
    def generate(
        self,
        num: int = 1,
        labels: torch.Tensor | list[int] | None = None,
        text: torch.Tensor | None = None,
        size: tuple[int, int, int] | None = None,
        seed: int = 0,
        steps: int | list[int] | None = None,
        overlap: str | None = None,
        guidance: float | list[float] | None = None,
        cache: str | None = None,
        progress: bool = True,
        given: list[torch.Tensor] | None = None,
    ) -> Generation:
        """`guidance`: classifier-free guidance scale (1 = off), or one per level. `given`: the
        coarsest levels, already made (each (num, 3, *V^ℓ) in [-1, 1], e.g. a real video
        made with `hpdm.pyramid.level_videos`): they are kept as they are and only the
        finer levels are sampled, as a super-resolution of them."""
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise ValueError(f"num={num!r}: give the number of videos to generate, a whole number >= 1")
        s = self.cfg.sample
        overlap = overlap or s.overlap
        guidance = s.cfg if guidance is None else guidance
        cache = cache or s.cache
        geo = output_geometry(self.cfg, size)
        diffusion = Diffusion(self.cfg.diffusion, geo)
        labels_t = self._labels(labels, num)
        if text is not None:
            text = text.to(self.device)
        plans = self.plan(geo, overlap, steps)
        given = list(given or [])
        if len(given) >= len(plans):
            raise ValueError(
                f"got {len(given)} given levels for {len(plans)} levels; leave at least one to sample"
            )
        for lvl, x in enumerate(given):
            want = (num, 3, *geo.level_sizes[lvl])
            if tuple(x.shape) != want:
                raise ValueError(
                    f"given level {lvl} has shape {tuple(x.shape)}; this generation needs {want} "
                    f"(num, channels, frames, height, width) in [-1, 1]"
                )
        if isinstance(guidance, list | tuple):
            if len(guidance) != len(plans):
                raise ValueError(
                    f"got {len(guidance)} guidance scales for {len(plans)} levels; give one scale or one per level"
                )
            scales = [float(g) for g in guidance]
        else:
            scales = [float(guidance)] * len(plans)
        # One generator per video: a video depends on (seed, its position), never on the batch size.
        gens = [torch.Generator().manual_seed(seed * 100_003 + i) for i in range(num)]
        finished: list[torch.Tensor] = []  # scaled-space (y) canvases of finished levels
        ctx_levels: list[torch.Tensor] = []  # the same at the context noise level
        for plan, scale in zip(plans, scales):
            if plan.level < len(given):
                y = given[plan.level].to(self.device, torch.float32) / float(diffusion.sigma_in[plan.level])
            else:
                y = self._sample_level(
                    plan, geo, diffusion, finished, ctx_levels, labels_t, text, gens, scale, cache, progress
                )
            finished.append(y)
            sig_c = context_sigma(s)
            eps = torch.stack([torch.randn(y.shape[1:], generator=g) for g in gens]).to(self.device)
            ctx_levels.append(y + sig_c * eps)
        levels = [(y * diffusion.sigma_in[lvl]).clamp(-1, 1).cpu() for lvl, y in enumerate(finished)]
        settings = {
            "num": num,
            "seed": seed,
            "size": list(geo.target),
            "overlap": overlap,
            "guidance": list(guidance) if isinstance(guidance, list | tuple) else guidance,
            "cache": cache,
            "given_levels": len(given),
            "labels": labels_t.tolist() if labels_t is not None else None,
            "levels": [
                {
                    "level": p.level,
                    "canvas": list(p.canvas),
                    "tiles": len(p.tiles),
                    "steps": p.steps,
                    "sampler": "heun" if p.heun else "euler",
                }
                for p in plans
            ],
            "sample": self.cfg.to_dict()["sample"],
        }
        return Generation(levels, settings)

    def _labels(self, labels, num: int) -> torch.Tensor | None:
        nc = self.cfg.model.num_classes
        if nc == 0:
            if labels is not None:
                raise ValueError("this model is unconditional (model.num_classes=0); drop --class")
            return None
        if labels is None:
            return torch.arange(num, device=self.device) % nc
        t = torch.as_tensor(labels, dtype=torch.long).flatten()
        if t.numel() == 1:
            t = t.expand(num)
        if t.numel() != num:
            raise ValueError(f"got {t.numel()} class ids for {num} videos; give one id or one per video")
        bad = t[(t < 0) | (t >= nc)]
        if bad.numel():
            raise ValueError(f"class id {int(bad[0])} is out of range: this model has classes 0..{nc - 1}")
        return t.to(self.device)

    def _sample_level(
        self,
        plan: LevelPlan,
        geo,
        diffusion: Diffusion,
        finished,
        ctx_levels,
        labels,
        text,
        gens,
        guidance: float,
        cache: str,
        progress: bool,
    ) -> torch.Tensor:
        s = self.cfg.sample
        B, lvl, T = len(gens), plan.level, len(plan.tiles)
        dev = self.device
        tiles = plan.tiles.repeat(B, 1)  # (B*T, 3)
        index = torch.arange(B).repeat_interleave(T)  # video of each tile
        t_off, t_size = pixel_boxes(tiles, plan.canvas, self.patch)
        # Context crops of every finished coarser level that contain each tile (DESIGN §5).
        coarse = []
        for k in range(lvl):
            pix = context_offsets(geo, lvl, tiles, k)
            off, size = pixel_boxes(pix, geo.level_sizes[k], self.patch)
            sd = diffusion.sigma_data[k]
            sig_c = context_sigma(s)
            _, _, c_in, c_noise = edm_coefficients(torch.tensor(sig_c), sd)
            coarse.append(
                ContextCrop(crop(ctx_levels[k], pix, self.patch, index.to(dev)) * c_in, c_noise, off, size)
            )
        tile_labels = labels[index.to(labels.device)] if labels is not None else None
        tile_text = text[index.to(text.device)] if text is not None else None
        use_cfg = guidance != 1.0 and (labels is not None or text is not None)
        # autoguidance: level 0 only (the guide sees no context)
        auto = s.guide_scale if lvl == 0 and self.guide is not None and s.guide_scale != 1.0 else None

        chunk = max(1, s.tile_batch)
        starts = list(range(0, B * T, chunk))
        contexts = None
        if lvl > 0 and cache == "context" and self.model.deep:
            contexts = self._build_cache(
                coarse, t_off, t_size, tile_labels, tile_text, use_cfg, starts, chunk
            )

        sd = diffusion.sigma_data[lvl]
        counts = paste_add(
            torch.zeros(B, 1, *plan.canvas, device=dev),
            torch.ones(B * T, 1, *self.patch, device=dev),
            tiles,
            index,
        )

        # latent self-conditioning: each tile's (and guidance branch's) latents of the previous
        # denoiser call initialise its next call's
        latents: list[torch.Tensor | None] = [None] * len(starts)

        interval, a_iv, b_iv = s.cfg_interval, s.guide_interval, s.base_interval
        last_net = [None]  # which network made `latents` (self-conditioning does not cross models)
        consistent, axes = None, None  # the finished coarser level, in this level's scaled space
        if lvl > 0 and s.consistency > 0:
            axes = geo.grown_axes(lvl)
            consistent = diffusion.rescale(finished[lvl - 1], lvl - 1, lvl)

        def denoise(y: torch.Tensor, sigma: float) -> torch.Tensor:
            c_skip, c_out, c_in, c_noise = edm_coefficients(torch.tensor(sigma), sd)
            guided = use_cfg and (interval is None or interval[0] <= sigma <= interval[1])
            on_base = lvl == 0 and self.base is not None and (b_iv is None or b_iv[0] <= sigma <= b_iv[1])
            if last_net[0] is not None and last_net[0] != on_base:
                latents[:] = [None] * len(latents)
            last_net[0] = on_base
            y_tiles = crop(y, tiles, self.patch, index.to(dev))
            out = torch.empty_like(y_tiles)
            for j, a in enumerate(starts):
                sl = slice(a, a + chunk)
                n = y_tiles[sl].shape[0]
                x, cn, off, size = (
                    c_in * y_tiles[sl],
                    c_noise.expand(n).to(dev),
                    t_off[sl].to(dev),
                    t_size[sl].to(dev),
                )
                F_out, latents[j], F_cond = self._net(
                    lvl,
                    x,
                    cn,
                    off,
                    size,
                    [c.tiles(sl) for c in coarse],
                    _context(contexts, j, n, use_cfg, guided),
                    tile_labels,
                    tile_text,
                    sl,
                    guidance if guided else None,
                    latents[j],
                    on_base,
                )
                if auto is not None and (a_iv is None or a_iv[0] <= sigma <= a_iv[1]):
                    # D + (w - 1)(D_cond - D_guide): c_skip, c_out are shared
                    lab = tile_labels[sl] if tile_labels is not None else None
                    txt = tile_text[sl] if tile_text is not None else None
                    F_guide = self.guide.forward_level(x, cn, off, size, 0, None, lab, txt)
                    F_out = F_out + (auto - 1.0) * (F_cond - F_guide)
                out[sl] = c_skip * y_tiles[sl] + c_out * F_out
            canvas = paste_add(torch.zeros_like(y), out, tiles, index) / counts
            if consistent is not None and sigma >= s.consistency_sigma:
                # pyramid consistency: what the coarser level says this canvas's 2x average is
                miss = consistent - downsample2(canvas, axes)
                up = F.interpolate(miss, size=canvas.shape[-3:], mode="trilinear", align_corners=False)
                canvas = canvas + s.consistency * up
            return canvas

        start = (s.start_sigma[lvl] if isinstance(s.start_sigma, list) else s.start_sigma) if lvl > 0 else 0.0
        truncated = start > 0
        sigmas = karras_sigmas(plan.steps, s.sigma_min, start if truncated else s.sigma_max, s.rho)
        noise = torch.stack([torch.randn(3, *plan.canvas, generator=g) for g in gens]).to(dev)
        if truncated:  # SDEdit: start from the coarser level, upsampled, noised to start_sigma
            prev = diffusion.rescale(finished[lvl - 1], lvl - 1, lvl)
            up = F.interpolate(prev, size=plan.canvas, mode="trilinear", align_corners=False)
            noise = noise + up / start  # edm_sampler starts from noise * σ_0
        evals = plan.steps * (2 if plan.heun else 1) - (1 if plan.heun else 0)
        bar = tqdm(
            total=plan.steps,
            desc=f"level {lvl} ({T} tiles x {evals} evals)",
            disable=not progress,
            leave=False,
            dynamic_ncols=True,
        )

        def randn() -> torch.Tensor:
            return torch.stack([torch.randn(3, *plan.canvas, generator=g) for g in gens]).to(dev)

        y = edm_sampler(
            denoise,
            noise,
            sigmas,
            heun=plan.heun,
            S_churn=s.S_churn if plan.heun else 0.0,
            S_tmin=s.S_tmin,
            S_tmax=s.S_tmax,
            S_noise=s.S_noise,
            randn=randn,
            on_step=lambda: bar.update(1),
        )
        bar.close()
        return y

    def _net(self, lvl, x, c_noise, off, size, coarse, context, labels, text, sl, guidance, prev, base=False):
        """F(c_in·y) of a batch of level-`lvl` tiles, with classifier-free guidance when asked.

        Returns (F, latents, F_cond): the latents (None unless the model self-conditions) are fed
        back as `prev` at the next call; with guidance they stack the conditional and
        unconditional branches. F_cond is the conditional output alone (= F without guidance).
        `base`: level 0 by the base model.
        """
        lab = labels[sl] if labels is not None else None
        txt = text[sl] if text is not None else None
        if guidance is None:
            out, lat = self._call(lvl, x, c_noise, off, size, coarse, context, lab, txt, prev, base)
            return out, lat, out
        n = x.shape[0]
        null = (self.base if base else self.model).null_class()
        null_lab = torch.full_like(lab, null) if lab is not None else None
        null_txt = torch.zeros_like(txt) if txt is not None else None
        dup = lambda t: torch.cat([t, t]) if t is not None else None  # noqa: E731
        both_lab = torch.cat([lab, null_lab]) if lab is not None else None
        both_txt = torch.cat([txt, null_txt]) if txt is not None else None
        coarse2 = [c.twice() for c in coarse]
        out, lat = self._call(
            lvl, dup(x), dup(c_noise), dup(off), dup(size), coarse2, context, both_lab, both_txt, prev, base
        )
        cond, uncond = out[:n], out[n:]
        return uncond + guidance * (cond - uncond), lat, cond

    def _call(self, lvl, x, c_noise, off, size, coarse, context, labels, text, prev=None, base=False):
        if base:
            sc = self.base.self_cond is not None
            res = self.base.forward_level(
                x, c_noise, off, size, 0, None, labels, text, prev=prev, return_latents=sc
            )
            return res if sc else (res, None)
        sc = self.model.self_cond is not None
        if lvl == 0 or context is not None:
            pixels = None
            if lvl > 0 and self.model.pixels:  # the previous level's crop, onto this tile
                c = coarse[-1]
                pixels = self.model.resample_pixels(
                    c.x, c.offset.to(x.device), c.size.to(x.device), off, size
                )
            res = self.model.forward_level(
                x, c_noise, off, size, lvl, context, labels, text, prev=prev, return_latents=sc, pixels=pixels
            )
            return res if sc else (res, None)
        n = x.shape[0]
        xs = torch.stack([c.x for c in coarse] + [x], dim=1)
        cn = torch.stack([c.c_noise.expand(n).to(x.device) for c in coarse] + [c_noise], dim=1)
        offs = torch.stack([c.offset.to(x.device) for c in coarse] + [off], dim=1)
        sizes = torch.stack([c.size.to(x.device) for c in coarse] + [size], dim=1)
        if not sc:
            return self.model(xs, cn, offs, sizes, labels, text)[:, -1], None
        # coarse levels are not self-conditioned at sampling (training leaves 1 - rate of them out)
        prev_all = mask = None
        if prev is not None:
            prev_all = torch.zeros(n, lvl + 1, *prev.shape[1:], device=x.device, dtype=prev.dtype)
            prev_all[:, -1] = prev
            mask = torch.zeros(n, lvl + 1, dtype=torch.bool, device=x.device)
            mask[:, -1] = True
        out, lat = self.model(
            xs, cn, offs, sizes, labels, text, prev=prev_all, prev_mask=mask, return_latents=True
        )
        return out[:, -1], lat[:, -1]

    def _build_cache(self, coarse, t_off, t_size, labels, text, use_cfg, starts, chunk):
        """Fused context of every tile, per block, computed once for all steps of this level.

        Returns a list (one per tile batch) of per-block contexts, or None when it would not fit
        the memory budget (then every step recomputes the coarse levels).
        """
        n_total = t_off.shape[0] * (2 if use_cfg else 1)
        blocks = sum(1 for v in self.model.levels_per_block if v > len(coarse))
        need = n_total * blocks * self.model.num_tokens * self.model.cfg.dim * 4
        if need > self.cfg.sample.cache_budget_mb * 2**20:
            return None
        dev = self.device
        out = []
        for a in starts:
            sl = slice(a, a + chunk)
            n = t_off[sl].shape[0]
            xs = torch.stack([c.x[sl] for c in coarse], dim=1)
            cn = torch.stack([c.c_noise.expand(n) for c in coarse], dim=1).to(dev)
            offs = torch.stack([c.offset[sl] for c in coarse], dim=1).to(dev)
            sizes = torch.stack([c.size[sl] for c in coarse], dim=1).to(dev)
            lab = labels[sl] if labels is not None else None
            txt = text[sl] if text is not None else None
            if use_cfg:
                cat2 = lambda t: torch.cat([t, t])  # noqa: E731
                xs, cn, offs, sizes = cat2(xs), cat2(cn), cat2(offs), cat2(sizes)
                lab = (
                    torch.cat([lab, torch.full_like(lab, self.model.null_class())])
                    if lab is not None
                    else None
                )
                txt = torch.cat([txt, torch.zeros_like(txt)]) if txt is not None else None
                tgt_o, tgt_s = cat2(t_off[sl].to(dev)), cat2(t_size[sl].to(dev))
            else:
                tgt_o, tgt_s = t_off[sl].to(dev), t_size[sl].to(dev)
            out.append(self.model.context(xs, cn, offs, sizes, tgt_o, tgt_s, lab, txt))
        return out


def coarse_from_videos(paths, cfg: Config, size: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Level 0 of a generation at `size` from video files, to super-resolve them with
    `Cascade.generate(given=[...])`: the first F frames of each (F: the output's frame count) are
    area-resized to level 0's size, (len(paths), 3, *V^0) in [-1, 1]. Raises a `VideoReadError`
    naming a file that cannot be decoded."""
    from hpdm.data.video import read_video

    geo = output_geometry(cfg, size)
    out = []
    for p in paths:
        frames = torch.from_numpy(read_video(p, max_frames=geo.target[0])).permute(3, 0, 1, 2)
        x = frames[None].float() / 127.5 - 1.0  # (1, 3, F, H, W)
        out.append(F.interpolate(x, size=geo.level_sizes[0], mode="area"))
    return torch.cat(out).clamp(-1, 1)


def check_companion(cfg: Config, other: Config, key: str = "guide") -> None:
    """A guide or base (`key`) must denoise the same level-0 tiles in the same space, with the
    same condition."""
    problems = []
    if tuple(other.pyramid.patch) != tuple(cfg.pyramid.patch):
        problems.append(f"patch {list(other.pyramid.patch)} instead of {list(cfg.pyramid.patch)}")
    for k in ("sigma_data", "sigma_in0"):
        if getattr(other.diffusion, k) != getattr(cfg.diffusion, k):
            problems.append(
                f"diffusion.{k}={getattr(other.diffusion, k)} instead of {getattr(cfg.diffusion, k)}"
            )
    for k in ("num_classes", "text_dim"):
        if getattr(other.model, k) != getattr(cfg.model, k):
            problems.append(f"model.{k}={getattr(other.model, k)} instead of {getattr(cfg.model, k)}")
    if problems:
        role = "guide" if key == "guide" else "sample level 0 of"
        raise ConfigError(
            f"sample.{key}={getattr(cfg.sample, key)} cannot {role} this model: its {'; '.join(problems)}. "
            f"Train the {key} on the same data with the same pyramid.patch, diffusion.sigma_data/sigma_in0 "
            "and condition (e.g. a level-0 run: pyramid.num_levels=1 pyramid.target=PATCH)"
        )


def _context(contexts, j: int, n: int, built_guided: bool, guide: bool):
    """Tile batch j's cached context. A cache built for guidance holds both branches (conditional
    first); a step outside the guidance interval takes the conditional half."""
    if contexts is None:
        return None
    ctx = contexts[j]
    if guide or not built_guided:
        return ctx
    return [c[:n] if c is not None else None for c in ctx]


def generate(model: HPDM, cfg: Config, **kwargs) -> Generation:
    """Generate videos with a trained model; see `Cascade.generate` for the options."""
    return Cascade(model, cfg).generate(**kwargs)
