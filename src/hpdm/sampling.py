"""Samplers and the coarse-to-fine tiled cascade (paper §4.4, DESIGN.md §4–§5).

Level 0 is generated first; each finer level is a *canvas* of its virtual size covered by
patch-sized tiles. At every sampler step a `TiledDenoiser` denoises all tiles (in batches) and
averages them over overlaps on the canvas, and one sampler step is taken on the whole canvas, so
any noise a stochastic step adds is drawn once per canvas voxel. Each tile sees the finished
coarser levels through crops that contain it; their fused context does not change while a level
is sampled, so it is computed once per tile and cached.

Guidance is a list of small functions of the denoised canvas and the step (`classifier_free`,
`autoguidance`, `pyramid_consistency`), composed by `guided`. `Cascade` samples with one network;
`Sampler` adds what a config names beside it (a level-0 model `sample.base` and an autoguidance
guide `sample.guide`): they sample level 0, which the cascade then takes as given.

The network interface the sampler uses (`hpdm.model.hpdm.HPDM`): `forward_level`,
`level_context`, `context_bytes`, `null_class` and `self_cond` (whether it self-conditions).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from hpdm.config import Config, ConfigError, SampleConfig, check_steps
from hpdm.diffusion import Diffusion, edm_coefficients
from hpdm.model.fusion import LevelContext
from hpdm.model.hpdm import HPDM
from hpdm.model.self_cond import LatentCarry
from hpdm.pyramid import (
    Boxes,
    PyramidGeometry,
    context_offsets,
    crop,
    downsample2,
    paste_add,
    tile_offsets,
    valid_sizes,
)

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]


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


def sigma_plan(s: SampleConfig, level: int, steps: int) -> torch.Tensor:
    """Level `level`'s σ schedule: Karras from `sigma_max`, or from `start_sigma` with a truncated
    start (levels >= 1 start from the coarser level, see `Cascade._start`)."""
    return karras_sigmas(steps, s.sigma_min, start_sigma(s, level) or s.sigma_max, s.rho)


def start_sigma(s: SampleConfig, level: int) -> float:
    """The truncated start's σ at `level` (0: a plain start from pure noise at sigma_max)."""
    if level == 0:
        return 0.0
    return float(s.start_sigma[level] if isinstance(s.start_sigma, list) else s.start_sigma)


class Cond(NamedTuple):
    """The condition of a batch of videos or tiles: class ids (N,) and/or text tokens (N, T, d)."""

    labels: torch.Tensor | None = None
    text: torch.Tensor | None = None

    def rows(self, index) -> Cond:
        return Cond(*(t[index] if t is not None else None for t in self))

    def null(self, null_class: int) -> Cond:
        """The unconditional branch of classifier-free guidance: the null class, zero text."""
        return Cond(
            torch.full_like(self.labels, null_class) if self.labels is not None else None,
            torch.zeros_like(self.text) if self.text is not None else None,
        )

    def given(self) -> bool:
        return self.labels is not None or self.text is not None


class ContextCrop(NamedTuple):
    """One finished coarser level as context for every tile: its crops around the tiles,
    preconditioned (c_in · crop at the context σ), the network's noise input at that σ, and the
    crops' boxes."""

    x: torch.Tensor  # (N, 3, *patch) c_in-scaled crops
    c_noise: torch.Tensor  # () ln(σ_context) / 4
    boxes: Boxes  # (N, 3)


