"""`hpdm info`: parameters, tokens per level, FLOPs per training step by level and block, activation
memory, and the same numbers for the model's full-resolution counterpart (`full_res_config`).

How it counts, without allocating the model. The model is built on the `meta` device
(`with torch.device("meta")`): its tensors have shapes and dtypes but no storage, so a UCF or
text-to-video model at full resolution (~10^9 parameters, ~10^11 bytes of activations) costs
kilobytes and a second. One training step (the loss of `Diffusion.loss`, then `backward`) runs on
meta tensors, which runs the model's own code: nothing is re-derived by hand, so a new layer or knob
is counted the day it is written, where closed forms would silently go stale.

- FLOPs: the formulas of `torch.utils.flop_counter.FlopCounterMode`, applied to every op of that
  step (forward + backward; matmuls and convolutions: element-wise ops, norms, softmax and
  grid_sample are not counted). Two corrections to the counter as torch 2.13 ships it
  (`flop_counter`):
  1. attention. `F.scaled_dot_product_attention` runs the CPU flash kernel on the CPU, for which the
     counter has no formula, so the old count (a real CPU step) had 0 for QKᵀ and AV; on meta it
     would run the unfused math path, which keeps the (n_q, n_kv) weights. Here it runs as the fused
     kernel on every device (`fused_attention`) and is counted with torch's formulas for fused
     attention: forward 4·n_q·n_kv·width, backward 10·n_q·n_kv·width (scores recomputed), what the
     counter reports for flash or memory-efficient attention on a GPU.
  2. grouped convolutions. The counter's weight-gradient term ignores `groups`, so the depthwise
     3x3x3 convolution of `model.token_conv` counted `dim` times its real backward cost.
  Hence the totals differ from the old count by exactly the attention FLOPs (added) and (dim - 1)
  times the depthwise convolutions' forward FLOPs (removed).
- Per block: an op belongs to the block (or DCF layer) whose forward created it, in the backward
  too (`_StepCounter`). FlopCounterMode's module tracker, which the old split used, left each
  block's write attention and write MLP backward outside the block. tests/test_info.py checks the
  totals and the blocks against numbers recorded from the old code, corrected by closed forms of
  exactly these three differences.
- Per level: levels are folded into the batch, so block b's FLOPs are shared by the levels it
  processes in proportion to their token counts; the rest (tokenizer, detokenizer, conditioning,
  DCF sampling) is split equally.
- Activation memory: the bytes of the tensors autograd saves for backward during the training
  forward, recorded by a saved-tensors hook and deduplicated by storage, parameters excluded. Meta
  tensors have storages with sizes, so this is the sum a real forward gives (the same as the old
  count; tested against a real CPU step); with fused attention no (n_q, n_kv) matrix is saved, as
  on a GPU. It is what one video adds to a training step without activation checkpointing; the
  training state (fp32 weights, gradients, two optimiser moments, EMA: 20 bytes per parameter) and
  the allocator's temporaries come on top.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import (
    FlopCounterMode,
    conv_flop_count,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from hpdm.config import Config, levels_per_block, per_rank_batch
from hpdm.diffusion import Diffusion, input_scales
from hpdm.model.hpdm import HPDM, count_parameters
from hpdm.pyramid import PyramidGeometry, sample_boxes

aten = torch.ops.aten

# fp32 weights, gradients, the two moments of AdamW or LAMB, and the EMA copy the trainer keeps on
# the same device
TRAIN_STATE_BYTES_PER_PARAMETER = 4 * 5

# ---------------------------------------------------------------------------------------------
# the full-resolution counterpart


def full_res_config(cfg: Config) -> Config:
    """The 1-level full-resolution model a pyramid config is compared against (a new Config).

    Same backbone: blocks, widths, latents, heads, MLPs, conditioning and the tokenizer cube
    (`model.cube`); one level whose
    patch is the target; adaptive computation off. Every per-level setting becomes one level's:
    - input scaling: `diffusion.sigma_in0` is σ_in of the pyramid's finest level, the one at the
      target resolution (`sigma_in_factor` then has nothing to scale);
    - noise schedule and sampling: level 0's `diffusion.P_mean`, `P_std`, `sample.steps` and
      `sample.cfg`. Like level 0, the full-resolution model draws a whole video from pure noise;
      input scaling (Chen 2023) is what carries a noise schedule to a larger resolution;
    - `diffusion.level_weight` 1 (with one level it only scales the loss);
    - off, as they have no coarser level to act on: context fusion (`model.fusion=none`),
      `diffusion.clean_context`, `sample.start_sigma`, `sample.consistency`, and the
      level-0 `sample.base` and `sample.guide` checkpoints (their patch is level 0's, not the target).
    `name` and `train.out_dir` get a `-full-res` suffix so the two runs never share a folder.
    Raises ConfigError when the result is invalid (it is validated).
    """
    out = copy.deepcopy(cfg)
    L = cfg.pyramid.num_levels
    geo = PyramidGeometry(cfg.pyramid.patch, cfg.pyramid.target, L)
    p, m, d, s = out.pyramid, out.model, out.diffusion, out.sample
    p.patch, p.num_levels = tuple(cfg.pyramid.target), 1
    m.levels_per_block, m.fusion = None, "none"
    d.sigma_in0, d.sigma_in_factor = input_scales(cfg.diffusion, geo)[-1], None
    d.P_mean, d.P_std = _level0(d.P_mean), _level0(d.P_std)
    d.level_weight, d.clean_context = 1.0, 0.0
    s.steps, s.cfg = _level0(s.steps), _level0(s.cfg)
    s.start_sigma, s.consistency, s.consistency_sigma = 0.0, 0.0, 0.0
    s.base = s.base_interval = s.guide = s.guide_interval = None
    out.name = f"{cfg.name}-full-res"
    out.train.out_dir = f"{cfg.train.out_dir.rstrip('/')}-full-res"
    return out.validate()


def _level0(v):
    return v[0] if isinstance(v, list | tuple) else v


# ---------------------------------------------------------------------------------------------
# counting


def _sdpa_flops(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(q, k, v)


def _sdpa_backward_flops(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, q, k, v)


def _conv_backward_flops(
    grad_out, x, w, _bias, _stride, _padding, _dilation, transposed, _out_pad, groups, mask, out_shape=None
) -> int:
    """torch's convolution_backward formula with the weight gradient divided by `groups`: each of the
    `groups` channel groups correlates only its own input and output channels."""

    def t(shape):
        return [shape[1], shape[0], *shape[2:]]

    flops = 0
    if mask[0]:
        flops += conv_flop_count(grad_out, w, list(x), not transposed)
    if mask[1]:
        pair = (t(grad_out), t(x)) if transposed else (t(x), t(grad_out))
        flops += conv_flop_count(*pair, t(w), transposed=False) // groups
    return flops


_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward_flops,
    aten.convolution_backward: _conv_backward_flops,
}


def flop_counter() -> FlopCounterMode:
    """`FlopCounterMode` with the formulas torch 2.13 lacks (CPU flash attention) or gets wrong
    (weight gradient of grouped convolutions); use it with `fused_attention()` on meta tensors."""
    return FlopCounterMode(display=False, depth=None, custom_mapping=_FORMULAS)


class _StepCounter(TorchDispatchMode):
    """Counts the FLOPs of every op with a `flop_counter()` formula, and attributes each, forward or
    backward, to the module of `regions` whose forward created it (else to None).

    Not FlopCounterMode itself: its per-module split follows module hooks into the backward, which
    in torch 2.13 leaves part of a block's backward outside the block (in a RIN block, the write
    attention's and the write MLP's); its hooks and decompositions also make a meta step about 1.5x
    slower. Here a backward op belongs to the autograd node being run, and that node to the module
    whose forward created it: autograd numbers nodes in creation order, so a module's forward owns
    the numbers handed out while it ran."""

    def __init__(self, regions: dict[str, torch.nn.Module]):
        super().__init__()
        self.formulas = flop_counter().flop_registry
        self.regions = regions
        self.total = 0
        self.by_region: dict[str | None, int] = {}
        self._spans: list[tuple[int, int, str]] = []  # (number before, number after, region)
        self._open: list[tuple[str, int]] = []
        self._hooks: list = []

    @staticmethod
    def _next_node_number() -> int:
        # a throw-away node: the number it gets is the next one autograd hands out
        return torch.ones((), device="meta", requires_grad=True).view(()).grad_fn._sequence_nr()

    def __enter__(self):
        for name, mod in self.regions.items():
            self._hooks.append(mod.register_forward_pre_hook(lambda *_, n=name: self._begin(n)))
            self._hooks.append(mod.register_forward_hook(lambda *_, n=name: self._end()))
        return super().__enter__()

    def __exit__(self, *args):
        for h in self._hooks:
            h.remove()
        return super().__exit__(*args)

    def _begin(self, name: str) -> None:
        self._open.append((name, self._next_node_number()))

    def _end(self) -> None:
        name, first = self._open.pop()
        self._spans.append((first, self._next_node_number(), name))

    def _region(self) -> str | None:
        node = torch._C._current_autograd_node()
        if node is None:  # forward
            return self._open[-1][0] if self._open else None
        number = node._sequence_nr()
        return next((r for first, last, r in self._spans if first < number < last), None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = self.formulas.get(func._overloadpacket)
        if formula is not None:
            flops = int(formula(*args, **kwargs, out_val=out))
            self.total += flops
            region = self._region()
            self.by_region[region] = self.by_region.get(region, 0) + flops
        return out


class fused_attention(TorchFunctionMode):  # noqa: N801 (used as a context manager)
    """Run `F.scaled_dot_product_attention` on meta tensors as the fused (flash) kernel it is on a CPU
    or a GPU, not the math path meta tensors would take, so that the attention weights are not
    saved for backward and the FLOPs are counted like a fused kernel's."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and args[0].device.type == "meta":
            if len(args) == 4 and args[3].dtype == torch.bool:
                args = args[:3]  # a key mask (padded text tokens) costs what the full attention does
            if len(args) > 3 or kwargs:
                raise NotImplementedError(
                    "hpdm info counts attention without float masks, dropout, causality or a custom scale; "
                    "count this model with a real forward (model_info(..., device='cpu'))"
                )
            return aten._scaled_dot_product_flash_attention_for_cpu(*args)[0]
        return func(*args, **kwargs)


