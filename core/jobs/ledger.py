"""A job's finished batches, kept in its run folder so that a stopped audit, sweep or grid
resumes where it stopped (``python -m core resume RUN``) and ends with the result an unbroken
run gives: every attack call is seeded per batch, so a batch computed later is the same batch.

One file, ``ledger.safetensors``: the tensors, and the job's own bookkeeping as JSON in the
file's metadata, written to a temporary file and renamed, so a crash at any moment leaves the
previous state or the new one, never a mix. It names the spec it belongs to; a ledger of
another spec is never read.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open

from core.checkpoint import write_safetensors

FILE = "ledger.safetensors"


class Ledger:
    """The resumable state of one run's job (``enabled`` False: nothing is kept, as under
    torchrun, where each rank holds only its share)."""

    def __init__(self, folder: Path | None, spec: dict, enabled: bool = True) -> None:
        self.folder, self.enabled = folder, enabled
        self.spec = json.dumps(spec, sort_keys=True, default=str)

    @property
    def path(self) -> Path:
        """Where the state lives."""
        return self.folder / FILE

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The saved tensors and bookkeeping, or None (nothing saved, or another spec's)."""
        if not self.enabled or not self.path.exists():
            return None
        with safe_open(str(self.path), framework="pt") as fh:
            meta = fh.metadata() or {}
        if meta.get("spec") != self.spec:
            return None
        return load_file(str(self.path)), json.loads(meta["state"])

    def save(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        """Replace the saved state at once (temporary file, fsync, rename)."""
        if not self.enabled:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(FILE + ".tmp")
        try:
            write_safetensors(tmp, tensors, {"spec": self.spec, "state": json.dumps(state)})
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)

    def record(self, saved: tuple[dict[str, torch.Tensor], dict[str, Any]]) -> None:
        """:meth:`save` of a job's ``(tensors, state)`` pair (what the jobs' ``on_batch`` give)."""
        self.save(*saved)

    def clear(self) -> None:
        """Forget the state (the job's result files are written)."""
        if self.enabled:
            self.path.unlink(missing_ok=True)
