"""The training loop (``fit``): tensor data pipeline, pluggable objective, run-store logging,
atomic per-epoch checkpoints, resume, and cancellation (see :mod:`core.cancellation`).

"train acc" means the same for every defense: clean accuracy, in eval mode, on every
``LOG_EVERY_STEPS``-th training batch as drawn (augmented, before any attack). "train loss" is
the defense's own training objective.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from core import checkpoint
from core import data
from core import distributed
from core import estimate
from core import precision
from core.precision import Choice
from core.cancellation import STATE as CANCEL
from core.cancellation import Cancelled
from core.models import build_model
from core.paths import InputError, runs_root
from core.prediction import pick_device, predict
from core.progress import Progress, Quiet, fmt_duration

if TYPE_CHECKING:  # a job's spec and store are handed in: the loop sits below the jobs
    from core.jobs.specs import TrainSpec
    from core.jobs.store import RunStore

LOG_EVERY_STEPS = 10


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; weights are not saved."""


def lr_at(cfg: TrainSpec, step: int, total: int) -> float:
    """Learning rate at ``step`` of ``total`` for the configured schedule."""
    t = min(step / max(total, 1), 1.0)
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))
    warm = 0.25  # one-cycle (Smith 2018): linear warm-up from lr/25, cosine anneal to ~0
    if t < warm:
        return cfg.lr * (0.04 + 0.96 * t / warm)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (t - warm) / (1 - warm))) + cfg.lr * 1e-4