@dataclass
class _Trace:
    model: HPDM
    geo: PyramidGeometry
    total: int  # FLOPs of the step, forward + backward
    by_region: dict  # "blocks.b" / "fusion.b" (None: the rest) -> FLOPs, forward + backward
    saved_bytes: int  # bytes saved for backward

    def flops(self, region: str) -> int:
        return self.by_region.get(region, 0)


def _step_inputs(cfg: Config, batch: int, device):
    """A fresh model and one training batch of `batch` videos on `device`."""
    geo = PyramidGeometry(cfg.pyramid.patch, cfg.pyramid.target, cfg.pyramid.num_levels)
    boxes = sample_boxes(geo, batch, torch.Generator().manual_seed(0)).to(device)
    with torch.device(device):
        model = HPDM(cfg)
        x = torch.randn(batch, geo.num_levels, 3, *geo.patch)  # (B, L, 3, *patch)
        labels = torch.zeros(batch, dtype=torch.long) if cfg.model.num_classes > 0 else None
        text = torch.zeros(batch, 8, cfg.model.text_dim) if cfg.model.text_dim > 0 else None
    return geo, model, Diffusion(cfg.diffusion, geo), boxes, x, labels, text


def _trace(cfg: Config, batch: int, device: str | torch.device = "meta") -> _Trace:
    """One training step of `batch` videos (forward + backward) on `device`, counted."""
    geo, model, diffusion, boxes, x, labels, text = _step_inputs(cfg, batch, device)
    regions = {f"blocks.{b}": blk for b, blk in enumerate(model.blocks)}
    regions.update({f"fusion.{b}": lin for b, lin in model.fusion.items()})
    counter = _StepCounter(regions)
    with counter, fused_attention():
        loss, saved = _loss_saving(model, diffusion, boxes, x, labels, text)
        loss.backward()
    return _Trace(model, geo, counter.total, counter.by_region, saved)


