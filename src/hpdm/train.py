"""The training loop: patch pyramids → EDM loss → optimiser, EMA, atomic checkpoints, exact resume.

Checkpoints are written, read and cleaned up by `hpdm.checkpoint` (see docs/training.md); the
trainer gathers the states and decides what to resume from.
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

from hpdm import distributed as dist
from hpdm.checkpoint import (
    CKPT_PREFIX,
    TMP_PREFIX,
    CheckpointError,
    CheckpointMismatch,
    check_fits,
    clean_leftovers,
    list_checkpoints,
    load_model,
    read_step,
    read_training_state,
    read_weights,
    resolve_checkpoint,
    save_checkpoint,
    set_aside,
)
from hpdm.config import Config, per_rank_batch, save_config
from hpdm.data import batch_stream, build_dataset, build_image_dataset
from hpdm.diffusion import Diffusion
from hpdm.model.hpdm import HPDM
from hpdm.model.self_cond import SelfConditioned
from hpdm.optim import build_optimizer, lr_lambda
from hpdm.pyramid import PyramidGeometry, extract_patches, sample_boxes

__all__ = [  # the checkpoint helpers moved to hpdm.checkpoint; importable from here as before
    "CKPT_PREFIX",
    "TMP_PREFIX",
    "CheckpointError",
    "Trainer",
    "TrainingDiverged",
    "list_checkpoints",
    "load_model",
    "pick_device",
    "resolve_checkpoint",
]


def _last(out_dir) -> str:
    cks = list_checkpoints(out_dir)
    return str(cks[-1]) if cks else "none"


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; the message names the step and the level."""


_M64 = (1 << 64) - 1


def _seed(seed: int, position: int, stream: int) -> int:
    """A well-mixed 63-bit seed for (run seed, sample position, stream): SplitMix64's finaliser.
    Every bit matters: CPU generators keep only the low 32."""
    x = (seed * 0x9E3779B97F4A7C15 + position * 0xD1B54A32D192ED03 + stream * 0x8CB92BA72F3D8DD7) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return (x ^ (x >> 31)) >> 1


def geometry(cfg: Config) -> PyramidGeometry:
    return PyramidGeometry(cfg.pyramid.patch, cfg.pyramid.target, cfg.pyramid.num_levels)


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------------------------------------


