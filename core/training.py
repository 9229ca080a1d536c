"""The training loop (``fit``): tensor data pipeline, pluggable objective, run-store logging,
atomic per-epoch checkpoints, resume, and cooperative cancellation."""
from __future__ import annotations

import math
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checkpoint, data, distributed
from .models import MODELS, build_model
from .paths import InputError, run_dir
from .store import RunStore

OPTIMIZERS = ("sgd", "nesterov", "adam")
SCHEDULES = ("onecycle", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
LOG_EVERY_STEPS = 10


class Cancelled(Exception):
    """Training stopped because a cancel was requested."""


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; weights are not saved."""


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored as the run's config)."""

    dataset: str = "mnist"
    model: str = "seed-resnet"
    model_args: dict = field(default_factory=dict)
    epochs: int = 5
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    label_smoothing: float = 0.0
    seed: int = 0
    train_subset: int | None = None
    test_subset: int | None = None
    augment: bool | None = None
    defense: str = "none"
    defense_args: dict = field(default_factory=dict)
    robust_eval: dict = field(default_factory=dict)
    data_dir: str | None = None
    device: str = "auto"
    precision: str = "auto"

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """Build from a dict, refusing unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown training options {unknown}; valid: {sorted(known)}")
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return asdict(self)

    def validate(self) -> None:
        """Raise InputError naming the first invalid value and what is valid."""
        from .defenses import DEFENSES, build_defense

        if self.model not in MODELS:
            raise InputError(f"unknown model {self.model!r}; valid models: {', '.join(MODELS)}")
        if self.dataset not in ("mnist", "cifar10") and not self.dataset.startswith("imagefolder:"):
            raise InputError(f"unknown dataset {self.dataset!r}; valid datasets: "
                             f"{', '.join(data.DATASETS)}")
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("defense", self.defense, tuple(DEFENSES))
        _choice("precision", self.precision, PRECISIONS)
        _positive_int("epochs", self.epochs)
        _positive_int("batch size", self.batch_size)
        for name in ("train_subset", "test_subset"):
            if getattr(self, name) is not None:
                _positive_int(name.replace("_", " "), getattr(self, name))
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"learning rate must be a positive number, got {self.lr}")
        if not 0 <= self.label_smoothing < 1:
            raise InputError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise InputError("weight decay must be >= 0 and momentum in [0, 1)")
        build_defense(self.defense, label_smoothing=self.label_smoothing, **self.defense_args)
        unknown = sorted(set(self.robust_eval) - {"eps", "steps", "n", "collapse_drop"})
        if unknown:
            raise InputError(f"unknown robust_eval options {unknown}; valid: eps, steps, n, "
                             "collapse_drop")


def _choice(what: str, value: str, valid: tuple) -> None:
    if value not in valid:
        raise InputError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


def _positive_int(what: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InputError(f"{what} must be a positive whole number, got {value!r}")


def pick_device(name: str = "auto") -> torch.device:
    """CUDA when available (or asked for), else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but no CUDA GPU is available; use cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise InputError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N")
    return torch.device(name)


def lr_at(cfg: TrainConfig, step: int, total: int) -> float:
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


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (optionally Nesterov) or Adam; no weight decay on BatchNorm and bias parameters."""
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.optimizer == "nesterov")


@dataclass
class Setup:
    """Everything a training run holds in memory."""

    cfg: TrainConfig
    train: data.TensorData
    test: data.TensorData
    model: nn.Module
    optimizer: torch.optim.Optimizer
    objective: Callable
    device: torch.device
    held_out: data.TensorData | None = None


def prepare(cfg: TrainConfig, device: torch.device | None = None) -> Setup:
    """Load data, build model, optimizer and objective for ``cfg`` (on ``device`` if given)."""
    from .defenses import build_defense

    train = data.load(cfg.dataset, "train", cfg.data_dir).subset(cfg.train_subset, cfg.seed)
    test = data.load(cfg.dataset, "test", cfg.data_dir).subset(cfg.test_subset, cfg.seed + 1)
    held_out = None
    if _guarded(cfg):
        # The guard picks the best epoch, so it must not look at test images: it gets training
        # images that are never trained on (Rice et al. 2020 select on a validation split).
        train, held_out = train.holdout(held_out_size(cfg, len(train)), cfg.seed + 2)
    device = device or pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, train.input_shape, train.num_classes, train.mean, train.std,
                        **cfg.model_args).to(device)
    model = model.to(memory_format=torch.channels_last)
    objective = build_defense(cfg.defense, label_smoothing=cfg.label_smoothing,
                              **cfg.defense_args)
    return Setup(cfg, train, test, model, make_optimizer(cfg, model), objective, device,
                 held_out)


def held_out_size(cfg: TrainConfig, n_train: int) -> int:
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


def _guarded(cfg: TrainConfig) -> bool:
    return cfg.defense != "none" or bool(cfg.robust_eval)


def model_meta(setup: Setup) -> dict:
    """The sidecar description that lets a checkpoint be rebuilt without the run store."""
    cfg, train = setup.cfg, setup.train
    return {"model": cfg.model, "model_args": cfg.model_args, "dataset": cfg.dataset,
            "dataset_source": train.source, "input_shape": list(train.input_shape),
            "num_classes": train.num_classes, "classes": train.classes,
            "mean": list(train.mean), "std": list(train.std), "train_config": cfg.to_dict()}


class _CancelWatch:
    """Cooperative cancellation: SIGTERM in this process, or the run store's cancel flag."""

    def __init__(self, store: RunStore | None, run_id: str | None,
                 ctx: distributed.Context | None = None) -> None:
        self.store, self.run_id, self.ctx = store, run_id, ctx or distributed.Context()
        self.flag, self.last_poll = False, 0.0
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, *_: Any) -> None:
        self.flag = True

    def check(self, step: int = 0) -> None:
        """Raise Cancelled once a stop was asked for. Ranks compare notes every
        LOG_EVERY_STEPS steps so that all of them stop at the same step (a rank that stopped
        alone would leave the others waiting in their next all-reduce)."""
        now = time.monotonic()
        if self.store and self.run_id and now - self.last_poll > 1.0:
            self.last_poll = now
            self.flag = self.flag or self.store.cancel_requested(self.run_id)
        if self.ctx.world > 1:
            if step % LOG_EVERY_STEPS:
                return
            self.flag = distributed.any_rank(self.flag, self.ctx)
        if self.flag:
            raise Cancelled("training cancelled")

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def fit(cfg: TrainConfig, store: RunStore | None = None, run_id: str | None = None,
        resume: bool = False, progress: bool = True) -> dict:
    """Train per ``cfg``; log to ``store`` under ``run_id``; return the final summary.

    With ``resume`` it continues from the run's last checkpoint. Under torchrun every rank
    trains its shard with DistributedDataParallel and only rank 0 writes.
    """
    cfg.validate()
    ctx = distributed.init(cfg.device) if distributed.launched_by_torchrun() else None
    setup = prepare(cfg, ctx.device if ctx else None)
    ctx = ctx or distributed.Context(device=setup.device)
    folder = run_dir(run_id) if run_id and ctx.is_main else None
    writer = store if ctx.is_main else None
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
    guard = _guard(setup)
    if guard is not None and best:
        guard.best_acc, guard.best_epoch = best["robust_acc"], best["epoch"]
    watch = _CancelWatch(store if ctx.is_main else None, run_id, ctx)
    bar = _progress_bar(total, start_epoch * steps_per_epoch, progress and ctx.is_main)
    history: dict = {}
    try:
        for epoch in range(start_epoch, cfg.epochs):
            train_stats = _train_epoch(setup, net, epoch, steps_per_epoch, total, ctx,
                                       writer, run_id, watch, bar)
            history = dict(train_stats, **evaluate_epoch(setup, guard))
            if writer:
                writer.log_metrics(run_id, [(None, epoch, k, v) for k, v in history.items()])
            best = _maybe_best(setup, guard, history, best, folder, writer, run_id, epoch)
            if folder:
                _save_checkpoint(setup, folder, epoch + 1, best)
    finally:
        bar.close()
        watch.close()
    summary = _final(setup, folder, history, best)
    if writer:
        writer.set_summary(run_id, dict(writer.get(run_id).summary or {}, **summary))
    return summary


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    # Only on a terminal: redirected output (logs, CI) would get thousands of bar redraws.
    return tqdm(total=total, initial=initial, disable=not enabled or not sys.stderr.isatty(),
                unit="step",
                dynamic_ncols=True, desc="train")