def _loss_saving(model, diffusion, boxes, x, labels, text) -> tuple[torch.Tensor, int]:
    """The training loss, and the bytes of the tensors saved for its backward (deduplicated by
    storage, parameters excluded)."""
    return _saving(
        model, lambda: diffusion.loss(model, x, boxes, labels, text, null_class=model.null_class())[0]
    )


def _saving(model, fn) -> tuple[torch.Tensor, int]:
    """fn()'s result and the bytes of the tensors it saves for backward (parameters excluded)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        try:
            storage = t.untyped_storage()
            seen[storage._cdata] = max(seen.get(storage._cdata, 0), storage.nbytes())
        except (RuntimeError, NotImplementedError):  # tensors without a storage (e.g. subclasses)
            pass
        return t

    params = {p.untyped_storage()._cdata for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(v for k, v in seen.items() if k not in params)


def checkpointed_activation_bytes(cfg: Config, batch: int = 1, device: str | torch.device = "meta") -> int:
    """Bytes held for the backward of one training step of `batch` videos with activation
    checkpointing (`train.activation_checkpointing`, each RIN block recomputed in the backward):
    what the network outside the blocks saves, every block's inputs (kept to recompute it), and
    the largest block's own saved tensors while it is recomputed."""
    _, model, diffusion, boxes, x, labels, text = _step_inputs(cfg, batch, device)
    model.activation_checkpointing = True
    inputs: list[tuple] = []
    hooks = [blk.register_forward_pre_hook(lambda m, args: inputs.append((m, args))) for blk in model.blocks]
    with fused_attention():
        loss, outside = _loss_saving(model, diffusion, boxes, x, labels, text)
        del loss
        held = sum(sum(a.numel() * a.element_size() for a in args if a is not None) for _, args in inputs)
        block, args = max(inputs, key=lambda ia: ia[1][0].numel())
        args = [a.detach().requires_grad_(a.is_floating_point()) if a is not None else None for a in args]
        _, peak = _saving(model, lambda: block(*args))
    for h in hooks:
        h.remove()
    return outside + held + peak


