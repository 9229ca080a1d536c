"""What the Evaluate page asks: the cached clean evaluation, the gallery's images, class
names, and attack jobs for the under-attack view.
Plain Python (no streamlit), so pages stay thin."""
from __future__ import annotations

from core import checkpoint
from core import data
from core.jobs import runner
from core.attacks import ATTACKS
from core.jobs.specs import AttackSpec, EvaluateSpec, spec_from_config
from core.prediction import run_model_path
from core.jobs.store import Run, RunStore
from core.app.images import to_display
from core.app.runs import find_same


def cached_evaluation(store: RunStore, model_run: str) -> Run:
    """The latest evaluation of ``model_run``'s final weights on its whole test split (one
    started from the CLI counts too), launching one when none exists. A cancelled one is
    returned as it is: the user stopped it, so it is not started again unasked."""
    wanted = EvaluateSpec(model_run=model_run)
    for run in store.list_runs(kind="evaluate", parent=model_run):
        same = all(run.config.get(k) == getattr(wanted, k) for k in ("which", "split", "n"))
        if same and run.status in ("completed", "running", "queued", "cancelled"):
            return run
    return store.get(launch_evaluation(store, model_run))


def launch_evaluation(store: RunStore, model_run: str) -> str:
    """Start the clean evaluation of ``model_run`` on its whole test split."""
    return runner.submit(store, EvaluateSpec(model_run=model_run), parent=model_run)


def gallery_images(meta_dataset: str, records: list[dict],
                   data_dir: str | None = None) -> list[str]:
    """The examples named by ``records`` (test split, original index) as image data URIs."""
    split = data.load(meta_dataset, "test", data_dir)
    imgs = split.images[[r["index"] for r in records]] if records else split.images[:0]
    return [to_display(img) for img in imgs]


def classes_for_run(run: Run) -> list[str]:
    """Class names of a training run's dataset, from its weights' sidecar (cheap: no dataset
    is read); from the dataset itself for a run whose weights are not written yet."""
    meta = checkpoint.read_sidecar(run_model_path(run.id))
    if meta is not None and "classes" in meta:
        return list(meta["classes"])
    return data.load(run.config["dataset"], "test", run.config.get("data_dir")).classes


def launch_attack(store: RunStore, model_run: str, attack: str, budget: float | None,
                  n: int) -> str:
    """Start one attack job of the model at this budget (the attack's own defaults otherwise);
    an identical one that is queued, running or done is reused."""
    settings = ATTACKS[attack]
    params = {settings.budget: budget} if settings.budget and budget is not None else {}
    spec = AttackSpec(model_run=model_run, attack=attack, params=params, n=n)
    existing = find_same(store, spec)
    return existing.id if existing else runner.submit(store, spec, parent=model_run)


def attack_results(store: RunStore, model_run: str) -> list[Run]:
    """The model's attack jobs that are done, on their way or cancelled, newest first."""
    return [r for r in store.list_runs(kind="attack", parent=model_run)
            if r.status in ("completed", "running", "queued", "cancelled")]


def attack_label(run: Run) -> str:
    """'pgd · L∞ ε=0.1 (25.5/255) · 500 images' for an attack run."""
    spec = spec_from_config("attack", run.config)
    status = "" if run.status in ("completed", "running", "queued") else f" ({run.status})"
    return f"{spec.attack} · {spec.where()} · {spec.n:,} images{status}"