def _train_epoch(setup: Setup, net: nn.Module, epoch: int, steps_per_epoch: int, total: int,
                 ctx: distributed.Context, writer: RunStore | None, run_id: str | None,
                 watch: _CancelWatch, bar) -> dict:
    cfg, model, world = setup.cfg, setup.model, ctx.world
    # Re-seeding per epoch makes a resumed run draw the same random numbers as an unbroken one;
    # the rank offset gives each rank its own crops and attack starts (rank 0's are unchanged).
    torch.manual_seed(cfg.seed * 1009 + epoch + ctx.rank * 1_000_003)
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch + ctx.rank * 1_000_003)
    order = data.epoch_order(len(setup.train), cfg.seed, epoch, ctx.rank, world)
    augment = setup.train.augment if cfg.augment is None else cfg.augment
    setup.objective.begin_epoch(epoch)
    model.train()
    loss_sum = correct = seen = 0.0
    pending: list = []
    batch = max(cfg.batch_size // world, 1)
    for i, (x, y, _) in enumerate(data.batches(setup.train, batch, order, augment, gen)):
        if len(y) < 2:  # BatchNorm cannot train on a batch of one
            continue
        step = epoch * steps_per_epoch + i
        for group in setup.optimizer.param_groups:
            group["lr"] = lr_at(cfg, step, total)
        x = x.to(setup.device, memory_format=torch.channels_last)
        y = y.to(setup.device)
        with torch.autocast(setup.device.type, dtype=torch.bfloat16, enabled=_bf16(setup)):
            loss, logits = setup.objective(net, x, y)
        if not _finite_everywhere(loss, ctx):
            raise NonFiniteLoss(
                f"loss became {loss.item()} at epoch {epoch + 1}, step {i + 1}; stopped without "
                "saving these weights (lower the learning rate or check the data)")
        setup.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        setup.optimizer.step()
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        pending.append((step + 1, epoch, "train_loss_step", loss.item()))
        if writer and (len(pending) >= LOG_EVERY_STEPS or i == steps_per_epoch - 1):
            writer.log_metrics(run_id, pending + [(step + 1, epoch, "lr",
                                                   setup.optimizer.param_groups[0]["lr"])])
            pending = []
        bar.update(1)
        bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
        watch.check(i + 1)
    if writer and pending:
        writer.log_metrics(run_id, pending)
    return {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1)}


