"""A job's finished batches, kept in its run folder so that a stopped audit, sweep, grid or
curve resumes where it stopped (``python -m core resume RUN``) and ends with the result an
unbroken run gives: every attack call is seeded per batch, so a batch computed later is the
same batch.

The state lives in ``ledger/``, one shard per finished batch: each shard holds only what grew
since the previous one (the rows appended to a per-example tensor) and what was replaced (a
small tensor rewritten in place, such as the cascade's per-image codes), with the job's own
bookkeeping as JSON in the file's metadata. So the bytes written grow with n, not with n
squared, and a shard is written to a temporary file and renamed: a crash at any moment leaves
the previous state or the new one, never a mix. Every shard names the spec it belongs to and
pins the conditions its batches were computed under (search precision, device, data source and
split size, the weights' sha256, the attacks' code version): a ledger of another spec is never
read, and one whose conditions changed, or that cannot be read, is set aside with one line
saying why (``changed``), and the job starts again.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open

from core.checkpoint import write_safetensors

CODE_VERSION = "2"  # the attacks' code: bumped when a change alters what a batch computes

FOLDER = "ledger"
LEGACY = "ledger.safetensors"  # one whole file per state, as versions before shards wrote it


class Ledger:
    """The resumable state of one run's job (``enabled`` False: nothing is kept, as under
    torchrun, where each rank holds only its share). :meth:`save` takes the job's whole state
    each time and writes only its difference from the previous one."""

    def __init__(self, folder: Path | None, spec: dict, enabled: bool = True,
                 conditions: dict | None = None) -> None:
        self.folder, self.enabled = folder, enabled
        self.spec = json.dumps(spec, sort_keys=True, default=str)
        self.conditions = dict(conditions or {}, code=CODE_VERSION)
        self.changed: str | None = None  # why a saved state was set aside
        self._last: dict[str, torch.Tensor] = {}  # what the shards on disk add up to
        self._shards = 0

    @property
    def path(self) -> Path:
        """The folder of shards."""
        return self.folder / FOLDER

    def exists(self) -> bool:
        """Whether any state is kept."""
        return self.folder is not None and (any(self.path.glob("*.safetensors"))
                                            if self.path.is_dir() else False)

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The saved tensors and bookkeeping, or None (nothing saved, or another spec's)."""
        if not self.enabled or not self.exists():
            return None
        try:
            shards = _shards(self.path)
            meta = _metadata(shards[-1])
            if meta.get("spec") != self.spec:
                return None
            saved = json.loads(meta.get("conditions", "{}"))
            tensors = _added_up(shards)
            state = json.loads(meta["state"])
        except (SafetensorError, OSError, ValueError, KeyError, RuntimeError) as err:
            self.changed = (f"its saved batches could not be read ({type(err).__name__}: "
                            f"{' '.join(str(err).split())[:120]}), so it starts again")
            return None
        differ = [f"{_LABELS.get(k, k)} {saved.get(k)} -> {v}" for k, v in
                  self.conditions.items() if saved.get(k) != v]
        if differ:
            self.changed = (f"what its saved batches were computed under changed ("
                            f"{'; '.join(differ)}), so it starts again")
            return None
        self._last, self._shards = dict(tensors), len(shards)
        return tensors, state

    def save(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        """Keep ``tensors`` and ``state`` (the job's whole state): one new shard holding the
        rows appended to each tensor since the last save and the tensors that changed
        otherwise."""
        if not self.enabled:
            return
        if self._shards == 0:  # a fresh start: whatever an earlier attempt left is set aside
            self.clear()
        self.path.mkdir(parents=True, exist_ok=True)
        shard = {}
        for key, value in tensors.items():
            before = self._last.get(key)
            if before is not None and _extends(value, before):
                if len(value) > len(before):
                    shard[f"add.{key}"] = value[len(before):]
            elif before is None or not torch.equal(value, before):
                shard[f"set.{key}"] = value
        self._shards += 1
        path = self.path / f"{self._shards:06d}.safetensors"
        tmp = path.with_name(path.name + ".tmp")
        try:
            write_safetensors(tmp, {k: v.contiguous() for k, v in shard.items()},
                              {"spec": self.spec, "state": json.dumps(state),
                               "conditions": json.dumps(self.conditions)})
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self._last = dict(tensors)

    def record(self, saved: tuple[dict[str, torch.Tensor], dict[str, Any]]) -> None:
        """:meth:`save` of a job's ``(tensors, state)`` pair (what the jobs' ``on_batch`` give)."""
        self.save(*saved)

    def state(self) -> dict[str, Any] | None:
        """The latest bookkeeping kept, without reading any tensor (None: nothing kept)."""
        try:
            return json.loads(_metadata(_shards(self.path)[-1])["state"]) if self.exists() \
                else None
        except (SafetensorError, OSError, ValueError, KeyError, IndexError):
            return None

    def clear(self) -> None:
        """Forget the state (the job's result files are written, or it starts again)."""
        if self.enabled and self.folder is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            (self.folder / LEGACY).unlink(missing_ok=True)
            self._last, self._shards = {}, 0


def _shards(folder: Path) -> list[Path]:
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise OSError(f"no shard in {folder}")
    return shards


def _metadata(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as fh:
        return fh.metadata() or {}


def _added_up(shards: list[Path]) -> dict[str, torch.Tensor]:
    """The state the shards add up to: each ``set.`` replaces, each ``add.`` appends."""
    parts: dict[str, list[torch.Tensor]] = {}
    for path in shards:
        for name, value in load_file(str(path)).items():
            how, key = name.split(".", 1)
            parts[key] = [value] if how == "set" else parts.get(key, []) + [value]
    return {k: v[0] if len(v) == 1 else torch.cat(v) for k, v in parts.items()}


def _extends(value: torch.Tensor, before: torch.Tensor) -> bool:
    """Whether ``value`` is ``before`` with rows appended (so only the new rows are written)."""
    return value.dim() > 0 and before.dim() > 0 and value.shape[1:] == before.shape[1:] and \
        value.dtype == before.dtype and len(value) >= len(before) and len(before) > 0 and \
        torch.equal(value[:len(before)], before)


_LABELS = {"precision": "search precision", "device": "device", "source": "data source",
           "n": "images", "weights": "weights sha256", "code": "attack code version"}
