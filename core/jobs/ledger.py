"""A job's finished batches, kept in its run folder so that a stopped audit, sweep or grid
resumes where it stopped (``python -m core resume RUN``) and ends with the result an unbroken
run gives: every attack call is seeded per batch, so a batch computed later is the same batch.

One file, ``ledger.safetensors``: the tensors, and the job's own bookkeeping as JSON in the
file's metadata, written to a temporary file and renamed, so a crash at any moment leaves the
previous state or the new one, never a mix. It names the spec it belongs to and pins the
conditions its batches were computed under (search precision, device, data source and split
size, the weights' sha256, the attacks' code version): a ledger of another spec is never read,
and one whose conditions changed, or that cannot be read, is set aside with one line saying
why (``changed``), and the job starts again.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open

from safetensors import SafetensorError

from core.checkpoint import write_safetensors

CODE_VERSION = "1"  # the attacks' code: bumped when a change alters what a batch computes

FILE = "ledger.safetensors"


class Ledger:
    """The resumable state of one run's job (``enabled`` False: nothing is kept, as under
    torchrun, where each rank holds only its share)."""

    def __init__(self, folder: Path | None, spec: dict, enabled: bool = True,
                 conditions: dict | None = None) -> None:
        self.folder, self.enabled = folder, enabled
        self.spec = json.dumps(spec, sort_keys=True, default=str)
        self.conditions = dict(conditions or {}, code=CODE_VERSION)
        self.changed: str | None = None  # why a saved state was set aside

    @property
    def path(self) -> Path:
        """Where the state lives."""
        return self.folder / FILE

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The saved tensors and bookkeeping, or None (nothing saved, or another spec's)."""
        if not self.enabled or not self.path.exists():
            return None
        try:
            with safe_open(str(self.path), framework="pt") as fh:
                meta = fh.metadata() or {}
            if meta.get("spec") != self.spec:
                return None
            saved = json.loads(meta.get("conditions", "{}"))
            state = json.loads(meta["state"])
            tensors = load_file(str(self.path))
        except (SafetensorError, OSError, ValueError, KeyError) as err:
            self.changed = (f"its saved batches could not be read ({type(err).__name__}: "
                            f"{' '.join(str(err).split())[:120]}), so it starts again")
            return None
        differ = [f"{_LABELS.get(k, k)} {saved.get(k)} -> {v}" for k, v in
                  self.conditions.items() if saved.get(k) != v]
        if differ:
            self.changed = (f"what its saved batches were computed under changed ("
                            f"{'; '.join(differ)}), so it starts again")
            return None
        return tensors, state

    def save(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        """Replace the saved state at once (temporary file, fsync, rename)."""
        if not self.enabled:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(FILE + ".tmp")
        try:
            write_safetensors(tmp, tensors, {"spec": self.spec, "state": json.dumps(state),
                                             "conditions": json.dumps(self.conditions)})
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


_LABELS = {"precision": "search precision", "device": "device", "source": "data source",
           "n": "images", "weights": "weights sha256", "code": "attack code version"}