def make_optimizer(cfg: TrainSpec, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (optionally Nesterov) or Adam; no weight decay on BatchNorm and bias parameters."""
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # on a GPU one fused kernel updates every parameter: a small model is bound by launches
    fused = {"fused": True} if next(model.parameters()).device.type == "cuda" else {}
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, **fused)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.optimizer == "nesterov", **fused)


@dataclass
class Setup:
    """Everything a training run holds in memory."""

    cfg: TrainSpec
    train: data.TensorData
    test: data.TensorData
    model: nn.Module
    optimizer: torch.optim.Optimizer
    objective: Callable
    device: torch.device
    held_out: data.TensorData | None = None
    precision: Choice | None = None  # of the training step; set by choose_precision


def prepare(cfg: TrainSpec, device: torch.device | None = None) -> Setup:
    """Load data, build model, optimizer and objective for ``cfg`` (on ``device`` if given)."""
    from core.training.defenses import build_defense

    train = data.load(cfg.dataset, "train", cfg.data_dir).subset(cfg.train_subset, cfg.seed)
    test = data.load(cfg.dataset, "test", cfg.data_dir).subset(cfg.test_subset, cfg.seed + 1)
    held_out = None
    if cfg.guarded:
        # The guard picks the best epoch, so it must not look at test images: it gets training
        # images that are never trained on (Rice et al. 2020 select on a validation split).
        train, held_out = train.holdout(held_out_size(cfg, len(train)), cfg.seed + 2)
    device = device or pick_device(cfg.device)
    train, test = data.resident(train, device), data.resident(test, device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, train.input_shape, train.num_classes, train.mean, train.std,
                        **cfg.model_args).to(device)
    model = model.to(memory_format=torch.channels_last)
    objective = build_defense(cfg.defense, label_smoothing=cfg.label_smoothing,
                              **cfg.defense_args)
    return Setup(cfg, train, test, model, make_optimizer(cfg, model), objective, device,
                 held_out)


def held_out_size(cfg: TrainSpec, n_train: int) -> int:
    """Training images the robustness guard holds out: ``robust_eval["n"]``, else 500 or a
    tenth of the training images, whichever is fewer."""
    n = cfg.robust_eval.get("n")
    if n is None:
        return max(1, min(500, n_train // 10))
    if not isinstance(n, int) or isinstance(n, bool) or not 0 < n <= n_train // 2:
        raise InputError(f"robust_eval n (training images held out for the guard) must be a "
                         f"whole number from 1 to {n_train // 2} (half of the {n_train} "
                         f"training images), got {n!r}")
    return n


def model_meta(setup: Setup) -> dict:
    """The sidecar description that lets a checkpoint be rebuilt without the run store."""
    cfg, train = setup.cfg, setup.train
    return {"model": cfg.model, "model_args": cfg.model_args, "dataset": cfg.dataset,
            "dataset_source": train.source, "input_shape": list(train.input_shape),
            "num_classes": train.num_classes, "classes": train.classes,
            "mean": list(train.mean), "std": list(train.std), "train_config": cfg.to_dict()}


def fit(cfg: TrainSpec, store: RunStore | None = None, run_id: str | None = None,
        resume: bool = False, progress: Progress | None = None) -> dict:
    """Train per ``cfg``; log to ``store`` under ``run_id``; return the final summary.

    With ``resume`` it continues from the run's last checkpoint. Under torchrun every rank
    trains its shard with DistributedDataParallel and only rank 0 writes.
    """
    cfg.validate()
    ctx = distributed.init(cfg.device) if distributed.launched_by_torchrun() else None
    setup = prepare(cfg, ctx.device if ctx else None)
    ctx = ctx or distributed.Context(device=setup.device)
    # made by the first checkpoint: a run stopped in its first epoch leaves no empty folder
    folder = runs_root() / run_id if run_id and ctx.is_main else None
    writer = store if ctx.is_main else None
    report = progress if progress is not None and ctx.is_main else Quiet()
    start_epoch, best = 0, None
    if resume:
        # Only rank 0 reads the file; it sends the weights to the other ranks.
        path = folder / "checkpoint.safetensors" if folder else None
        start_epoch, best = _restore(setup, path, ctx)
        if writer:
            writer.clear_metrics_after(run_id, start_epoch - 1)
    wrap = distributed.ddp_wrapper(ctx)
    net = wrap(setup.model) if wrap else setup.model
    per_rank = len(setup.train) // ctx.world
    # --batch-size is the global batch: each rank takes its share, so N processes take the
    # same steps with the same schedule as one.
    steps_per_epoch = max(1, math.ceil(per_rank / max(cfg.batch_size // ctx.world, 1)))
    total = steps_per_epoch * cfg.epochs
    if writer:
        writer.set_summary(run_id, {"total_steps": total, "steps_per_epoch": steps_per_epoch,
                                    "n_train": len(setup.train), "n_test": len(setup.test),
                                    "n_held_out": _held(setup),
                                    "dataset_source": setup.train.source, "epoch": start_epoch,
                                    "world_size": ctx.world})
    if writer and report.enabled:
        _announce(setup, report, writer, run_id, cfg.epochs - start_epoch)
    guard = _guard(setup)
    if guard is not None and best:
        guard.best_acc, guard.best_epoch = best["robust_acc"], best["epoch"]
    setup.precision = choose_precision(setup)
    report.say(f"training in {'bfloat16 autocast' if setup.precision.bf16 else 'float32'} "
               f"({setup.precision.reason})")
    if writer:
        writer.set_summary(run_id, dict(writer.get(run_id).summary or {},
                                        precision=setup.precision.name,
                                        precision_reason=setup.precision.reason))
    report.start(total, "steps", cfg.batch_size, done=start_epoch * steps_per_epoch)
    history: dict = {}
    try:
        for epoch in range(start_epoch, cfg.epochs):
            began = time.monotonic()
            train_stats = _train_epoch(setup, net, epoch, steps_per_epoch, total, ctx,
                                       writer, run_id, report)
            setup.objective.end_epoch(setup.model, lambda: _clean_images(setup, ctx))
            history = dict(train_stats, **evaluate_epoch(setup, guard))
            if writer:
                writer.log_metrics(run_id, [(None, epoch, k, v) for k, v in history.items()])
            best = _maybe_best(setup, guard, history, best, folder, writer, run_id, epoch)
            if folder:
                _save_checkpoint(setup, folder, epoch + 1, best)
            report.say(_epoch_line(epoch, cfg.epochs, history, time.monotonic() - began)
                       + " · " + report.status())
    finally:
        report.close()
    summary = _final(setup, folder, history, best)
    if writer:
        writer.set_summary(run_id, dict(writer.get(run_id).summary or {}, **summary))
    return summary


def _announce(setup: Setup, report: Progress, writer: RunStore, run_id: str,
              epochs: int) -> None:
    """State the run's estimated duration before it starts (and keep it in the summary)."""
    x = setup.train.floats(slice(0, 64)).to(setup.device, memory_format=torch.channels_last)
    per_pass = estimate.seconds_per_pass(setup.model, x, setup.train.labels[:64].to(setup.device))
    guard_steps = int(setup.cfg.robust_eval.get("steps", 10)) if setup.held_out else 0
    seconds = estimate.training_seconds(setup.objective, epochs, len(setup.train),
                                        len(setup.test), _held(setup), guard_steps, per_pass)
    report.say(estimate.line(seconds, f"{epochs} epoch(s) of {len(setup.train):,} images, "
                                      f"{1 / per_pass:,.0f} img/s per plain training pass"))
    writer.set_summary(run_id, dict(writer.get(run_id).summary or {}, estimated_s=seconds))


def _clean_images(setup: Setup, ctx: distributed.Context):
    """This rank's training images, unaugmented, in batches on the device."""
    order = data.epoch_order(len(setup.train), setup.cfg.seed, 0, ctx.rank, ctx.world)
    batch = max(setup.cfg.batch_size // ctx.world, 2)
    for x, _, _ in data.batches(setup.train, batch, order):
        yield x.to(setup.device, memory_format=torch.channels_last)


def _epoch_line(epoch: int, epochs: int, h: dict, seconds: float) -> str:
    text = (f"epoch {epoch + 1}/{epochs}: train loss {h['train_loss']:.4f} · train acc "
            f"{h['train_acc']:.2%} · test acc {h['test_acc']:.2%}")
    if "robust_acc" in h:
        text += f" · held-out APGD-CE {h['robust_acc']:.2%}"
    return text + f" · {fmt_duration(seconds)}"


def _train_epoch(setup: Setup, net: nn.Module, epoch: int, steps_per_epoch: int, total: int,
                 ctx: distributed.Context, writer: RunStore | None, run_id: str | None,
                 report: Progress) -> dict:
    cfg, model, world = setup.cfg, setup.model, ctx.world
    # Re-seeding per epoch makes a resumed run draw the same random numbers as an unbroken one;
    # the rank offset gives each rank its own crops and attack starts (rank 0's are unchanged).
    torch.manual_seed(cfg.seed * 1009 + epoch + ctx.rank * 1_000_003)
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch + ctx.rank * 1_000_003)
    order = data.epoch_order(len(setup.train), cfg.seed, epoch, ctx.rank, world)
    augment = setup.train.augment if cfg.augment is None else cfg.augment
    setup.objective.begin_epoch(epoch)
    model.train()
    # Losses stay on the device and reach the host only at logging points: a .item() per step
    # would stall a GPU's queue every step.
    pending: list[tuple[int, torch.Tensor, int]] = []  # (step, loss, batch size)
    counts = {"seen": 0, "correct": 0, "measured": 0, "loss_sum": 0.0}
    batch = max(cfg.batch_size // world, 1)
    for i, (x, y, _) in enumerate(data.batches(setup.train, batch, order, augment, gen)):
        if len(y) < 2:  # BatchNorm cannot train on a batch of one
            continue
        CANCEL.raise_pending()
        step = epoch * steps_per_epoch + i
        for group in setup.optimizer.param_groups:
            group["lr"] = lr_at(cfg, step, total)
        x = x.to(setup.device, memory_format=torch.channels_last)
        y = y.to(setup.device)
        with torch.autocast(setup.device.type, dtype=torch.bfloat16, enabled=_bf16(setup)):
            loss = setup.objective(net, x, y)
        setup.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        setup.optimizer.step()
        counts["seen"] += len(y)
        pending.append((step + 1, loss.detach(), len(y)))
        if len(pending) >= LOG_EVERY_STEPS or i == steps_per_epoch - 1:
            _log_point(setup, pending, x, y, counts, ctx, writer, run_id, epoch, i)
            report.update(step + 1, f"epoch {epoch + 1}/{cfg.epochs} · loss "
                                    f"{float(pending[-1][1]):.3f}")
            pending = []
    if pending:
        _log_point(setup, pending, x, y, counts, ctx, writer, run_id, epoch, i)
    seen = max(counts["seen"], 1)
    return {"train_loss": counts["loss_sum"] / seen,
            "train_acc": counts["correct"] / max(counts["measured"], 1)}


def _log_point(setup: Setup, pending: list, x: torch.Tensor, y: torch.Tensor, counts: dict,
               ctx: distributed.Context, writer: RunStore | None, run_id: str | None,
               epoch: int, i: int) -> None:
    """Once every LOG_EVERY_STEPS steps: the losses reach the host (one transfer), a NaN on any
    rank stops every rank, a stop request is honoured on every rank, train accuracy is
    measured on this batch, and the rows are written."""
    losses = torch.stack([v for _, v, _ in pending]).float().cpu()
    counts["loss_sum"] += sum(v * n for v, (_, _, n) in zip(losses.tolist(), pending))
    if distributed.any_rank(not bool(torch.isfinite(losses).all()), ctx):
        raise NonFiniteLoss(
            f"loss became {losses.tolist()[-1]} at epoch {epoch + 1}, step {i + 1}; stopped "
            "without saving these weights (lower the learning rate or check the data)")
    if ctx.world > 1 and distributed.any_rank(CANCEL.requested, ctx):
        raise Cancelled(CANCEL.reason or "cancel requested")
    counts["correct"] += _clean_correct(setup.model, x, y)
    counts["measured"] += len(y)
    if writer:
        rows = [(s, epoch, "train_loss_step", v) for (s, _, _), v in zip(pending, losses.tolist())]
        writer.log_metrics(run_id, rows + [(pending[-1][0], epoch, "lr",
                                            setup.optimizer.param_groups[0]["lr"])])


def _clean_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Correct eval-mode predictions on the clean batch (train mode restored)."""
    model.eval()
    with torch.no_grad():
        correct = int((model(x).argmax(1) == y).sum())
    model.train()
    return correct


def _bf16(setup: Setup) -> bool:
    """bfloat16 autocast for the training forward (see :func:`choose_precision`)."""
    return setup.precision is not None and setup.precision.bf16


def choose_precision(setup: Setup) -> Choice:
    """The training step's arithmetic: as asked; with ``auto`` on a GPU the faster one measured
    for this model and batch size (:mod:`core.precision`); with ``auto`` on a CPU float32, the
    arithmetic of every CPU figure in the README (``--precision bf16`` is about 1.7x faster on
    CPUs with native bfloat16, at slightly different numbers)."""
    batch = max(min(setup.cfg.batch_size, len(setup.train)), 2)
    x = setup.train.floats(slice(0, batch)).to(setup.device, memory_format=torch.channels_last)
    y = setup.train.labels[:batch].to(setup.device)
    return precision.choose(setup.cfg.precision, setup.model, x, y, "train")


def evaluate_epoch(setup: Setup, guard) -> dict:
    """Clean test loss and accuracy, plus robust accuracy for defended runs."""
    x, y = setup.test.floats(), setup.test.labels.cpu()
    logits = predict(setup.model, x)
    out = {"test_loss": F.cross_entropy(logits, y).item(),
           "test_acc": (logits.argmax(1) == y).float().mean().item()}
    if guard is not None:
        out.update(guard.measure(setup.model))
    return out


def _guard(setup: Setup):
    from core.training.defenses import RobustGuard

    if setup.held_out is None:
        return None
    return RobustGuard.for_config(setup.cfg, setup.held_out)


def _maybe_best(setup: Setup, guard, history: dict, best: dict | None, folder: Path | None,
                writer: RunStore | None, run_id: str | None, epoch: int) -> dict | None:
    if guard is None or folder is None:
        return best
    warning, is_best = guard.update(history, epoch)
    if warning and writer:
        writer.add_warning(run_id, warning)
    if is_best:
        checkpoint.save(folder / "best.safetensors", _model_tensors(setup.model),
                        dict(model_meta(setup), epoch=epoch + 1, metrics=history))
        best = {"epoch": epoch + 1, **history}
    return best


def _model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"model.{k}": v for k, v in model.state_dict().items()}


def _save_checkpoint(setup: Setup, folder: Path, epoch: int, best: dict | None) -> None:
    opt_tensors, opt_meta = checkpoint.optimizer_tensors(setup.optimizer)
    tensors = dict(_model_tensors(setup.model), **opt_tensors,
                   rng_cpu=torch.get_rng_state())
    checkpoint.save(folder / "checkpoint.safetensors", tensors,
                    dict(model_meta(setup), epoch=epoch, optimizer=opt_meta, best=best))


def _restore(setup: Setup, path: Path | None, ctx: distributed.Context) -> tuple[int, dict | None]:
    tensors, meta = distributed.shared_checkpoint(path, ctx)
    checkpoint.load_into(setup.model, tensors)
    checkpoint.restore_optimizer(setup.optimizer, tensors, meta["optimizer"])
    torch.set_rng_state(tensors["rng_cpu"])
    return int(meta["epoch"]), meta.get("best")


def _final(setup: Setup, folder: Path | None, history: dict, best: dict | None) -> dict:
    meta = dict(model_meta(setup), epoch=setup.cfg.epochs, metrics=history)
    if folder:
        checkpoint.save(folder / "model.safetensors", _model_tensors(setup.model), meta)
    return {"final": history, "best": best, "n_train": len(setup.train),
            "n_test": len(setup.test), "n_held_out": _held(setup),
            "dataset_source": setup.train.source, "test_source": setup.test.source}


def _held(setup: Setup) -> int:
    return len(setup.held_out) if setup.held_out is not None else 0






