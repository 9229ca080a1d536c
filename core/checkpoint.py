"""Checkpoints: tensors in safetensors, everything else in a JSON sidecar. Never pickle.

Each file is written to a temporary name and renamed into place, so a crash or a full disk
leaves the previous checkpoint intact; the sidecar carries the tensors file's SHA-256 so a
truncated or swapped file is refused with a clear message.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save as serialize

from core.paths import InputError

FORMAT_VERSION = 1


class CheckpointError(InputError):
    """A checkpoint is missing, corrupt or does not fit the model."""


def versions() -> dict[str, str]:
    """Library versions recorded in every sidecar. torchvision's is read from its installed
    metadata: importing it pulls in torch's compiler stack, 1.5 s of every job that saves on 2
    cores."""
    return {"torch": torch.__version__, "torchvision": metadata.version("torchvision"),
            "python": platform.python_version()}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to ``path`` via a temporary file and a rename."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str] | None = None) -> None:
    """Write a .safetensors file to ``path`` and fsync it. Serialized in memory and written by
    Python, so a full or read-only disk is an OSError with its errno (safetensors' own writer
    reports it as a SafetensorError without one)."""
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    payload = serialize(flat, metadata=metadata)
    try:
        with open(path, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:  # a failed write names no file; the message should
        raise OSError(err.errno, err.strerror, str(path)) from err


def save(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Atomically write ``path`` (.safetensors) and its sidecar ``path`` + ``.json`` (the
    folder is made on the first save: a run stopped before it leaves no empty folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write_safetensors(tmp, tensors)
        digest = _sha256(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    sidecar = dict(meta, format_version=FORMAT_VERSION, sha256=digest, versions=versions())
    atomic_write_text(_sidecar(path), json.dumps(sidecar, indent=2, default=str))


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def is_complete(path: str | os.PathLike) -> bool:
    """Whether a checkpoint has been fully written: its sidecar, written last, exists."""
    return _sidecar(Path(path)).exists()


def remove(path: str | os.PathLike) -> None:
    """Delete a checkpoint: its sidecar first (so it is never complete without its tensors),
    then its tensors."""
    _sidecar(Path(path)).unlink(missing_ok=True)
    Path(path).unlink(missing_ok=True)


def read_sidecar(path: str | os.PathLike) -> dict[str, Any] | None:
    """A checkpoint's sidecar (its metadata) without reading the tensors; None while absent
    (the sidecar is written just after the tensors)."""
    try:
        return json.loads(_sidecar(Path(path)).read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"checkpoint sidecar {_sidecar(Path(path))} is not valid JSON: "
                              f"{err}") from err


def load(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint and its sidecar, verifying the hash; raise CheckpointError if bad."""
    path = Path(path)
    if not path.exists() or not _sidecar(path).exists():
        raise CheckpointError(f"checkpoint {path} (or its sidecar {_sidecar(path).name}) is missing")
    try:
        meta = json.loads(_sidecar(path).read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"checkpoint sidecar {_sidecar(path)} is not valid JSON: {err}") from err
    if meta.get("sha256") and meta["sha256"] != _sha256(path):
        raise CheckpointError(
            f"checkpoint {path} does not match its sidecar's SHA-256: the file is truncated, "
            "corrupt or was replaced")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {err}") from err
    return tensors, meta


def load_into(model: nn.Module, tensors: dict[str, torch.Tensor], prefix: str = "model.") -> None:
    """Copy ``prefix``-ed tensors into ``model``, refusing a different architecture or shape."""
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        detail = "; ".join(filter(None, [
            f"missing {missing[:4]}" if missing else "",
            f"unexpected {unexpected[:4]}" if unexpected else "",
            f"shape mismatch {wrong[:3]}" if wrong else ""]))
        raise CheckpointError(f"checkpoint does not fit this model (other architecture or input "
                              f"shape): {detail}")
    model.load_state_dict(state)


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state into tensors (for safetensors) and JSON-able parts."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, val in state.items():
            if torch.is_tensor(val):
                tensors[f"optim.{idx}.{key}"] = val
            else:
                scalars[f"{idx}.{key}"] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                      meta: dict) -> None:
    """Inverse of :func:`optimizer_tensors`."""
    state: dict[int, dict] = {}
    for name, val in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = val
    for name, val in meta.get("scalars", {}).items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = val
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