class Tiling:
    """A level's canvas cut into tiles (paper §4.4): for `num` videos, the tiles' pixel offsets
    (num·T, 3), video `index`, `boxes`, the tile batches, and how many tiles cover each voxel."""

    def __init__(self, canvas, tiles: torch.Tensor, num: int, patch, tile_batch: int, device):
        T = len(tiles)
        self.canvas, self.patch = tuple(canvas), tuple(patch)
        self.tiles = tiles.repeat(num, 1)
        self.index = torch.arange(num).repeat_interleave(T).to(device)
        self.boxes = Boxes.on_grid(self.tiles, canvas, patch).to(device)
        self.batches = [slice(a, a + tile_batch) for a in range(0, num * T, tile_batch)]
        ones = torch.ones(num * T, 1, *patch, device=device)
        self.counts = paste_add(torch.zeros(num, 1, *canvas, device=device), ones, self.tiles, self.index)

    def crop(self, y: torch.Tensor) -> torch.Tensor:
        return crop(y, self.tiles, self.patch, self.index)

    def average(self, tiles: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Tiles (num·T, C, *patch) pasted on a canvas shaped `like` and averaged over overlaps."""
        return paste_add(torch.zeros_like(like), tiles, self.tiles, self.index) / self.counts


class Branch:
    """One network with one condition over a level's tiles: F(c_in·y, c_noise) of tile batch j,
    with the tiles' context from the coarser levels (computed once per batch and kept when
    `cache`) and, when the network self-conditions, each batch's latents from its previous call."""

    def __init__(
        self, net: HPDM, level: int, tiling: Tiling, coarse: Sequence[ContextCrop], cond: Cond, cache: bool
    ):
        self.net, self.level, self.tiling, self.coarse = net, level, tiling, coarse
        self.cond = cond.rows(tiling.index)  # per tile
        self.cache = [self._context(sl) for sl in tiling.batches] if cache and level > 0 else None
        self.reset()

    def reset(self) -> None:
        """Forget self-conditioning's latents (another network denoised in between)."""
        self.carry = [LatentCarry() if self.net.self_cond is not None else None for _ in self.tiling.batches]

    def _context(self, sl: slice) -> LevelContext | None:
        if self.level == 0:
            return None
        cs, boxes = self.coarse, self.tiling.boxes[sl]
        x = torch.stack([c.x[sl] for c in cs], dim=1)
        c_noise = torch.stack([c.c_noise.expand(len(boxes)) for c in cs], dim=1).to(x.device)
        coarse_boxes = Boxes.stack([c.boxes[sl] for c in cs], dim=1)
        return self.net.level_context(x, c_noise, coarse_boxes, boxes, *self.cond.rows(sl))

    def __call__(self, j: int, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        sl = self.tiling.batches[j]
        ctx = self.cache[j] if self.cache is not None else self._context(sl)
        args = (x, c_noise, self.tiling.boxes[sl], self.level, ctx, *self.cond.rows(sl))
        out = self.net.forward_level(*args, latents=self.carry[j])
        if self.carry[j] is not None:
            self.carry[j] = self.carry[j].next()
        return out


class Switch:
    """Experts by noise level: branch `inside` at the steps with σ in `interval`, `outside` at the
    others; a network's self-conditioning latents restart when it takes over."""

    def __init__(self, inside: Branch, outside: Branch, interval: Sequence[float] | None):
        self.inside, self.outside, self.interval, self.last = inside, outside, interval, None

    def at(self, sigma: float) -> Branch:
        branch = self.inside if within(sigma, self.interval) else self.outside
        if self.last is not None and self.last is not branch:
            branch.reset()
        self.last = branch
        return branch


def within(sigma: float, interval: Sequence[float] | None) -> bool:
    return interval is None or interval[0] <= sigma <= interval[1]


# ---------------------------------------------------------------------------------------------
# Guidance: small functions of the network's output for a tile batch and the step, in a list.
# The denoised tiles are D = c_skip·y + c_out·F with c_skip, c_out shared by every branch, so a
# guidance rule on the outputs F is the same rule on the denoised D (and averaging tiles on the
# canvas is linear, so it commutes with them).


class Step:
    """One denoiser call on one tile batch: the network input `x` (c_in·y), the noise level
    `sigma`, and the outputs of the named branches (`step["cond"]`, `step["uncond"]`,
    `step["guide"]`), each computed once, when first asked."""

    def __init__(self, x: torch.Tensor, sigma: float, outputs: dict[str, Callable[[], torch.Tensor]]):
        self.x, self.sigma, self._outputs, self._done = x, sigma, outputs, {}

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._done:
            self._done[name] = self._outputs[name]()
        return self._done[name]


Guidance = Callable[[torch.Tensor, Step], torch.Tensor]


def classifier_free(scale: float, interval: Sequence[float] | None = None) -> Guidance:
    """Classifier-free guidance (Ho & Salimans 2022), D_u + w(D − D_u), at the steps with σ in
    `interval` (Kynkäänniemi et al. 2024; every step when None)."""

    def guide(out: torch.Tensor, step: Step) -> torch.Tensor:
        if not within(step.sigma, interval):
            return out
        uncond = step["uncond"]
        return uncond + scale * (out - uncond)

    return guide


def autoguidance(scale: float, interval: Sequence[float] | None = None) -> Guidance:
    """Autoguidance (Karras et al. 2024): D + (w − 1)(D_cond − D_guide), a weaker model as the guide."""

    def guide(out: torch.Tensor, step: Step) -> torch.Tensor:
        if not within(step.sigma, interval):
            return out
        return out + (scale - 1.0) * (step["cond"] - step["guide"])

    return guide


class TiledDenoiser:
    """D(y, σ) of a level's canvas y (B, 3, *canvas) in its scaled space (paper §4.4): crop the
    tiles, run each tile batch through the branches the guidance asks for, apply `guidance` in
    order to the conditional output, precondition, and average on the canvas."""

    def __init__(self, tiling: Tiling, branches: dict, guidance: Sequence[Guidance], sigma_data):
        self.tiling, self.branches, self.guidance, self.sigma_data = tiling, branches, guidance, sigma_data

    def __call__(self, y: torch.Tensor, sigma: float) -> torch.Tensor:
        c_skip, c_out, c_in, c_noise = edm_coefficients(torch.tensor(sigma), self.sigma_data)
        active = {k: b.at(sigma) if isinstance(b, Switch) else b for k, b in self.branches.items()}
        y_tiles = self.tiling.crop(y)
        out = torch.empty_like(y_tiles)
        for j, sl in enumerate(self.tiling.batches):
            x = c_in * y_tiles[sl]
            cn = c_noise.expand(len(x)).to(x.device)
            step = Step(x, sigma, {k: partial(b, j, x, cn) for k, b in active.items()})
            F_out = step["cond"]
            for rule in self.guidance:
                F_out = rule(F_out, step)
            out[sl] = c_skip * y_tiles[sl] + c_out * F_out
        return self.tiling.average(out, y)


def pyramid_consistency(
    denoise: Denoiser, coarse: torch.Tensor, axes, strength: float, min_sigma: float
) -> Denoiser:
    """`denoise`, then the canvas moved towards what the finished coarser level (`coarse`, in this
    level's scaled space) says its 2x area average is: D + strength · up(coarse − down(D)), at
    the steps with σ >= min_sigma."""

    def consistent(y: torch.Tensor, sigma: float) -> torch.Tensor:
        D = denoise(y, sigma)
        if sigma < min_sigma:
            return D
        miss = coarse - downsample2(D, axes)
        return D + strength * F.interpolate(miss, size=D.shape[-3:], mode="trilinear", align_corners=False)

    return consistent


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
    sigmas: torch.Tensor  # (steps + 1,) the σ schedule, ending at 0
    start: float  # σ of a truncated start (0: from pure noise)


@dataclass
class Generation:
    """Generated pyramid: `levels[ℓ]` is (B, 3, *V^ℓ) in [-1, 1]; `video` is the finest."""

    levels: list[torch.Tensor]
    settings: dict = field(default_factory=dict)

    @property
    def video(self) -> torch.Tensor:
        return self.levels[-1]


def video_generators(seed: int, num: int) -> list[torch.Generator]:
    """One generator per video: a video depends on (seed, its position), never on the batch size."""
    return [torch.Generator().manual_seed(seed * 100_003 + i) for i in range(num)]


class _Run(NamedTuple):
    """What every level of one `generate` call shares."""

    geo: PyramidGeometry
    diffusion: Diffusion
    cond: Cond
    gens: list[torch.Generator]
    progress: bool


class Cascade:
    """Coarse-to-fine tiled generation with one trained HPDM (paper §4.4)."""

    def __init__(self, model: HPDM, cfg: Config, device=None):
        self.model = model.eval()
        self.cfg = cfg
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.patch = tuple(cfg.pyramid.patch)

    def plan(self, geo: PyramidGeometry, overlap: str, steps: int | list[int] | None) -> list[LevelPlan]:
        s = self.cfg.sample
        if steps is not None:
            check_steps(steps, geo.num_levels)
        plans = []
        for lvl in range(geo.num_levels):
            n = level_steps(s, lvl, steps)
            plans.append(
                LevelPlan(
                    level=lvl,
                    canvas=geo.level_sizes[lvl],
                    tiles=tile_offsets(geo.level_sizes[lvl], self.patch, overlap, s.tile_stride),
                    steps=n,
                    heun=(s.sampler0 if lvl == 0 else s.sampler) == "heun",
                    sigmas=sigma_plan(s, lvl, n),
                    start=start_sigma(s, lvl),
                )
            )
        return plans

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
        generators: list[torch.Generator] | None = None,
    ) -> Generation:
        """`guidance`: classifier-free guidance scale (1 = off), or one per level. `given`: the
        coarsest levels, already made (each (num, 3, *V^ℓ) in [-1, 1], e.g. a real video
        made with `hpdm.pyramid.level_videos`): they are kept as they are and only the
        finer levels are sampled, as a super-resolution of them. `generators`: the videos' random
        streams (default `video_generators(seed, num)`), for a caller that sampled `given` from them."""
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise ValueError(f"num={num!r}: give the number of videos to generate, a whole number >= 1")
        s = self.cfg.sample
        overlap, cache = overlap or s.overlap, cache or s.cache
        geo = output_geometry(self.cfg, size)
        plans = self.plan(geo, overlap, steps)
        given = self._check_given(list(given or []), geo, num, len(plans))
        scales = guidance_scales(s.cfg if guidance is None else guidance, len(plans))
        gens = generators or video_generators(seed, num)
        text = text.to(self.device) if text is not None else None
        run = _Run(
            geo, Diffusion(self.cfg.diffusion, geo), Cond(self._labels(labels, num), text), gens, progress
        )
        finished: list[torch.Tensor] = []  # scaled-space (y) canvases of finished levels
        ctx_levels: list[torch.Tensor] = []  # the same at the context noise level
        for plan, scale in zip(plans, scales):
            if plan.level < len(given):
                y = given[plan.level].to(self.device, torch.float32) / float(
                    run.diffusion.sigma_in[plan.level]
                )
            else:

                def denoiser(p: LevelPlan, scale=scale) -> Denoiser:
                    return self.level_denoiser(p, run, finished, ctx_levels, scale, cache)

                y = self.sample_plan(plan, run, finished, denoiser)
            finished.append(y)
            eps = torch.stack([torch.randn(y.shape[1:], generator=g) for g in gens]).to(self.device)
            ctx_levels.append(y + run.diffusion.context_sigma(s.context_sigma, plan.level) * eps)
        levels = [(y * run.diffusion.sigma_in[lvl]).clamp(-1, 1).cpu() for lvl, y in enumerate(finished)]
        settings = self.settings(plans, run, seed, overlap, guidance, cache, len(given))
        return Generation(levels, settings)

    def settings(self, plans, run: _Run, seed, overlap, guidance, cache, given_levels) -> dict:
        """What a generation was made with (saved next to its videos as settings.json)."""
        s = self.cfg.sample
        return {
            "num": len(run.gens),
            "seed": seed,
            "size": list(run.geo.target),
            "overlap": overlap,
            "guidance": list(guidance)
            if isinstance(guidance, list | tuple)
            else (s.cfg if guidance is None else guidance),
            "cache": cache,
            "given_levels": given_levels,
            "labels": run.cond.labels.tolist() if run.cond.labels is not None else None,
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

    def _check_given(self, given: list[torch.Tensor], geo, num: int, levels: int) -> list[torch.Tensor]:
        if len(given) >= levels:
            raise ValueError(
                f"got {len(given)} given levels for {levels} levels; leave at least one to sample"
            )
        for lvl, x in enumerate(given):
            want = (num, 3, *geo.level_sizes[lvl])
            if tuple(x.shape) != want:
                raise ValueError(
                    f"given level {lvl} has shape {tuple(x.shape)}; this generation needs {want} "
                    f"(num, channels, frames, height, width) in [-1, 1]"
                )
        return given

    def level_denoiser(
        self, plan: LevelPlan, run: _Run, finished, ctx_levels, scale: float, cache: str
    ) -> Denoiser:
        """Level `plan.level`'s denoiser: the network tiled over the canvas, conditional (and
        unconditional with classifier-free guidance), then pyramid consistency when it is on."""
        s = self.cfg.sample
        tiling = self.tiling(plan, run)
        coarse = self.coarse_context(plan, run, tiling, ctx_levels)
        use_cfg = scale != 1.0 and run.cond.given()
        branches = self.branches(self.model, plan, run, tiling, coarse, use_cfg, cache)
        guidance = [classifier_free(scale, s.cfg_interval)] if use_cfg else []
        denoise = TiledDenoiser(tiling, branches, guidance, run.diffusion.sigma_data[plan.level])
        if plan.level > 0 and s.consistency > 0:
            target = run.diffusion.rescale(finished[plan.level - 1], plan.level - 1, plan.level)
            axes = run.geo.grown_axes(plan.level)
            denoise = pyramid_consistency(denoise, target, axes, s.consistency, s.consistency_sigma)
        return denoise

    def tiling(self, plan: LevelPlan, run: _Run) -> Tiling:
        return Tiling(
            plan.canvas,
            plan.tiles,
            len(run.gens),
            self.patch,
            max(1, self.cfg.sample.tile_batch),
            self.device,
        )

    def branches(
        self, net: HPDM, plan: LevelPlan, run: _Run, tiling: Tiling, coarse, use_cfg: bool, cache: str
    ):
        """`net` over the tiles: {"cond": …} and with classifier-free guidance {"uncond": …}; their
        contexts are cached when `cache` is "context" and both fit `sample.cache_budget_mb`."""
        conds = {"cond": run.cond} | ({"uncond": run.cond.null(net.null_class())} if use_cfg else {})
        need = net.context_bytes(len(tiling.tiles), plan.level) * len(conds)
        keep = cache == "context" and need <= self.cfg.sample.cache_budget_mb * 2**20
        return {k: Branch(net, plan.level, tiling, coarse, c, keep) for k, c in conds.items()}

    def coarse_context(self, plan: LevelPlan, run: _Run, tiling: Tiling, ctx_levels) -> list[ContextCrop]:
        """For every tile, the crop of each finished coarser level that contains it (DESIGN §5)."""
        out = []
        for k in range(plan.level):
            sig = torch.tensor(run.diffusion.context_sigma(self.cfg.sample.context_sigma, k))
            pix = context_offsets(run.geo, plan.level, tiling.tiles, k)
            boxes = Boxes.on_grid(pix, run.geo.level_sizes[k], self.patch).to(self.device)
            _, _, c_in, c_noise = edm_coefficients(sig, run.diffusion.sigma_data[k])
            out.append(ContextCrop(crop(ctx_levels[k], pix, self.patch, tiling.index) * c_in, c_noise, boxes))
        return out

    def sample_plan(self, plan: LevelPlan, run: _Run, finished, denoiser: Callable) -> torch.Tensor:
        """One level's canvas in its scaled space; `denoiser(plan)` builds the level's denoiser.

        With `sample.layout_sigma` and a level 0 of several tiles, level 0 is first sampled at the
        patch size (one tile, one layout), stretched to the canvas, and the tiles start from it."""
        s, gens, progress = self.cfg.sample, run.gens, run.progress
        if plan.level > 0 or s.layout_sigma <= 0 or tuple(plan.canvas) == self.patch:
            return sample_level(plan, denoiser(plan), self._start(plan, run, finished), s, gens, progress)
        tile = torch.zeros(1, 3, dtype=torch.long)
        thumb_plan = dataclasses.replace(plan, canvas=self.patch, tiles=tile)
        thumb = sample_level(
            thumb_plan, denoiser(thumb_plan), self._start(thumb_plan, run, []), s, gens, progress
        )
        sigmas = karras_sigmas(plan.steps, s.sigma_min, s.layout_sigma, s.rho)
        rest = dataclasses.replace(plan, sigmas=sigmas, start=s.layout_sigma)
        return sample_level(
            rest, denoiser(rest), self._start(rest, run, finished, prior=thumb), s, gens, progress
        )

    def _start(self, plan: LevelPlan, run: _Run, finished: list[torch.Tensor], prior=None) -> torch.Tensor:
        """The unit noise a level starts from; with a truncated start (SDEdit) plus `prior` (by
        default the coarser level in this level's scaled space), upsampled to the canvas, over
        σ_start (the sampler multiplies by it)."""
        noise = torch.stack([torch.randn(3, *plan.canvas, generator=g) for g in run.gens]).to(self.device)
        if plan.start > 0:
            if prior is None:
                prior = run.diffusion.rescale(finished[plan.level - 1], plan.level - 1, plan.level)
            noise = (
                noise
                + F.interpolate(prior, size=plan.canvas, mode="trilinear", align_corners=False) / plan.start
            )
        return noise

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


def sample_level(
    plan: LevelPlan, denoise: Denoiser, noise: torch.Tensor, s: SampleConfig, gens, progress: bool
):
    """One level's canvas (B, 3, *canvas) in scaled space, by the EDM sampler from `noise`."""
    evals = plan.steps * (2 if plan.heun else 1) - (1 if plan.heun else 0)
    desc = f"level {plan.level} ({len(plan.tiles)} tiles x {evals} evals)"
    bar = tqdm(total=plan.steps, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)

    def randn() -> torch.Tensor:
        return torch.stack([torch.randn(3, *plan.canvas, generator=g) for g in gens]).to(noise.device)

    y = edm_sampler(
        denoise,
        noise,
        plan.sigmas,
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


def guidance_scales(guidance: float | list[float], levels: int) -> list[float]:
    """One classifier-free guidance scale per level, from one scale or a list."""
    if isinstance(guidance, list | tuple):
        if len(guidance) != levels:
            raise ValueError(
                f"got {len(guidance)} guidance scales for {levels} levels; give one scale or one per level"
            )
        return [float(g) for g in guidance]
    return [float(guidance)] * levels


class Sampler:
    """What `hpdm sample` runs: the `Cascade` of a model, with level 0 sampled together with the
    companions its config names — a separate level-0 model (`sample.base`, at the steps with σ in
    `sample.base_interval`; not in the paper) and an autoguidance guide (`sample.guide`). Level 0
    is then handed to the cascade as given, drawn from the same per-video random streams."""

    def __init__(
        self, model: HPDM, cfg: Config, device=None, guide: HPDM | None = None, base: HPDM | None = None
    ):
        """`guide`/`base`: by default the checkpoints that `cfg.sample.guide`/`base` name (none when null)."""
        self.cascade = Cascade(model, cfg, device)
        self.cfg, self.device = cfg, self.cascade.device
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

    @torch.no_grad()
    def generate(self, num: int = 1, **kw) -> Generation:
        """As `Cascade.generate`."""
        auto = self.guide is not None and self.cfg.sample.guide_scale != 1.0
        if kw.get("given") or (not auto and self.base is None):
            return self.cascade.generate(num, **kw)
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise ValueError(f"num={num!r}: give the number of videos to generate, a whole number >= 1")
        gens = video_generators(kw.get("seed", 0), num)
        level0, plans, run = self.level0(num, gens, auto, **kw)
        if len(plans) == 1:  # a one-level model: level 0 is the video
            s = self.cfg.sample
            guidance, seed = kw.get("guidance"), kw.get("seed", 0)
            settings = self.cascade.settings(
                plans, run, seed, kw.get("overlap") or s.overlap, guidance, kw.get("cache") or s.cache, 0
            )
            return Generation([level0.clamp(-1, 1).cpu()], settings)
        gen = self.cascade.generate(num, **kw, given=[level0], generators=gens)
        gen.settings["given_levels"] = 0
        return gen

    def level0(
        self,
        num,
        gens,
        auto: bool,
        labels=None,
        text=None,
        size=None,
        steps=None,
        overlap=None,
        guidance=None,
        progress=True,
        **_,
    ) -> tuple[torch.Tensor, list[LevelPlan], _Run]:
        """Level 0 (num, 3, *V^0), sampled with the base model and the guide; the generation's
        plans and run."""
        c, s = self.cascade, self.cfg.sample
        geo = output_geometry(self.cfg, size)
        plans = c.plan(geo, overlap or s.overlap, steps)
        plan = plans[0]
        text = text.to(self.device) if text is not None else None
        run = _Run(
            geo, Diffusion(self.cfg.diffusion, geo), Cond(c._labels(labels, num), text), gens, progress
        )
        scale = guidance_scales(s.cfg if guidance is None else guidance, geo.num_levels)[0]
        use_cfg = scale != 1.0 and run.cond.given()

        def denoiser(p: LevelPlan) -> Denoiser:
            tiling = c.tiling(p, run)
            branches = c.branches(c.model, p, run, tiling, [], use_cfg, "none")
            if self.base is not None:
                base = c.branches(self.base, p, run, tiling, [], use_cfg, "none")
                branches = {k: Switch(base[k], b, s.base_interval) for k, b in branches.items()}
            guidance = [classifier_free(scale, s.cfg_interval)] if use_cfg else []
            if auto:
                branches["guide"] = Branch(self.guide, 0, tiling, [], run.cond, cache=False)
                guidance.append(autoguidance(s.guide_scale, s.guide_interval))
            return TiledDenoiser(tiling, branches, guidance, run.diffusion.sigma_data[0])

        y = c.sample_plan(plan, run, [], denoiser)
        return y * run.diffusion.sigma_in[0], plans, run


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


def generate(model: HPDM, cfg: Config, **kwargs) -> Generation:
    """Generate videos with a trained model (and the companions its config names); see
    `Cascade.generate` for the options."""
    return Sampler(model, cfg).generate(**kwargs)
