"""What the Import page needs: an uploaded file kept under the artifacts folder, a server path
confined to the data and artifacts folders, the form's spec, the checks run in a child process
(the user's model and code never run inside the dashboard's server), and the import job.

``python -m core.app.importing SPEC_JSON`` is that child: it examines the model and prints one
JSON object (the check lines, the clean accuracy with its interval, or the refusal)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from core.jobs import runner
from core.jobs.specs import ImportSpec
from core.jobs.store import RunStore
from core.models import MODELS
from core.zoo import ZOO_NAMES
from core.paths import PROJECT_ROOT, InputError, artifacts_dir, confine, data_dir

UPLOAD_LIMIT_MB = 512
PRESETS = {"none (the model takes [0, 1] pixels)": None,
           "MNIST": ([0.1307], [0.3081]),
           "CIFAR-10": ([0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]),
           "ImageNet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
           "custom": None}
SUFFIXES = ("safetensors", "pt", "pth", "pt2", "ts", "bin", "ckpt")
ARCHIVE = "(the archive's own code)"
TORCHVISION = "torchvision model (type its name)"
MODULE = "my own code (PATH.py:FUNCTION)"
LAB_AND_ZOO = list(MODELS) + list(ZOO_NAMES)


def uploads_dir() -> Path:
    """Where uploaded model files are kept (inside the artifacts folder)."""
    return artifacts_dir() / "uploads"


def save_upload(name: str, payload: bytes) -> Path:
    """Keep an uploaded model file under a name made from its hash (temporary file, then
    rename), refusing one over the size limit."""
    if len(payload) > UPLOAD_LIMIT_MB * 2 ** 20:
        raise InputError(f"{name} is {len(payload) / 2 ** 20:.0f} MB; uploads are limited to "
                         f"{UPLOAD_LIMIT_MB} MB (give a path on the server instead)")
    if not payload:
        raise InputError(f"{name} is empty")
    suffix = Path(name).suffix.lower() or ".bin"
    folder = uploads_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(payload).hexdigest()[:16]}{suffix}"
    if not path.exists():
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(payload)
        os.replace(tmp, path)
    return path


def server_path(text: str, what: str = "model file") -> str:
    """A path typed into the browser, allowed only inside the data or artifacts folders."""
    if not text.strip():
        raise InputError(f"give the {what}'s path on the server")
    return str(confine(text.strip(), data_dir(), artifacts_dir()))


def form_spec(values: dict) -> ImportSpec:
    """The ImportSpec of the form (validated; paths already confined)."""
    return ImportSpec.from_dict({k: v for k, v in values.items() if v not in (None, "", [])})


def check(spec: ImportSpec, timeout: float = 600.0) -> dict:
    """Examine the model and measure its clean accuracy in a child process; a dict with
    ``ok``, ``lines``, and the accuracy, or ``error`` (one line)."""
    cmd = [sys.executable, "-m", "core.app.importing", json.dumps(spec.to_dict())]
    proc = subprocess.run(cmd, cwd=str(PROJECT_ROOT), capture_output=True, text=True,
                          timeout=timeout, preexec_fn=lambda: os.nice(5),
                          env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        tail = " ".join(proc.stderr.split())[-300:]
        return {"ok": False, "error": f"the check stopped unexpectedly: {tail}"}


def launch(store: RunStore, spec: ImportSpec, name: str | None = None) -> str:
    """Start the import job in a worker; returns its run id."""
    return runner.submit(store, spec, name=name or None)


def _child(config: str) -> dict:
    from core import confidence, data, imported
    from core.evaluation import clean_accuracy

    spec = ImportSpec.from_dict(json.loads(config))
    split = data.load(spec.dataset, "test", spec.data_dir)
    examined = imported.examine(spec, split)
    acc, n, _high = clean_accuracy(examined.model, split.subset(spec.n_check, spec.seed))
    low, high = confidence.interval(confidence.count(acc, n), n)
    out = {"ok": True, "lines": examined.lines, "flags": examined.flags, "accuracy": acc,
           "n": n, "interval": [low, high], "source": split.source}
    if imported.near_chance(acc, high, len(split.classes)):
        out["warning"] = imported.chance_line(acc, len(split.classes))
    return out


if __name__ == "__main__":
    try:
        result = _child(sys.argv[1])
    except InputError as err:
        result = {"ok": False, "error": " ".join(str(err).split())}
    print(json.dumps(result))
