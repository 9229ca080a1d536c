"""Where RobustLab reads data and writes artifacts.

The data root comes from an explicit argument (the CLI's ``--data-dir``), else the environment
variable ``ROBUSTLAB_DATA``, else ``artifacts/data``. Artifacts (run database, run folders,
caches, reports) live under the CLI's ``--artifacts-dir``, else ``ROBUSTLAB_ARTIFACTS``, else
``artifacts/`` beside the package.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


class InputError(ValueError):
    """A user-supplied value is invalid; the message says what was wrong and what is valid."""


class EnvironmentProblem(InputError):
    """The machine, not the input, is in the way (an unwritable or full disk, a damaged or
    locked run database); the message names the file and what to do."""


_WRITABLE_HINT = "point ROBUSTLAB_ARTIFACTS (or --artifacts-dir) at a writable folder"


def environment_problem(err: BaseException, path: str | os.PathLike | None = None) -> str | None:
    """One line saying what in the environment stopped a job, for an OS or SQLite error (a
    read-only or full disk, a damaged or locked database, a path through a file), naming the
    file and what to do; None when ``err`` is none of these (a bug deserves its traceback)."""
    import errno
    import sqlite3

    where = str(path or getattr(err, "filename", None) or "a file")
    code = getattr(err, "errno", None)
    text = str(err).lower()
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or "disk is full" in text:
        return (f"no room to write {where} ({_reason(err)}): free space on that disk, or point "
                "ROBUSTLAB_ARTIFACTS (or --artifacts-dir) at another one")
    if code in (errno.EROFS, errno.EACCES, errno.EPERM) or "readonly" in text or \
            "unable to open database" in text:
        return f"cannot write {where}: its folder is read-only or not writable; {_WRITABLE_HINT}"
    if code == errno.ENOTDIR:
        return f"cannot use {where}: part of that path is a file, not a folder; {_WRITABLE_HINT}"
    if isinstance(err, sqlite3.DatabaseError) and ("not a database" in text
                                                   or "malformed" in text):
        return (f"the run database {where} is damaged ({err}); move it aside (mv {where} "
                f"{where}.damaged) and a new, empty one is made on the next command, or put back "
                "a copy")
    if isinstance(err, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
        return (f"the run database {where} stayed locked by another process; wait for it, or "
                "stop it (`python -m core runs` lists what is running) and try again")
    return None


def _reason(err: BaseException) -> str:
    return getattr(err, "strerror", None) or str(err)


def artifacts_root() -> Path:
    """The artifacts folder, not made here."""
    return Path(os.environ.get("ROBUSTLAB_ARTIFACTS", PROJECT_ROOT / "artifacts")).resolve()


def artifacts_dir() -> Path:
    """Return the artifacts folder (created on demand)."""
    path = artifacts_root()
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Resolve the data root: explicit argument, then ROBUSTLAB_DATA, then artifacts/data."""
    for where, given in (("--data-dir", explicit), ("ROBUSTLAB_DATA",
                                                    os.environ.get("ROBUSTLAB_DATA"))):
        if given:
            path = Path(given).expanduser().resolve()
            if path.exists() and not path.is_dir():
                raise InputError(f"{where} {given} is a file; it must be the folder that holds "
                                 "the datasets (MNIST/raw, cifar10-subset/, or train/ and test/ "
                                 "of an ImageFolder)")
            return path
    return artifacts_dir() / "data"


def cache_dir() -> Path:
    """Folder for decoded-dataset caches."""
    path = artifacts_dir() / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def reports_dir() -> Path:
    """Folder for generated reports."""
    path = artifacts_dir() / "reports"
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_run_id(run_id: str) -> str:
    """Validate a run id so it can never escape the runs folder."""
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise InputError(
            f"invalid run id {run_id!r}: use letters, digits, '-' and '_' only "
            "(no path separators, at most 128 characters)"
        )
    return run_id


def runs_root() -> Path:
    """Folder holding every run's folder."""
    return artifacts_dir() / "runs"


def run_dir(run_id: str) -> Path:
    """Folder holding one run's files (checkpoints, reports, logs)."""
    path = artifacts_dir() / "runs" / check_run_id(run_id)
    path.mkdir(parents=True, exist_ok=True)
    return path


def grid_point_path(run_id: str, index: int) -> Path:
    """File holding grid point ``index`` of a grid run (its examples, with the summary in the
    sidecar)."""
    return run_dir(run_id) / f"grid-{index:03d}.safetensors"


def confine(path: str | os.PathLike, *roots: Path) -> Path:
    """Resolve ``path`` and refuse it unless it lies inside one of ``roots``."""
    resolved = Path(path).expanduser().resolve()
    for root in roots:
        if resolved == root.resolve() or root.resolve() in resolved.parents:
            return resolved
    allowed = ", ".join(str(r) for r in roots)
    raise InputError(f"path {str(path)!r} is outside the allowed folders ({allowed})")
