"""Process-group plumbing on PyTorch's own engine (torch.distributed): joining the group,
deciding on rank 0, broadcasting checkpoints, DDP wrapping, and splitting work by whole batches.
The sharded evaluation itself lives beside the evaluation it shards (:mod:`core.evaluation`).

``torchrun --nproc_per_node=N -m core train ...`` trains with DistributedDataParallel (gloo on
CPU, nccl on GPU); each rank sees a distinct shard of every epoch and rank 0 alone writes the
run store and checkpoints. Evaluation shards whole batches (the same batch boundaries as one
process, so seeded attacks draw the same noise) and gathers per-example results, so the numbers
equal a single-process run's.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn as nn
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from core.paths import InputError


@dataclass(frozen=True)
class Context:
    """This process's place in the job."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run store and files."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another launcher) set WORLD_SIZE > 1."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str = "auto") -> Context:
    """Join the process group described by torchrun's environment (a no-op for one process)."""
    if not launched_by_torchrun():
        return Context()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but no CUDA GPU is available; use cpu "
                         "or auto")
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    return Context(dist.get_rank(), dist.get_world_size(), dev)


def current() -> Context:
    """The context of the process group this process has joined (one process when none)."""
    if not dist.is_initialized():
        return Context()
    dev = torch.device("cpu")
    if dist.get_backend() == "nccl":
        dev = torch.device(f"cuda:{torch.cuda.current_device()}")
    return Context(dist.get_rank(), dist.get_world_size(), dev)


def shutdown() -> None:
    """Leave the process group."""
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast(value, ctx: Context):
    """Rank 0's ``value`` on every rank (e.g. the run id it created)."""
    if ctx.world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def decide(ctx: Context, plan: Callable[[], Any]) -> Any:
    """Rank 0 runs ``plan`` (validation, creating the run) and every rank gets its result; an
    InputError on rank 0 is raised on every rank, so no rank waits for a peer that gave up."""
    outcome: dict = {}
    if ctx.is_main:
        try:
            outcome = {"value": plan()}
        except InputError as err:
            outcome = {"error": str(err)}
    outcome = broadcast(outcome, ctx)
    if "error" in outcome:
        raise InputError(outcome["error"])
    return outcome["value"]


def any_rank(flag: bool, ctx: Context) -> bool:
    """Whether ``flag`` holds on any rank (every rank must call this at the same point)."""
    if ctx.world == 1:
        return flag
    box = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return bool(box.item())


def shared_checkpoint(path: str | Path | None,
                      ctx: Context) -> tuple[dict[str, torch.Tensor], dict]:
    """Rank 0 reads and verifies a checkpoint and sends it to every rank as safetensors bytes,
    so nodes without a shared file system resume and evaluate from the same weights."""
    from core import checkpoint

    if ctx.world == 1:
        return checkpoint.load(path)
    payload: list = [None, None]
    if ctx.is_main:
        tensors, meta = checkpoint.load(path)
        blob = safetensors_save({k: v.contiguous() for k, v in tensors.items()})
        payload = [len(blob), json.dumps(meta)]
    payload = broadcast(payload, ctx)
    buffer = torch.empty(payload[0], dtype=torch.uint8, device=ctx.device)
    if ctx.is_main:
        buffer.copy_(torch.frombuffer(bytearray(blob), dtype=torch.uint8))
    dist.broadcast(buffer, src=0)
    return safetensors_load(buffer.cpu().numpy().tobytes()), json.loads(payload[1])


def ddp_wrapper(ctx: Context) -> Callable[[nn.Module], nn.Module] | None:
    """A function wrapping a model in DistributedDataParallel (None for one process)."""
    if ctx.world == 1:
        return None

    def wrap(model: nn.Module) -> nn.Module:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    return wrap


def my_positions(ctx: Context, n: int, batch_size: int) -> torch.Tensor:
    """Positions of the whole batches this rank handles (batch k goes to rank k mod world),
    so batch boundaries, and with them seeded attack noise, match a single process."""
    starts = list(range(0, n, batch_size))[ctx.rank::ctx.world]
    if not starts:
        return torch.empty(0, dtype=torch.long)
    return torch.cat([torch.arange(s, min(s + batch_size, n)) for s in starts])


def gather_objects(ctx: Context, value: Any) -> list:
    """Every rank's picklable ``value``, in rank order (``[value]`` for one process)."""
    if ctx.world == 1:
        return [value]
    parts: list = [None] * ctx.world
    dist.all_gather_object(parts, value)
    return parts


def gather_in_order(ctx: Context, positions: torch.Tensor,
                    tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every rank's ``tensors`` (rows at ``positions``), concatenated in position order. A rank
    with no rows passes an empty dict."""
    parts: list = [None] * ctx.world
    dist.all_gather_object(parts, (positions, {k: v.cpu() for k, v in tensors.items()}))
    parts = [p for p in parts if len(p[0])]
    order = torch.argsort(torch.cat([p[0] for p in parts]))
    return {k: torch.cat([p[1][k] for p in parts])[order] for k in parts[0][1]}