def _finite_everywhere(loss: torch.Tensor, ctx: distributed.Context) -> bool:
    """Whether the loss is finite on every rank: all ranks must stop together, or the ones
    still training would wait forever in the gradient all-reduce."""
    return not distributed.any_rank(not bool(torch.isfinite(loss)), ctx)


def _bf16(setup: Setup) -> bool:
    """bfloat16 autocast for the training forward: asked for, or 'auto' on a GPU."""
    p = setup.cfg.precision
    return p == "bf16" or (p == "auto" and setup.device.type == "cuda")


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Logits of ``model`` in eval mode for float images ``x``, batched, without gradients."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outs = []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            chunk = x[start:start + batch_size].to(device, memory_format=torch.channels_last)
            outs.append(model(chunk).float().cpu())
    model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0)


def evaluate_epoch(setup: Setup, guard) -> dict:
    """Clean test loss and accuracy, plus robust accuracy for defended runs."""
    x, y = setup.test.floats(), setup.test.labels
    logits = predict(setup.model, x)
    out = {"test_loss": F.cross_entropy(logits, y).item(),
           "test_acc": (logits.argmax(1) == y).float().mean().item()}
    if guard is not None:
        out.update(guard.measure(setup.model))
    return out


def _guard(setup: Setup):
    from .defenses import RobustGuard

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
            "dataset_source": setup.train.source}


def _held(setup: Setup) -> int:
    return len(setup.held_out) if setup.held_out is not None else 0


def load_model(path: str | Path, device: str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a model from a checkpoint written by ``fit`` (no pickle involved)."""
    tensors, meta = checkpoint.load(path)
    return model_from(tensors, meta, pick_device(device)), meta


def model_from(tensors: dict[str, torch.Tensor], meta: dict, device: torch.device) -> nn.Module:
    """A model in eval mode on ``device`` from checkpoint tensors and their sidecar."""
    try:
        model = build_model(meta["model"], meta["input_shape"], meta["num_classes"],
                            meta["mean"], meta["std"], **meta.get("model_args", {}))
    except KeyError as err:
        raise checkpoint.CheckpointError(f"checkpoint sidecar lacks {err}") from err
    checkpoint.load_into(model, tensors)
    return model.to(device, memory_format=torch.channels_last).eval()


def run_model_path(run_id: str, which: str = "final") -> Path:
    """Path of a training run's final (or best-robust) weights."""
    folder = run_dir(run_id)
    path = folder / ("best.safetensors" if which == "best" else "model.safetensors")
    if not path.exists():
        raise checkpoint.CheckpointError(
            f"run {run_id} has no {'best' if which == 'best' else 'final'} weights yet "
            f"({path.name} missing): it has not completed")
    return path