class Trainer:
    """Single-process or DDP/FSDP (under torchrun) training of one config."""

    def __init__(
        self,
        cfg: Config,
        out_dir: str | Path | None = None,
        resume: str | None = None,
        device=None,
        progress: bool = True,
        init: str | Path | None = None,
    ):
        self.cfg = cfg
        self.ctx = dist.init()
        self.device = pick_device(device) if not self.ctx.distributed else self.ctx.device
        self.out_dir = Path(out_dir or cfg.train.out_dir)
        self.progress = progress and self.ctx.is_main
        t = cfg.train
        t.batch_size = per_rank_batch(t, self.ctx.world)  # from train.global_batch when it is set
        if self.device.type == "cuda" and t.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if t.precision == "bf16" and self.device.type != "cuda":
            raise ValueError("train.precision=bf16 is CUDA-only (it is ~17x slower on CPU); use fp32")

        torch.manual_seed(t.seed)  # the same initial weights on every rank and in one process
        self.geo = geometry(cfg)
        self.diffusion = Diffusion(cfg.diffusion, self.geo)
        self.model = HPDM(cfg).to(self.device)
        self.model.activation_checkpointing = t.activation_checkpointing
        if init is not None:  # grow a base model into this one (paper §5.2); a resume overrides it
            from hpdm.grow import init_from_checkpoint

            rep = init_from_checkpoint(self.model, init)
            if self.ctx.is_main and progress:
                print(
                    f"initialised from {init}: {len(rep['copied'])} copied, {len(rep['grown'])} grown, "
                    f"{len(rep['new'])} new tensors ({', '.join(rep['new'][:6])}{' ...' if len(rep['new']) > 6 else ''})"
                )
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.net = dist.wrap(self.model, cfg, self.ctx)
        self.ema = dist.wrap_ema(self.ema, self.ctx)  # sharded like the model under FSDP
        # what the loss calls: the (wrapped) network, or with latent self-conditioning its two passes
        self.denoiser = (
            SelfConditioned(self.net, cfg.model.self_cond) if cfg.model.self_cond > 0 else self.net
        )
        torch.manual_seed(t.seed + self.ctx.rank)
        self.opt = build_optimizer(self.net, t.optimizer, t.lr, t.weight_decay, t.betas)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lr_lambda(t.warmup, t.steps, t.schedule, t.min_lr_ratio)
        )
        self.step = 0
        self._tb = None
        self.dataset = build_dataset(cfg, train=True)
        if cfg.model.num_classes > 0 and hasattr(self.dataset, "num_classes"):
            if self.dataset.num_classes > cfg.model.num_classes:
                raise ValueError(
                    f"the dataset has {self.dataset.num_classes} classes but model.num_classes="
                    f"{cfg.model.num_classes}; set model.num_classes={self.dataset.num_classes}"
                )
        # `shapes` drawn on the training device: its batches come from the main process then
        self.render_on_device = hasattr(self.dataset, "device") and (
            cfg.data.render == "device" or (cfg.data.render == "auto" and self.device.type == "cuda")
        )
        if self.render_on_device:
            self.dataset.device = self.device
        self.images = build_image_dataset(cfg, train=True)  # joint image+video training, or None
        if self.images is not None and self.render_on_device and hasattr(self.images, "device"):
            self.images.device = self.device
        if self.ctx.is_main:
            clean_leftovers(self.out_dir)  # of a save or prune that a crash interrupted
        dist.barrier(self.ctx)
        if resume:
            self._resume(resume)
        elif list_checkpoints(self.out_dir):  # a new run here would prune the old run's checkpoints
            newest = list_checkpoints(self.out_dir)[-1]
            raise ValueError(
                f"{self.out_dir} already holds a run (newest checkpoint {newest.name}); continue it with "
                "--resume auto, or start the new run in another folder (--out DIR)"
            )

    # -------------------------------------------------------------------------------------
    def _resume(self, resume: str) -> None:
        """`--resume DIR`: exactly that checkpoint. `--resume auto`: the newest readable one of this run,
        setting unreadable newer ones aside as `corrupt_step_*`; a checkpoint that reads but does not
        fit this config stops the run (it is the config that is wrong, not the checkpoint)."""
        if resume != "auto":
            self.load_checkpoint(resolve_checkpoint(resume))
            return
        cks = list_checkpoints(self.out_dir)
        bad: list[tuple[Path, CheckpointError]] = []
        for ck in reversed(cks):  # newest first; none at all: start fresh
            try:
                st = self._read(ck)
            except CheckpointMismatch:
                raise
            except CheckpointError as e:
                warnings.warn(f"--resume auto: skipping {ck.name}: {e}", stacklevel=3)
                bad.append((ck, e))
                continue
            self._apply(st)
            break
        if bad and len(bad) == len(cks):
            raise CheckpointError(
                f"--resume auto: none of the {len(cks)} checkpoint(s) in {self.out_dir / 'checkpoints'} is "
                f"readable (newest: {bad[0][1]}); none was moved. Move them away to start the run "
                "afresh, or train into another train.out_dir"
            )
        if bad:
            dist.barrier(self.ctx)  # every rank has read before the bad ones move
            if self.ctx.is_main:
                moved = [set_aside(ck) for ck, _ in bad]
                print(
                    f"resumed from step {self.step}; set aside the unreadable checkpoint(s) as "
                    f"{', '.join(str(m) for m in moved)} (delete them when you no longer need them)"
                )

    def load_checkpoint(self, ck: Path) -> None:
        self._apply(self._read(ck))

    def _read(self, ck: Path) -> dict:
        """Every file of a checkpoint, read and checked against the model before anything is changed."""
        if not ck.is_dir():
            raise FileNotFoundError(f"no checkpoint folder at {ck}")
        out = {"ck": ck, "step": read_step(ck), "training": read_training_state(ck / "training.pt")}
        for name in ("model", "ema"):
            out[name] = read_weights(ck / f"{name}.safetensors")
        fix = (
            "this config; resume with the config the run was trained with (its config.yaml), "
            "or give a new run its own train.out_dir"
        )
        for name in ("model", "ema"):
            check_fits(self.model, out[name], ck / f"{name}.safetensors", fix)
        return out

    def _apply(self, st: dict) -> None:
        ck = st["ck"]
        try:
            dist.load_model_state(self.net, self.model, st["model"], self.ctx)
            dist.load_model_state(None, self.ema, st["ema"], self.ctx)
        except RuntimeError as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointMismatch(
                f"{ck}: its weights do not fit this config ({' '.join(str(e).split())[:300]}); resume "
                "with the config the run was trained with (its config.yaml)"
            ) from None
        tr = st["training"]
        try:
            dist.load_optimizer_state(self.net, self.opt, tr["optimizer"], self.ctx)
            self.sched.load_state_dict(tr["scheduler"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointMismatch(
                f"{ck / 'training.pt'}: the optimizer state does not fit this run "
                f"({' '.join(str(e).split())[:200]}); resume with the run's own config and train.optimizer"
            ) from None
        # The training draws are keyed by sample position (`_generators`) and by step (the global
        # generators are reseeded every step); the saved states are restored for code outside it.
        if self.ctx.rank < len(tr["rng"]):
            rng = tr["rng"][self.ctx.rank]
            torch.set_rng_state(rng["torch"])
            if self.device.type == "cuda" and "cuda" in rng:
                torch.cuda.set_rng_state(rng["cuda"])
        self.step = st["step"]

    def save_checkpoint(self) -> Path | None:
        """Gather the states (a collective under DDP/FSDP) and let rank 0 write them atomically."""
        model_state = dist.model_state(self.net, self.model, self.ctx)
        ema_state = dist.model_state(None, self.ema, self.ctx)
        opt_state = dist.optimizer_state(self.net, self.opt, self.ctx)
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state()
        rngs = dist.gather_objects(rng, self.ctx)
        final = None
        if self.ctx.is_main:
            final = save_checkpoint(
                self.out_dir,
                self.step,
                model_state,
                ema_state,
                {"optimizer": opt_state, "scheduler": self.sched.state_dict(), "rng": rngs},
                self.cfg,
                {"data_position": self.step * self.global_batch, "world_size": self.ctx.world},
                keep=self.cfg.train.keep,
                keep_steps=tuple(self.cfg.train.keep_steps),
            )
        dist.barrier(self.ctx)
        return final

    @property
    def global_batch(self) -> int:
        return self.cfg.train.batch_size * self.ctx.world * self.cfg.train.grad_accum

    # -------------------------------------------------------------------------------------
    def _batches(self):
        """Micro-batches from the current step on, each with `position`: where its videos sit in
        the global sample stream (micro-batch k of rank r holds positions k·b·W + r·b + [0, b), the
        slice `StepBatchSampler` gives that rank)."""
        t, d = self.cfg.train, self.cfg.data
        micro, start = t.batch_size, self.step * t.grad_accum
        stream = batch_stream(  # made now, so its workers start before the first timed wait
            self.dataset,
            micro,
            seed=d.seed + t.seed,
            start_step=start,
            rank=self.ctx.rank,
            world=self.ctx.world,
            num_workers=0 if self.render_on_device else d.num_workers,
            pin_memory=d.pin_memory and self.device.type == "cuda" and not self.render_on_device,
            images=self.images,
            image_ratio=d.image_ratio,
        )
        return self._with_positions(stream, start)

    def _with_positions(self, stream, start: int):
        micro = self.cfg.train.batch_size
        for k, batch in enumerate(stream, start):
            first = (k * self.ctx.world + self.ctx.rank) * micro
            batch["position"] = torch.arange(first, first + len(batch["video"]))
            yield batch

    def _generators(self, positions: torch.Tensor) -> tuple[list[torch.Generator], list[torch.Generator]]:
        """Per-video generators for box positions (CPU) and for σ, noise and condition dropout (on
        the device), seeded by (train.seed, the video's stream position). A video's draws thus do
        not depend on the world size, the micro-batch split or a resume: 2 ranks × batch b train
        exactly like 1 process × batch 2b."""
        seed = self.cfg.train.seed
        boxes = [torch.Generator().manual_seed(_seed(seed, int(p), 0)) for p in positions]
        loss = [torch.Generator(device=self.device).manual_seed(_seed(seed, int(p), 1)) for p in positions]
        return boxes, loss

    def _micro_step(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        video = batch["video"].to(self.device, non_blocking=True)
        box_gens, loss_gens = self._generators(batch["position"])
        boxes = sample_boxes(self.geo, len(box_gens), generator=box_gens).to(self.device)
        x = extract_patches(video, self.geo, boxes)
        labels = batch["label"].to(self.device) if self.cfg.model.num_classes > 0 else None
        if labels is not None and ((labels < 0) | (labels >= self.cfg.model.num_classes)).any():
            bad = labels[(labels < 0) | (labels >= self.cfg.model.num_classes)][0].item()
            raise ValueError(
                f"class id {bad} is out of range for model.num_classes={self.cfg.model.num_classes}; "
                "fix the dataset labels or raise model.num_classes"
            )
        text = None
        if self.cfg.model.text_dim > 0:
            text = self._text(batch)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cfg.train.precision == "bf16"):
            loss, per_level, sigma = self.diffusion.loss(
                self.denoiser, x, boxes, labels, text, loss_gens, null_class=self.model.null_class()
            )
        return loss, per_level, sigma

    def _text(self, batch: dict) -> torch.Tensor:
        """The batch's text tokens: precomputed by `hpdm prepare` (a cache's "text"), else encoded
        now with `text.encoder` (an empty caption reads "a video")."""
        if "text" in batch:
            return batch["text"].to(self.device, non_blocking=True)
        from hpdm.text import encode_text

        return encode_text(self.cfg, [c if c.strip() else "a video" for c in batch["caption"]], self.device)

    def train(self, until: int | None = None) -> dict:
        """Train to `train.steps` (or `until`); returns the last log record."""
        with dist.guard(self.ctx, lambda: f"at step {self.step + 1}"):  # a lost rank: a clear error
            return self._train(until)

    def _train(self, until: int | None) -> dict:
        t = self.cfg.train
        if until is not None and until <= self.step:
            raise ValueError(
                f"--until {until} is not after the current step {self.step} of {self.out_dir}: give a step "
                f"from {self.step + 1} to train.steps={t.steps}, or leave --until out"
            )
        end = min(t.steps, until) if until is not None else t.steps
        log_path = self.out_dir / "log.jsonl"
        if self.ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.out_dir / "config.yaml")
        batches = self._batches()
        bar = tqdm(
            total=end,
            initial=self.step,
            desc=f"train {self.cfg.name}",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        record: dict = {}
        acc = _Meter(self.geo.num_levels, self.images is not None)
        t_last = time.perf_counter()
        self.net.train()
        while self.step < end:
            # Anything that draws from the global generators (dropout masks) draws from a state set by
            # (seed, step, rank) alone, so no earlier draw (data workers, sampling, a resume) shifts it.
            torch.manual_seed(_seed(t.seed, self.step, 2 + self.ctx.rank))
            self.opt.zero_grad(set_to_none=True)
            micro_losses, micro_per = [], []  # a non-finite loss in any micro-batch poisons the step
            for micro in range(t.grad_accum):
                t0 = time.perf_counter()
                batch = next(batches)
                acc.data_wait += time.perf_counter() - t0
                with dist.no_sync(self.net, micro < t.grad_accum - 1):
                    loss, per_sample, sigma = self._micro_step(batch)
                    (loss / t.grad_accum).backward()
                acc.add(loss.detach(), per_sample, sigma, batch.get("is_image"))
                micro_losses.append(loss.detach())
                micro_per.append(per_sample)
            finite = bool(torch.isfinite(torch.stack(micro_losses)).all())
            if not dist.all_true(finite, self.ctx):  # one rank's NaN stops every rank
                self._diverged(micro_losses, micro_per)
            gnorm = torch.nn.utils.clip_grad_norm_(
                self.net.parameters(), t.grad_clip if t.grad_clip > 0 else float("inf")
            )
            gnorm = dist.full_tensor(gnorm)  # a DTensor under FSDP; the same on every rank
            if not torch.isfinite(gnorm):
                raise TrainingDiverged(
                    f"non-finite gradient norm at step {self.step + 1} with a finite loss; stopping. "
                    f"Last good checkpoint: {_last(self.out_dir)}. Lower train.lr or train.grad_clip, then resume."
                )
            self.opt.step()
            self.sched.step()
            self._update_ema()
            self.step += 1
            acc.steps += 1
            acc.videos += self.global_batch
            acc.gnorm += float(gnorm)
            bar.update(1)
            if self.step % t.log_every == 0 or self.step == end:
                now = time.perf_counter()
                acc.all_reduce(self.ctx)  # the log shows the whole global batch
                record = acc.record(self.step, now - t_last, self.sched.get_last_lr()[0])
                t_last = now
                acc = _Meter(self.geo.num_levels, self.images is not None)
                bar.set_postfix(
                    loss=f"{record['loss']:.4f}",
                    it_s=f"{record['steps_per_s']:.2f}",
                    vid_s=f"{record['videos_per_s']:.1f}",
                )
                if self.ctx.is_main:
                    with open(log_path, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    self._tensorboard(record)
            if self.step % t.ckpt_every == 0 or self.step == end:
                self.save_checkpoint()
            if t.sample_every and self.step % t.sample_every == 0:
                self.write_samples()
        bar.close()
        return record

    def _diverged(self, micro_losses: list[torch.Tensor], micro_per: list[torch.Tensor]) -> None:
        """Raise TrainingDiverged on every rank, naming the rank, step and level that went non-finite."""
        finite = torch.isfinite(torch.stack(micro_losses))
        mine = None
        if not finite.all():
            per_level = micro_per[int((~finite).nonzero()[0])].mean(0).tolist()
            bad = [i for i, v in enumerate(per_level) if not math.isfinite(v)]
            mine = (bad[0] if bad else "?", per_level)
        rank, (level, per_level) = next(
            (r, m) for r, m in dist.gather_objects((self.ctx.rank, mine), self.ctx) if m
        )
        on = f" on rank {rank}" if self.ctx.distributed else ""
        raise TrainingDiverged(
            f"non-finite loss at step {self.step + 1}{on} (level {level}: {per_level}); stopping. "
            f"Last good checkpoint: {_last(self.out_dir)}. Lower train.lr or raise train.warmup, then resume."
        )

    def _tensorboard(self, record: dict) -> None:
        """Mirror the JSONL log to TensorBoard when it is installed (optional extra)."""
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self._tb = False
                return
            self._tb = SummaryWriter(str(self.out_dir / "tensorboard"))
        if self._tb:
            for k, v in record.items():
                if isinstance(v, int | float) and k not in ("step", "time"):
                    self._tb.add_scalar(k, v, record["step"])

    @torch.no_grad()
    def write_samples(self, num: int | None = None) -> Path | None:
        """A few EMA samples (one per class when conditional) as mp4s and a contact sheet, by rank 0.

        Call it on every rank: under FSDP the sharded EMA is gathered first (a collective)."""
        from hpdm.outputs import save_outputs
        from hpdm.sampling import Sampler

        ema = self.ema
        if self.ctx.mode == "fsdp":
            state = dist.model_state(None, self.ema, self.ctx)
            ema = HPDM(self.cfg).to(self.device).eval() if self.ctx.is_main else None
            if ema is not None:
                ema.load_state_dict(state)
        if not self.ctx.is_main:
            return None
        n = num or max(1, min(8, self.cfg.model.num_classes or 4))
        gen = Sampler(ema, self.cfg, self.device).generate(num=n, seed=0, progress=False)
        out = self.out_dir / "samples" / f"step_{self.step:07d}"
        save_outputs(gen, out, self.cfg.sample.fps)
        return out

    def _update_ema(self) -> None:
        dist.update_ema(self.ema, self.model, self.cfg.train.ema_decay)  # local: no communication


class _Meter:
    """Running sums for one logging interval, incl. per-level loss by σ bucket (DESIGN §4) and,
    in joint image+video training (`split`), per-level loss of the images and of the videos."""

    EDGES = (-2.0, -0.5, 1.0)  # ln σ bucket edges: low / mid-low / mid-high / high noise

    def __init__(self, L: int, split: bool = False):
        self.L = L
        self.split = split
        self.kind_sum = torch.zeros(2, L)  # [videos, images] summed per-sample losses
        self.kind_cnt = torch.zeros(2)
        self.n = 0
        self.loss = 0.0
        self.per_level = torch.zeros(L)
        self.bucket_sum = torch.zeros(L, len(self.EDGES) + 1)
        self.bucket_cnt = torch.zeros(L, len(self.EDGES) + 1)
        self.data_wait = 0.0
        self.videos = 0
        self.steps = 0
        self.gnorm = 0.0

    def add(self, loss, per_sample, sigma, is_image=None) -> None:
        """One micro-batch: loss (), per-sample per-level loss (B, L), σ (B, L), and in joint
        image+video training which samples are images (B,) bool."""
        self.n += 1
        self.loss += float(loss)
        per = per_sample.float().cpu()
        self.per_level += per.mean(0)
        if self.split:
            kind = is_image.long().cpu() if is_image is not None else torch.zeros(len(per), dtype=torch.long)
            self.kind_sum.index_add_(0, kind, per)
            self.kind_cnt.index_add_(0, kind, torch.ones(len(per)))
        b = torch.bucketize(sigma.detach().float().log().cpu(), torch.tensor(self.EDGES))  # (B, L)
        self.bucket_sum.scatter_add_(1, b.T.contiguous(), per.T.contiguous())
        self.bucket_cnt.scatter_add_(1, b.T.contiguous(), torch.ones_like(per).T.contiguous())

    def all_reduce(self, ctx: dist.DistContext) -> None:
        """Sum the interval's sums over ranks; the data wait becomes the mean over ranks."""
        if not ctx.distributed:
            return
        L, K = self.bucket_sum.shape
        flat = torch.cat(
            [
                torch.tensor([self.n, self.loss, self.data_wait], dtype=torch.float64),
                self.per_level.double(),
                self.bucket_sum.double().flatten(),
                self.bucket_cnt.double().flatten(),
                self.kind_sum.double().flatten(),
                self.kind_cnt.double(),
            ]
        )
        flat = dist.all_reduce_sum(flat, ctx)
        self.kind_cnt = flat[-2:].float()
        self.kind_sum = flat[-2 - 2 * L : -2].view(2, L).float()
        flat = flat[: -2 - 2 * L]
        self.n, self.loss, self.data_wait = int(flat[0]), float(flat[1]), float(flat[2]) / ctx.world
        self.per_level = flat[3 : 3 + L].float()
        self.bucket_sum = flat[3 + L : 3 + L + L * K].view(L, K).float()
        self.bucket_cnt = flat[3 + L + L * K :].view(L, K).float()

    def _by_kind(self) -> dict:
        """loss_video_l{i} and loss_image_l{i}: mean per-level loss of each kind of sample."""
        if not self.split:
            return {}
        out = {}
        for k, kind in enumerate(("video", "image")):
            if self.kind_cnt[k] > 0:
                mean = (self.kind_sum[k] / self.kind_cnt[k]).tolist()
                out.update({f"loss_{kind}_l{i}": v for i, v in enumerate(mean)})
        return out

    def record(self, step: int, dt: float, lr: float) -> dict:
        n = max(self.n, 1)
        steps = max(self.steps, 1)
        bucket = (self.bucket_sum / self.bucket_cnt.clamp_min(1)).tolist()
        return {
            "step": step,
            "loss": self.loss / n,
            **{f"loss_l{i}": v / n for i, v in enumerate(self.per_level.tolist())},
            **self._by_kind(),
            "loss_by_sigma": {f"l{i}": [round(x, 5) for x in row] for i, row in enumerate(bucket)},
            "lr": lr,
            "grad_norm": self.gnorm / steps,
            "steps_per_s": self.steps / max(dt, 1e-9),
            "videos_per_s": self.videos / max(dt, 1e-9),
            "data_wait_share": self.data_wait / max(dt, 1e-9),
            "time": time.time(),
        }
