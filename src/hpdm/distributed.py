"""Process-group set-up and the few places where DDP / FSDP2 differ from one process.

Under `torchrun` (WORLD_SIZE > 1) the trainer wraps the model with DDP or FSDP2
(`torch.distributed.fsdp.fully_shard`, per RIN block, then the root), chosen by
`train.distributed`; gloo on CPU, NCCL on GPU. Checkpoints always hold *gathered* full tensors
in the single-process format (a model `state_dict`, a `torch.optim` `state_dict`), written by
rank 0, so a run saved under one world size or mode resumes under any other, or in one process.

Under FSDP the EMA copy is sharded like the model, so its update is local (no communication)
and it costs 1/world of the memory; it is gathered only to be saved or sampled from.

Failure handling: every collective runs with the process-group timeout `HPDM_DIST_TIMEOUT`
(seconds, default 600). A rank that dies closes its connections, so its peers fail at their next
collective (gloo: at once; NCCL: at the watchdog timeout) and `torchrun` tears the job down
with a non-zero exit code; a rank that hangs makes its peers time out. Either way the surviving
ranks raise `RanksLost`, a message naming the step and the cause, instead of hanging.
"""

from __future__ import annotations

import contextlib
import gc
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as tdist
import torch.nn as nn

DEFAULT_TIMEOUT_S = 600.0


class RanksLost(RuntimeError):
    """A collective failed or timed out: another rank died or stopped answering."""


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    mode: str = "none"  # none | ddp | fsdp
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_CTX: DistContext | None = None


def timeout_seconds() -> float:
    raw = os.environ.get("HPDM_DIST_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"HPDM_DIST_TIMEOUT={raw!r} is not a number of seconds (e.g. 600)") from None
    if value <= 0:
        raise ValueError(f"HPDM_DIST_TIMEOUT={raw!r} must be a positive number of seconds")
    return value


def init() -> DistContext:
    """Initialise the process group once when launched by torchrun; a no-op otherwise."""
    global _CTX
    if _CTX is not None:
        return _CTX
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _CTX = DistContext()
        return _CTX
    if "RANK" not in os.environ:
        raise RuntimeError(
            f"WORLD_SIZE={world} but RANK is not set: launch multi-process training with torchrun "
            "(see docs/distributed.md), or unset WORLD_SIZE for one process"
        )
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    timeout = timeout_seconds()
    if torch.cuda.is_available():
        if local >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK={local} but this node has {torch.cuda.device_count()} GPUs: "
                "set torchrun --nproc_per_node to at most the number of GPUs"
            )
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not tdist.is_initialized():
        kwargs = {"device_id": device} if backend == "nccl" else {}
        tdist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout), **kwargs)
    _CTX = DistContext(rank=rank, world=world, local_rank=local, device=device, timeout_s=timeout)
    return _CTX


def reset(sync: bool = False) -> None:
    """Forget the cached context (tests, end of a run), destroying the process group if one exists.

    `sync=True` (a run that ended normally) first waits at a barrier, so that no rank tears its
    connections down while another still uses them: gloo aborts a process whose peer vanished
    mid-operation ("terminate called without an active exception"). After an error the barrier
    is skipped, since the other ranks may never arrive.

    Wrapped models (DDP's reducer, FSDP's state) hold the process group too, often inside
    reference cycles; left to interpreter shutdown, the group's gloo threads are torn down while
    Python is half gone, which also aborts. So collect those first, then destroy the group, then
    collect again: the group dies here, with the interpreter intact.
    """
    global _CTX
    if tdist.is_available() and tdist.is_initialized():
        if sync:
            tdist.barrier()
        gc.collect()
        tdist.destroy_process_group()
        gc.collect()
    _CTX = None


# ---------------------------------------------------------------------------------------------
# Wrapping


def _shard(model: nn.Module, ctx: DistContext) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(ctx.device.type, (ctx.world,))
    for block in model.blocks:  # one all-gather per RIN block, then the root's own parameters
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def wrap(model: nn.Module, cfg, ctx: DistContext) -> nn.Module:
    """DDP or FSDP2 around `model` (identity in one process). Rank 0's weights win in both modes."""
    if not ctx.distributed:
        return model
    if cfg.train.distributed == "fsdp":
        # DDP broadcasts rank 0's weights itself; fully_shard keeps each rank's local values.
        for t in [*model.parameters(), *model.buffers()]:
            tdist.broadcast(t.data, src=0)
        # HPDM returns a reshaped view; the diffusion loss only uses it out of place, so the
        # warning about in-place ops on the view does not apply.
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        _shard(model, ctx)
        ctx.mode = "fsdp"
        return model
    ctx.mode = "ddp"
    ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def wrap_ema(ema: nn.Module, ctx: DistContext) -> nn.Module:
    """Shard the EMA copy like the model under FSDP, so `update_ema` is local; identity otherwise."""
    if ctx.mode == "fsdp":
        _shard(ema, ctx)
    return ema


