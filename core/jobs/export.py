"""A run as TensorBoard event files, for the tools users already read runs with (TensorBoard,
MLflow's PyTorch autolog, ART's and Foolbox's logs). The tags are stable:

- ``train/<metric>`` per training step (loss, learning rate, ...) and ``epoch/<metric>`` per
  epoch (test accuracy, the guard's held-out robust accuracy, ...);
- ``eval/accuracy``, ``eval/macro_f1``, ``eval/micro_f1`` and the ``eval/confusion_matrix``
  image, per evaluation of the model (step: its order);
- ``audit/<norm>_<eps>_<version>/robust_acc`` (the latest audit of each threat model and
  cascade version) per stage (step 0 is clean, then each attack in cascade
  order), ``audit/<norm>_<eps>_<version>/indicator/<name>`` (0 pass, 0.5 warn, 1 fail) and, where they
  mean the same as ART's indicators of attack failure (Pintor et al. 2022), ART's tag names
  ``Attack Failure Indicator 1 - Silent Success`` and ``Attack Failure Indicator 4 - Zero
  Gradients`` under the same prefix; the verdict as text;
- ``curve/<norm>/robust_acc`` at 100 budgets (step k: the k-th of 0..the largest norm found),
  ``curve/<norm>/median_norm`` and the ``curve/<norm>/figure`` image.

``tensorboard`` is an optional dependency (``pip install tensorboard``)."""
from __future__ import annotations

import json
import math
from pathlib import Path

from core.jobs.store import MODEL_KINDS, Run, RunStore
from core.paths import InputError, run_dir

STATUS_VALUE = {"pass": 0.0, "warn": 0.5, "fail": 1.0}
ART_TAGS = {"silent success": "Attack Failure Indicator 1 - Silent Success",
            "gradients": "Attack Failure Indicator 4 - Zero Gradients"}
CURVE_STEPS = 100


def writer_class():
    """torch's SummaryWriter, or one line saying how to install what it needs."""
    try:
        import tensorboard  # noqa: F401  (torch's writer needs the package)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise InputError("exporting to TensorBoard needs the tensorboard package: "
                         "pip install tensorboard") from None
    return SummaryWriter


def export(store: RunStore, run_id: str, folder: str | Path) -> tuple[Path, list[str]]:
    """Write ``run_id`` (a model run with its evaluations, audits and curves, or one such
    job) as event files under ``folder/run_id``; returns the folder and the tags written."""
    SummaryWriter = writer_class()
    run = store.get(run_id)
    if run.status != "completed":
        raise InputError(f"run {run_id} is {run.status}; export a completed run")
    target = Path(folder) / run_id
    tags: list[str] = []
    with SummaryWriter(log_dir=str(target)) as writer:
        jobs = [run] if run.kind not in MODEL_KINDS else [run] + _latest(
            store.list_runs(model_run=run_id, status="completed"))
        counts: dict[str, int] = {}
        for job in jobs:
            step = counts.get(job.kind, 0)
            counts[job.kind] = step + 1
            tags += WRITERS.get(job.kind, lambda *a: [])(store, job, writer, step)
    return target, sorted(set(tags))


def _latest(runs: list[Run]) -> list[Run]:
    """The model's jobs oldest first, with only the latest audit of each threat model and
    version and the latest curve of each norm (their tags would collide)."""
    seen, out = set(), []
    for r in runs:  # newest first
        key = (r.kind, r.config.get("norm"), r.config.get("eps"), r.config.get("version")) \
            if r.kind in ("audit", "curve") else (r.id,)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return sorted(out, key=lambda r: r.created)


def _train(store: RunStore, run: Run, writer, _step: int) -> list[str]:
    tags = []
    for row in store.metrics(run.id):
        if row["name"] == "progress":
            continue
        if row["step"] is not None:
            tag, step = f"train/{row['name']}", int(row["step"])
        else:
            tag, step = f"epoch/{row['name']}", int(row["epoch"] or 0) + 1
        writer.add_scalar(tag, row["value"], step)
        tags.append(tag)
    return tags


def _import(_store: RunStore, run: Run, writer, _step: int) -> list[str]:
    writer.add_scalar("import/clean_acc", run.summary["clean_acc"], 0)
    return ["import/clean_acc"]


def _evaluate(_store: RunStore, run: Run, writer, step: int) -> list[str]:
    s = run.summary
    tags = []
    for key in ("accuracy", "macro_f1", "micro_f1"):
        writer.add_scalar(f"eval/{key}", s[key], step)
        tags.append(f"eval/{key}")
    png = run_dir(run.id) / "confusion.png"
    if png.exists():
        writer.add_image("eval/confusion_matrix", _image(png), step, dataformats="HWC")
        tags.append("eval/confusion_matrix")
    return tags


def _audit(_store: RunStore, run: Run, writer, _step: int) -> list[str]:
    report = json.loads((run_dir(run.id) / "audit.json").read_text())
    prefix = f"audit/{run.config['norm']}_{float(run.config['eps']):.4g}_{report['version']}"
    tags = [f"{prefix}/robust_acc"]
    writer.add_scalar(tags[0], report["clean_acc"], 0)
    for k, stage in enumerate(report["stages"], start=1):
        writer.add_scalar(tags[0], stage["robust_acc"], k)
    for item in report["indicators"]:
        value = STATUS_VALUE.get(item["status"], 0.5)
        for tag in filter(None, (f"{prefix}/indicator/{item['name']}",
                                 ART_TAGS.get(item["name"]) and
                                 f"{prefix}/{ART_TAGS[item['name']]}")):
            writer.add_scalar(tag, value, 0)
            tags.append(tag)
    writer.add_text(f"{prefix}/verdict", f"{report['verdict']} ({report['version']} cascade on "
                    f"{report['n']} images)", 0)
    return tags + [f"{prefix}/verdict"]


def _curve(_store: RunStore, run: Run, writer, _step: int) -> list[str]:
    norms = run.summary["norms"]
    n, norm = len(norms), run.config["norm"]
    finite = [v for v in norms if v is not None and math.isfinite(v)]
    top = max(finite, default=0.0) or 1.0
    prefix = f"curve/{norm}"
    for k in range(CURVE_STEPS + 1):
        eps = top * k / CURVE_STEPS
        robust = sum(1 for v in norms if v is None or v > eps) / n
        writer.add_scalar(f"{prefix}/robust_acc", robust, k)
    tags = [f"{prefix}/robust_acc"]
    if run.summary.get("median_norm") is not None:
        writer.add_scalar(f"{prefix}/median_norm", run.summary["median_norm"], 0)
        tags.append(f"{prefix}/median_norm")
    png = run_dir(run.id) / "curve.png"
    if png.exists():
        writer.add_image(f"{prefix}/figure", _image(png), 0, dataformats="HWC")
        tags.append(f"{prefix}/figure")
    return tags


def _image(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


WRITERS = {"train": _train, "import": _import, "evaluate": _evaluate, "audit": _audit,
           "curve": _curve}
