"""The lab's runs for every page: labels, tables, progress and time left, resume, weights,
and the configuration differences between runs.
Plain Python (no streamlit), so pages stay thin."""
from __future__ import annotations

import io
import json
import time

import pandas as pd

from core.checks import a_kind, parse_numbers
from core.confidence import interval_text
import torch

from core.jobs import runner
from core.app.console import headline
from core.paths import InputError, run_dir
from core.prediction import load_model, pick_device, run_model_path
from core.jobs.store import MODEL_KINDS, Run, RunStore, resume_refusal
from core.jobs.specs import check_budgets


def eps_label(eps: float) -> str:
    """'0.0314 (8/255)' style label for a pixel-unit epsilon."""
    return f"{eps:.4g} ({eps * 255:.3g}/255)"


def device_label() -> str:
    """Where training would run."""
    dev = pick_device("auto")
    if dev.type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(0)}"
    return f"CPU ({torch.get_num_threads()} threads)"


def run_label(run: Run) -> str:
    """Human label for a run in pickers."""
    cfg = run.config
    what = f"{cfg.get('model', '')} · {cfg.get('dataset', '')}"
    if run.kind == "import":
        what = (f"imported {cfg.get('arch') or (cfg.get('module') or '').rpartition('/')[2] or 'archive'}"
                f" · {cfg.get('dataset', '')}")
    elif run.kind == "study":
        what = (f"study · {cfg.get('model', '')} · {', '.join(cfg.get('datasets', []))} · "
                f"{cfg.get('scale', '')} scale")
    elif cfg.get("defense", "none") != "none":
        eps = cfg.get("defense_args", {}).get("eps")
        what += f" · {cfg['defense']}" + (f" eps {eps:.4g}" if isinstance(eps, (int, float))
                                          else "")
    name = f"{run.name} · " if run.name else ""
    if run.tags:
        name += f"[{', '.join(run.tags)}] "
    # no status here: a picker's label is not redrawn while a job runs, so it would go stale;
    # pages show the status beside it, live
    return f"{name}{what} · {run.id[-9:]}"


def runs_frame(store: RunStore, kind: str | None = None) -> pd.DataFrame:
    """Runs as a table for display."""
    rows = [{"id": r.id, "name": r.name or "", "kind": r.kind, "status": r.status,
             "created": time.strftime("%m-%d %H:%M", time.localtime(r.created)),
             "seconds": round(r.duration or 0), "result": headline(r)}
            for r in store.list_runs(kind=kind)]
    return pd.DataFrame(rows)


def trained_runs(store: RunStore) -> list[Run]:
    """Completed model runs, trained or imported (those with final weights)."""
    return [r for r in store.list_runs(status="completed") if r.kind in MODEL_KINDS
            and (run_dir(r.id) / "model.safetensors").exists()]


def defense_of(run: Run) -> str:
    """A model run's defense, or 'imported' for a model trained elsewhere."""
    return "imported" if run.kind == "import" else run.config.get("defense") or "none"


def model_runs(store: RunStore) -> list[Run]:
    """Completed model runs, trained or imported, newest first (weights or not: Compare reads
    their stored figures only)."""
    return [r for r in store.list_runs(status="completed") if r.kind in MODEL_KINDS]


def clean_figure(run: Run) -> tuple[float | None, int | None]:
    """A model run's clean test accuracy and its image count: a training's at its end, an
    import's from its check."""
    s = run.summary or {}
    if run.kind == "import":
        return s.get("clean_acc"), s.get("n")
    return (s.get("final") or {}).get("test_acc"), s.get("n_test")


def progress(store: RunStore, run_id: str, now: float | None = None) -> dict:
    """Epoch, step, fraction done and seconds left of a running job."""
    run = store.get(run_id)
    summary = run.summary or {}
    if run.kind == "train":
        steps = store.metrics(run_id, ["train_loss_step"])
        total = summary.get("total_steps") or 1
        done = steps[-1]["step"] if steps else 0
        epoch = steps[-1]["epoch"] + 1 if steps else summary.get("epoch", 0)
        label = f"epoch {epoch}/{run.config.get('epochs')} · step {done}/{total}"
        points = [(r["time"], r["step"]) for r in steps]
    else:
        rows = store.metrics(run_id, ["progress"])
        frac = rows[-1]["value"] if rows else 0.0
        done, total = frac, 1.0
        label = f"{frac:.0%}"
        points = [(r["time"], r["value"]) for r in rows]
    fraction = min(done / total, 1.0) if total else 0.0
    if run.status == "completed":
        fraction = 1.0
    left = (remaining_seconds(points, total, time.time() if now is None else now)
            if run.status == "running" else None)
    return {"fraction": fraction, "label": label, "seconds_left": left, "status": run.status,
            "error": run.error, "warnings": run.warnings}


