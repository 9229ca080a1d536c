"""Multi-process training and evaluation on PyTorch's own engine (torch.distributed).

``torchrun --nproc_per_node=N -m core train ...`` trains with DistributedDataParallel (gloo on
CPU, nccl on GPU); each rank sees a distinct shard of every epoch and rank 0 alone writes the
run store and checkpoints. Evaluation shards whole batches (the same batch boundaries as one
process, so seeded attacks draw the same noise) and gathers per-example results, so the numbers
equal a single-process run's.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.distributed as dist
import torch.nn as nn

from .data import TensorData

if TYPE_CHECKING:
    from .evaluation import AttackOutcome


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
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
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


def ddp_wrapper(ctx: Context) -> Callable[[nn.Module], nn.Module] | None:
    """A function wrapping a model in DistributedDataParallel (None for one process)."""
    if ctx.world == 1:
        return None

    def wrap(model: nn.Module) -> nn.Module:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    return wrap


def sharded_attack(ctx: Context, batch_size: int = 250) -> Callable[..., "AttackOutcome"]:
    """A drop-in for :func:`core.evaluation.run_attack` that splits whole batches across ranks
    and gathers the per-example results in their original order."""
    from .evaluation import AttackOutcome, run_attack

    def runner(model: nn.Module, data: TensorData, attack, batch_size_: int = batch_size,
               keep_examples: int = 0, progress=None) -> AttackOutcome:
        if ctx.world == 1:
            return run_attack(model, data, attack, batch_size_, keep_examples, progress)
        starts = list(range(0, len(data), batch_size_))[ctx.rank::ctx.world]
        mine = torch.cat([torch.arange(s, min(s + batch_size_, len(data))) for s in starts]) \
            if starts else torch.empty(0, dtype=torch.long)
        local = run_attack(model, _take(data, mine), attack, batch_size_, 0, None)
        parts: list = [None] * ctx.world
        dist.all_gather_object(parts, (mine, _tensors(local)))
        positions = torch.cat([p[0] for p in parts])
        order = torch.argsort(positions)
        merged = {k: torch.cat([p[1][k] for p in parts])[order] for k in parts[0][1]}
        return AttackOutcome(local.attack, local.params, local.budget, classes=data.classes,
                             examples={}, **merged)

    return runner


_TENSOR_FIELDS = ("clean_pred", "clean_conf", "adv_pred", "adv_conf", "l2", "linf", "labels",
                  "index")


def _tensors(outcome: "AttackOutcome") -> dict[str, torch.Tensor]:
    return {k: getattr(outcome, k) for k in _TENSOR_FIELDS}


def _take(data: TensorData, positions: torch.Tensor) -> TensorData:
    base = data.original_index()
    return TensorData(data.name, data.split, data.images[positions], data.labels[positions],
                      data.classes, data.source, data.mean, data.std, data.augment,
                      base[positions])