def activation_bytes(model, diffusion, boxes, x, labels, text) -> int:
    """Bytes of tensors saved for backward during one training forward of real (or meta) inputs."""
    with fused_attention():
        loss, saved = _loss_saving(model, diffusion, boxes, x, labels, text)
    del loss
    return saved


# ---------------------------------------------------------------------------------------------
# the report


def model_info(
    cfg: Config,
    batch: int = 1,
    measure_memory: bool = True,
    vs_full_res: bool = False,
    device: str | torch.device = "meta",
) -> dict:
    """Counted numbers for one training step of `batch` videos in fp32, per video.

    `vs_full_res` adds `full_res` (the same report for `full_res_config(cfg)`) and `vs_full_res`
    (its FLOPs and activation bytes divided by this model's). `device="cpu"` runs real tensors
    instead of meta ones (the same numbers, for checking; slow and memory-hungry for large models).
    """
    tr = _trace(cfg, batch, device)
    model, geo, total = tr.model, tr.geo, tr.total
    lpb = levels_per_block(cfg)
    L = geo.num_levels
    blocks = [tr.flops(f"blocks.{b}") for b in range(len(lpb))]
    fusion = [tr.flops(f"fusion.{b}") for b in range(len(lpb))]
    per_level = [0.0] * L
    for b, nb in enumerate(lpb):
        active = range(min(nb, L))
        for lvl in active:  # levels are folded into the batch, with equal token counts
            per_level[lvl] += blocks[b] / len(active)
            if lvl > 0 and nb > 1:
                per_level[lvl] += fusion[b] / (nb - 1)
    rest = total - sum(blocks) - sum(fusion)
    per_level = [v + rest / L for v in per_level]  # tokenizer, detokenizer, conditioning

    if cfg.model.levels_per_block is not None:  # the same model with adaptive computation off
        no_ac_cfg = copy.deepcopy(cfg)
        no_ac_cfg.model.levels_per_block = None
        no_ac = _trace(no_ac_cfg, batch, device)
    else:
        no_ac = tr
    no_ac_total = no_ac.total

    out = {
        "name": cfg.name,
        "parameters": count_parameters(model),
        "levels": [
            {
                "level": lvl,
                "virtual_size": list(geo.level_sizes[lvl]),
                "tokens": model.num_tokens,
                "blocks": [b for b, nb in enumerate(lpb) if lvl < nb],
                "train_step_flops": per_level[lvl] / batch,
            }
            for lvl in range(L)
        ],
        "blocks": [
            {"block": b, "levels": lpb[b], "train_step_flops": (blocks[b] + fusion[b]) / batch}
            for b in range(len(lpb))
        ],
        "train_step_flops": total / batch,
        "train_step_flops_without_ac": no_ac_total / batch,
        "ac_flops_saving": 1 - total / no_ac_total if no_ac_total else 0.0,
        "batch": batch,
    }
    if measure_memory or vs_full_res:
        out["activation_bytes_per_video"] = tr.saved_bytes / batch
        out["activation_bytes_per_video_without_ac"] = no_ac.saved_bytes / batch
        out["activation_bytes_per_video_checkpointed"] = (
            checkpointed_activation_bytes(cfg, batch, device) / batch
        )
        out["train_state_bytes"] = TRAIN_STATE_BYTES_PER_PARAMETER * out["parameters"]
    if vs_full_res:
        full = model_info(full_res_config(cfg), batch, device=device)
        out["full_res"] = full
        out["vs_full_res"] = {  # how many times the full-resolution model's cost the pyramid's is
            "flops": full["train_step_flops"] / out["train_step_flops"],
            "activation_bytes": full["activation_bytes_per_video"] / out["activation_bytes_per_video"],
        }
    return out