def remaining_seconds(points: list[tuple[float, float]], total: float, now: float
                      ) -> float | None:
    """Seconds left from (time, amount done) points: the average rate since the first point,
    which already counts the pauses that recur (evaluation at each epoch's end), and not the
    start-up before it, so the figure neither jumps with each update nor stalls between them:
    it counts down from the last point. A gap of over 10 minutes is a stop and a resume: only
    the points after it count."""
    gaps = [k for k in range(1, len(points)) if points[k][0] - points[k - 1][0] > 600]
    points = points[gaps[-1]:] if gaps else points
    if len(points) < 2 or points[-1][0] <= points[0][0] or points[-1][1] <= points[0][1]:
        return None
    (t0, d0), (t1, d1) = points[0], points[-1]
    rate = (d1 - d0) / (t1 - t0)
    return max((total - d1) / rate - (now - t1), 0.0)


def parse_budgets(text: str) -> list[float]:
    """Epsilons typed as '0, 0.1, 8/255': numbers or fractions in [0, 1], comma-separated;
    anything else is one clear InputError."""
    return check_budgets(parse_numbers(text), "epsilons")


def resumable(run: Run) -> bool:
    """Whether the dashboard may offer Resume for ``run`` (the runner's one rule)."""
    return resume_refusal(run) is None


def resume(store: RunStore, run_id: str) -> None:
    """Resume a stopped run in a new worker: a training from its checkpoint (its evaluation
    follows, as after a launch), an audit, sweep or grid from its finished batches."""
    runner.resume_in_worker(store, run_id, evaluate_after=store.get(run_id).kind == "train")


def find_same(store: RunStore, spec) -> Run | None:
    """A queued, running or completed run of ``spec``'s model with exactly this config."""
    config = spec.to_dict()
    for run in store.list_runs(kind=spec.kind, parent=spec.model_run):
        if run.config == config and run.status in ("completed", "running", "queued"):
            return run
    return None


def model_for_run(store: RunStore, run_id: str, which: str = "final",
                  device: str = "auto") -> tuple[torch.nn.Module, dict]:
    """Load the trained model of a training run."""
    run = store.get(run_id)
    if run.kind not in MODEL_KINDS:
        raise InputError(f"run {run_id} is {a_kind(run.kind)}; pick a training or import run")
    return load_model(run_model_path(run_id, which), device)


def load_report(run_id: str) -> dict:
    """The full evaluation report (with per-example records) of an evaluate run."""
    path = run_dir(run_id) / "evaluation.json"
    if not path.exists():
        raise InputError(f"run {run_id} has no evaluation report")
    return json.loads(path.read_text())


def config_diff(runs: list[Run]) -> pd.DataFrame:
    """Configuration keys whose values differ between runs (flattened), one column per run
    (named by its label), every value as text: "—" where a run has no such setting or an
    empty one, never "nan" or "{}"."""
    flat = [_flatten(r.config) for r in runs]
    keys = sorted(set().union(*flat)) if flat else []
    rows = {k: [_setting_text(f.get(k)) for f in flat] for k in keys}
    differing = {k: v for k, v in rows.items() if len(set(v)) > 1}
    return pd.DataFrame(differing, index=[run_label(r) for r in runs], dtype=object).T


def _setting_text(value) -> str:
    if value is None or value == {} or value == []:
        return "—"
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def lab_overview(store: RunStore) -> pd.DataFrame:
    """What the lab holds: one row per trained model with its clean accuracy and its latest
    audit (robust accuracy, threat model, verdict), best audited first."""
    rows = []
    for run in trained_runs(store):
        clean, _n = clean_figure(run)
        audits = store.list_runs(kind="audit", model_run=run.id, status="completed")
        audit = audits[0].summary if audits else {}
        rows.append({"model": run.name or run.id[-9:], "tags": ", ".join(run.tags),
                     "dataset": run.config.get("dataset"),
                     "defense": defense_of(run),
                     "clean acc": clean,
                     "audited robust acc": audit.get("robust_acc"),
                     "audit 95% interval": interval_text(audit.get("robust_acc"),
                                                         audit.get("n")),
                     "audit": f"{audit['threat_label']}, {audit['n']} imgs, {audit['verdict']}"
                     if audit else None})
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.sort_values(["audited robust acc", "clean acc"], ascending=False,
                                  na_position="last")
    return frame


def weights_file(run_id: str) -> tuple[bytes, str] | None:
    """The final weights of a training run for download: a zip of ``model.safetensors`` and
    its JSON sidecar (architecture, normalization, hash), with its file name."""
    import zipfile

    path = run_dir(run_id) / "model.safetensors"
    if not path.exists():
        return None
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for part in (path, path.with_name(path.name + ".json")):
            archive.write(part, f"{run_id}/{part.name}")
    return out.getvalue(), f"{run_id}.zip"


def run_files(run_id: str, names: list[str]) -> list[tuple[str, bytes]]:
    """The run's result files among ``names`` that exist, as (name, contents) for download."""
    folder = run_dir(run_id)
    return [(name, (folder / name).read_bytes()) for name in names if (folder / name).is_file()]


def export_tensorboard(store: RunStore, run_id: str) -> tuple[str, int]:
    """Write a run's TensorBoard event files under artifacts/tensorboard; the folder and the
    number of tags written."""
    from core.jobs.export import export
    from core.paths import artifacts_dir

    folder, tags = export(store, run_id, artifacts_dir() / "tensorboard")
    return str(folder), len(tags)
