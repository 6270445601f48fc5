"""Process-group set-up and the few places where DDP / FSDP2 differ from one process.

Under `torchrun` (WORLD_SIZE > 1) the trainer wraps the model with DDP or FSDP2
(`torch.distributed.fsdp.fully_shard`), chosen by `train.distributed`; gloo on CPU, NCCL on GPU.
Checkpoints always hold *gathered* full tensors written by rank 0, so a run saved under one
world size resumes under any other (and in a single process).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as tdist
import torch.nn as nn


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    mode: str = "none"  # none | ddp | fsdp

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_CTX: DistContext | None = None


def init() -> DistContext:
    """Initialise the process group once when launched by torchrun; a no-op otherwise."""
    global _CTX
    if _CTX is not None:
        return _CTX
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _CTX = DistContext()
        return _CTX
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not tdist.is_initialized():
        timeout = timedelta(seconds=float(os.environ.get("HPDM_DIST_TIMEOUT", "600")))
        tdist.init_process_group(backend=backend, timeout=timeout)
    _CTX = DistContext(rank=rank, world=world, local_rank=local, device=device)
    return _CTX


def reset() -> None:
    """Forget the cached context (tests), destroying the process group if one exists."""
    global _CTX
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()
    _CTX = None


def wrap(model: nn.Module, cfg, ctx: DistContext) -> nn.Module:
    if not ctx.distributed:
        return model
    if cfg.train.distributed == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        ctx.mode = "fsdp"
        return model
    ctx.mode = "ddp"
    ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


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


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def full_params(net: nn.Module, model: nn.Module, ctx: DistContext) -> list[torch.Tensor]:
    """Every parameter as a full (unsharded) tensor, in `model.parameters()` order (for EMA)."""
    return [_full(p.detach()) for p in model.parameters()]


def model_state(net: nn.Module, model: nn.Module, ctx: DistContext) -> dict[str, torch.Tensor]:
    return {k: _full(v) for k, v in model.state_dict().items()}


def load_model_state(
    net: nn.Module, model: nn.Module, state: dict[str, torch.Tensor], ctx: DistContext
) -> None:
    if ctx.mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
    else:
        model.load_state_dict(state)


def optimizer_state(net: nn.Module, opt, ctx: DistContext) -> dict:
    if ctx.mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(
            net, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    return opt.state_dict()


def load_optimizer_state(net: nn.Module, opt, state: dict, ctx: DistContext) -> None:
    if ctx.mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(net, opt, state, options=StateDictOptions(full_state_dict=True))
    else:
        opt.load_state_dict(state)


def gather_objects(obj, ctx: DistContext) -> list:
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world
    tdist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        tdist.barrier()