def recipe(info: dict, cfg: Config, gpus: int, tflops: float, gpu_memory_gib: float = 80.0) -> dict:
    """What the config's training run costs on `gpus` GPUs that each sustain `tflops` TFLOP/s:
    videos (steps x global batch), FLOPs, GPU-hours, and memory per GPU (training state, sharded
    under FSDP, plus the per-rank micro-batch's activations, with activation checkpointing when
    the config turns it on), and the smallest `train.grad_accum` whose micro-batch fits
    `gpu_memory_gib` (None when even one video per GPU does not). Needs `info` with memory
    (`model_info(measure_memory=True)`)."""
    t = cfg.train
    micro = per_rank_batch(t, gpus)
    videos = t.steps * micro * gpus * t.grad_accum
    flops = videos * info["train_step_flops"]
    ckpt = t.activation_checkpointing
    act = info["activation_bytes_per_video_checkpointed" if ckpt else "activation_bytes_per_video"]
    state = info["train_state_bytes"] / (gpus if t.distributed == "fsdp" else 1)
    total = micro * gpus * t.grad_accum
    fits = [
        a
        for a in range(1, total // gpus + 1)
        if total % (gpus * a) == 0 and state + total // (gpus * a) * act <= gpu_memory_gib * 2**30
    ]
    return {
        "gpus": gpus,
        "tflops_per_gpu": tflops,
        "steps": t.steps,
        "global_batch": micro * gpus * t.grad_accum,
        # joint image+video training: this share of every batch is still images (each costs a video)
        "images_per_batch": round(micro * gpus * t.grad_accum * cfg.data.image_ratio),
        "micro_batch_per_gpu": micro,
        "videos": videos,
        "flops": flops,
        "gpu_hours": flops / (tflops * 1e12) / 3600,
        "distributed": t.distributed,
        "activation_checkpointing": ckpt,
        "memory_per_gpu_bytes": state + micro * act,
        "state_per_gpu_bytes": state,
        "gpu_memory_gib": gpu_memory_gib,
        "grad_accum_to_fit": fits[0] if fits else None,
    }


def _fmt_flops(v: float) -> str:
    for unit, scale in (
        ("ZFLOP", 1e21),
        ("EFLOP", 1e18),
        ("PFLOP", 1e15),
        ("TFLOP", 1e12),
        ("GFLOP", 1e9),
        ("MFLOP", 1e6),
    ):
        if v >= scale:
            return f"{v / scale:.2f} {unit}"
    return f"{v:.0f} FLOP"


def format_info(info: dict) -> str:
    lines = [
        f"config            {info['name']}",
        f"parameters        {info['parameters']:,} ({human_bytes(info['parameters'] * 4)} fp32)",
        f"train step FLOPs  {_fmt_flops(info['train_step_flops'])} per video (forward + backward)",
        f"without AC        {_fmt_flops(info['train_step_flops_without_ac'])} per video "
        f"(AC saves {100 * info['ac_flops_saving']:.1f}%)",
    ]
    if "activation_bytes_per_video" in info:
        lines += [
            f"activations       {human_bytes(info['activation_bytes_per_video'])} per video saved for "
            f"backward (without AC {human_bytes(info['activation_bytes_per_video_without_ac'])}; "
            f"with activation checkpointing {human_bytes(info['activation_bytes_per_video_checkpointed'])})",
            f"training state    {human_bytes(info['train_state_bytes'])} (fp32 weights, gradients, 2 "
            "optimiser moments, EMA)",
        ]
    if "recipe" in info:
        r = info["recipe"]
        how = "FSDP-sharded" if r["distributed"] == "fsdp" else "replicated (DDP)"
        act = "with" if r["activation_checkpointing"] else "without"
        batch = f"{r['global_batch']:,} videos"
        if img := r.get("images_per_batch"):
            batch = f"{r['global_batch']:,} clips ({r['global_batch'] - img:,} videos + {img:,} images)"
        lines += [
            f"run on {r['gpus']} GPUs  {r['steps']:,} steps x {batch} = "
            f"{_fmt_flops(r['flops'])} = {r['gpu_hours']:,.0f} GPU-hours at {r['tflops_per_gpu']:g} TFLOP/s per GPU",
            f"memory per GPU    {human_bytes(r['memory_per_gpu_bytes'])}: training state "
            f"{human_bytes(r['state_per_gpu_bytes'])} ({how}) + {r['micro_batch_per_gpu']} videos "
            f"per micro-batch, {act} activation checkpointing",
        ]
        a = r["grad_accum_to_fit"]
        lines.append(
            f"                  fits {r['gpu_memory_gib']:g} GiB with train.grad_accum={a} "
            f"({r['global_batch'] // (r['gpus'] * a)} videos per micro-batch)"
            if a
            else f"                  does not fit {r['gpu_memory_gib']:g} GiB even at 1 video per GPU"
        )
    lines.append("")
    lines.append("level  virtual size (FxHxW)  tokens  blocks        FLOPs/video")
    for lv in info["levels"]:
        size = "x".join(map(str, lv["virtual_size"]))
        lines.append(
            f"{lv['level']:>5}  {size:<20}  {lv['tokens']:>6}  {str(lv['blocks']):<12}  "
            f"{_fmt_flops(lv['train_step_flops'])}"
        )
    lines.append("")
    lines.append("block  levels  FLOPs/video")
    for bl in info["blocks"]:
        lines.append(f"{bl['block']:>5}  {bl['levels']:>6}  {_fmt_flops(bl['train_step_flops'])}")
    if "full_res" in info:
        full, ratio = info["full_res"], info["vs_full_res"]
        (level,) = full["levels"]
        size = "x".join(map(str, level["virtual_size"]))
        lines += [
            "",
            f"full resolution   {full['name']}: 1 level of {size}, {level['tokens']:,} tokens, AC off",
            f"  parameters      {full['parameters']:,} ({human_bytes(full['parameters'] * 4)} fp32)",
            f"  FLOPs           {_fmt_flops(full['train_step_flops'])} per video = "
            f"{ratio['flops']:.2f}x the pyramid's",
            f"  activations     {human_bytes(full['activation_bytes_per_video'])} per video = "
            f"{ratio['activation_bytes']:.2f}x the pyramid's",
        ]
    return "\n".join(lines)


def human_bytes(n: float) -> str:
    if n <= 0:
        return "0 B"
    k = min(4, int(math.log(n, 1024)))
    return f"{n / 1024**k:.1f} {['B', 'KiB', 'MiB', 'GiB', 'TiB'][k]}"
