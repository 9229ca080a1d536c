"""Loading trained models and predicting with them: checkpoints to models (no pickle), the
device, and batched eval-mode logits. Evaluation and attacks import this, never the training
loop."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from core import checkpoint
from core.models import build_model
from core.paths import InputError, run_dir


def pick_device(name: str = "auto") -> torch.device:
    """CUDA when available (or asked for), else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but no CUDA GPU is available; use cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise InputError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N")
    return torch.device(name)


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500,
            progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Logits of ``model`` in eval mode for float images ``x``, batched, without gradients;
    ``progress(done, total)`` after each batch."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outs = []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            chunk = x[start:start + batch_size].to(device, memory_format=torch.channels_last)
            outs.append(model(chunk).float().cpu())
            if progress:
                progress(min(start + batch_size, len(x)), len(x))
    model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0)


def load_model(path: str | Path, device: str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a model from a checkpoint written by ``fit`` (no pickle involved)."""
    tensors, meta = checkpoint.load(path)
    return model_from(tensors, meta, pick_device(device)), meta


def model_from(tensors: dict[str, torch.Tensor], meta: dict, device: torch.device) -> nn.Module:
    """A model in eval mode on ``device`` from checkpoint tensors and their sidecar (a trained
    model, or an imported one rebuilt with its architecture, code or archive)."""
    if meta.get("model") == "imported":
        from core.imported import rebuild

        return rebuild(tensors, meta).to(device, memory_format=torch.channels_last).eval()
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
