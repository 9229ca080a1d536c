"""What the Train page asks: the form's defaults, the time estimate, launching a training run.
Plain Python (no streamlit), so pages stay thin."""
from __future__ import annotations

from core.jobs import runner
from core.paths import artifacts_dir, confine, data_dir
from core.jobs.specs import TrainSpec
from core.jobs.store import Run, RunStore


def train_form_defaults(run: Run | None = None) -> dict:
    """Form values: the defaults, or a run's config (to clone it)."""
    base = TrainSpec().to_dict()
    if run is not None:
        base.update({k: v for k, v in run.config.items() if k in base})
    return base


def training_estimate(store: RunStore, values: dict) -> str:
    """How long training with form ``values`` should take here, from the images per second
    that finished runs of the same dataset, model and defense measured on this machine."""
    same = [r for r in store.list_runs(kind="train", status="completed")
            if all(r.config.get(k) == values.get(k) for k in ("dataset", "model", "defense"))
            and (r.config.get("defense_args") or {}).get("steps") ==
            (values.get("defense_args") or {}).get("steps")
            and (r.summary or {}).get("n_train") and r.duration]
    if not same:
        return ("no estimate yet: no finished run of this dataset, model and defense on this "
                "machine (a first run of 1 epoch on a few thousand images measures it)")
    run = same[0]
    per_image = run.duration / (run.config["epochs"] * run.summary["n_train"])
    images = values.get("train_subset") or FULL_TRAIN.get(values.get("dataset"), 0)
    if not images:
        return "no estimate for this dataset"
    seconds = per_image * images * int(values["epochs"])
    return (f"about {_duration(seconds)} on this machine ({images / seconds * int(values['epochs']):,.0f}"
            f" images/s measured by run {run.id[-9:]}, test evaluations included)")


FULL_TRAIN = {"mnist": 60000, "cifar10": 50000}


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    return f"{seconds:.0f} s" if seconds < 90 else f"{minutes:.0f} min" if minutes < 90 else \
        f"{minutes / 60:.1f} h"


def launch_training(store: RunStore, values: dict, name: str | None = None) -> str:
    """Validate a training form and start its worker; returns the run id."""
    cfg = TrainSpec.from_dict(values)
    if cfg.dataset.startswith("imagefolder:"):
        # A path typed into the browser may only point inside the data or artifacts folders.
        folder = confine(cfg.dataset.split(":", 1)[1], data_dir(cfg.data_dir), artifacts_dir())
        cfg.dataset = f"imagefolder:{folder}"
    # the clean evaluation starts when training ends, not when the Evaluate page is opened
    return runner.submit(store, cfg, name=name or None, evaluate_after=True)