def no_sync(net: nn.Module, skip: bool):
    """Skip gradient all-reduce on all but the last micro-batch of an accumulation."""
    if skip and isinstance(net, nn.parallel.DistributedDataParallel):
        return net.no_sync()
    if skip and hasattr(net, "set_requires_gradient_sync"):
        net.set_requires_gradient_sync(False)
        return _restore_sync(net)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _restore_sync(net):
    try:
        yield
    finally:
        net.set_requires_gradient_sync(True)


# ---------------------------------------------------------------------------------------------
# Tensors: full (gathered) vs local shards


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor: gathers a DTensor (a collective under FSDP), returns a plain one as is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor, or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def _shard_like(value, ref):
    """A full tensor from a checkpoint, distributed like the (DTensor) reference it replaces."""
    if not (isinstance(value, torch.Tensor) and hasattr(ref, "device_mesh")) or value.shape != ref.shape:
        return value
    from torch.distributed.tensor import distribute_tensor

    # every rank read the same file: take the local chunk without communication
    return distribute_tensor(value.to(ref.device), ref.device_mesh, ref.placements, src_data_rank=None)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·model on local tensors: under FSDP both are sharded alike."""
    ema_p = [local_tensor(p) for p in ema.parameters()]
    src = [local_tensor(p.detach()) for p in model.parameters()]
    torch._foreach_lerp_(ema_p, src, 1 - decay)


def model_state(net: nn.Module | None, model: nn.Module, ctx: DistContext) -> dict[str, torch.Tensor]:
    """The full `state_dict` of `model` on every rank (a collective per tensor under FSDP, gathered
    one tensor at a time and moved to the CPU, so a GPU never holds the whole model at once)."""
    if ctx.mode != "fsdp":
        return model.state_dict()
    return {k: full_tensor(v).cpu() for k, v in model.state_dict().items()}


def load_model_state(
    net: nn.Module | None, model: nn.Module, state: dict[str, torch.Tensor], ctx: DistContext
) -> None:
    if ctx.mode == "fsdp":
        ref = model.state_dict()
        state = {k: _shard_like(v, ref[k]) if k in ref else v for k, v in state.items()}
    model.load_state_dict(state)


def optimizer_state(net: nn.Module, opt, ctx: DistContext) -> dict:
    """`opt.state_dict()` with full tensors: the same format in one process, DDP and FSDP.

    Parameters are numbered in `opt.param_groups` order, which does not depend on the mode."""
    sd = opt.state_dict()
    if ctx.mode != "fsdp":
        return sd
    state = {
        i: {k: full_tensor(v).cpu() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
        for i, s in sd["state"].items()
    }
    return {"state": state, "param_groups": sd["param_groups"]}


def load_optimizer_state(net: nn.Module, opt, state: dict, ctx: DistContext) -> None:
    if ctx.mode == "fsdp":
        params = [p for g in opt.param_groups for p in g["params"]]
        state = {
            "state": {
                i: {k: _shard_like(v, params[int(i)]) for k, v in s.items()}
                for i, s in state["state"].items()
            },
            "param_groups": state["param_groups"],
        }
    opt.load_state_dict(state)


# ---------------------------------------------------------------------------------------------
# Small collectives


def all_true(flag: bool, ctx: DistContext) -> bool:
    """True on every rank iff `flag` is true on every rank (one tiny all-reduce)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MIN)
    return bool(t.item() > 0.5)


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum of `t` over ranks (a copy; `t` itself is left alone)."""
    if not ctx.distributed:
        return t
    out = t.detach().to(ctx.device, torch.float64).clone()
    tdist.all_reduce(out)
    return out.to(t.device, t.dtype)


def gather_objects(obj, ctx: DistContext) -> list:
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world
    tdist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        tdist.barrier()


def _is_comm_error(e: BaseException) -> bool:
    if isinstance(e, tdist.DistError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(
        s in text for s in ("gloo", "Connection closed by peer", "Connection reset", "Timed out", "NCCL")
    )


@contextlib.contextmanager
def guard(ctx: DistContext, where: Callable[[], str]) -> Iterator[None]:
    """Turn a failed / timed-out collective into `RanksLost` with a message that says what happened."""
    if not ctx.distributed:
        yield
        return
    try:
        yield
    except RanksLost:
        raise
    except Exception as e:
        if not _is_comm_error(e):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise RanksLost(
            f"rank {ctx.rank}/{ctx.world} lost the other ranks {where()}: another rank died or did not "
            f"answer within HPDM_DIST_TIMEOUT={ctx.timeout_s:g}s ({first}). The failing rank's own "
            "output (and torchrun's summary) names the cause; fix it and restart with --resume auto."
        ) from e
