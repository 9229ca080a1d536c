"""What a job refers to, checked before its run exists and before torch loads: the model run,
its kind and weights, and the dataset on disk. The command line calls it first, so that a bad
run id or data folder is refused in a fraction of a second; the runner calls it again when it
creates the run."""
from __future__ import annotations

from pathlib import Path

from core import catalog
from core.checks import a_kind
from core.paths import InputError, run_dir
from core.jobs.specs import (ImportSpec, ModelJobSpec, ReproduceSpec, Spec, StudySpec,
                             TrainSpec)
from core.jobs.store import MODEL_KINDS, RunStore


def preflight(store: RunStore, spec: Spec) -> None:
    """Check what a spec refers to before its run exists: the model run and its weights, the
    dataset on disk (downloading a built-in one when it is missing)."""
    if isinstance(spec, ModelJobSpec):
        model = store.get(spec.model_run)
        if model.kind not in MODEL_KINDS:
            raise InputError(f"run {spec.model_run} is {a_kind(model.kind)}; pick a training "
                             "or import run")
        name = "best.safetensors" if spec.which == "best" else "model.safetensors"
        if not (run_dir(spec.model_run) / name).exists():
            raise InputError(f"run {spec.model_run} has no {spec.which} weights ({name}); "
                             f"it is {model.status}" + (
                                 "" if spec.which == "final" else
                                 " (best weights exist only for defended runs)"))
        _check_data(model.config["dataset"], spec.data_dir or model.config.get("data_dir"))
        _check_size(spec, model.config["dataset"], spec.data_dir or model.config.get("data_dir"))
    elif isinstance(spec, TrainSpec):
        _check_data(spec.dataset, spec.data_dir)
    elif isinstance(spec, ImportSpec):
        _check_import_files(spec)
        _check_data(spec.dataset, spec.data_dir)
    elif isinstance(spec, ReproduceSpec):
        for name in ("mnist", "cifar10"):
            _check_data(name, spec.data_dir)
    elif isinstance(spec, StudySpec):
        for name in spec.datasets:
            _check_data(name, spec.data_dir)


def _check_data(name: str, root: str | None) -> None:
    if catalog.check(name, root) == "download":
        from core import data

        for split in ("train", "test"):  # torchvision downloads here, or says why it cannot
            data.load(name, split, root)


def _check_import_files(spec: ImportSpec) -> None:
    for what, path in (("model file", spec.file),
                       ("--module file", spec.module and spec.module.rpartition(":")[0])):
        if path and not Path(path).is_file():
            raise InputError(f"{what} {path} does not exist or is not a file")
        if path and Path(path).stat().st_size == 0:
            raise InputError(f"{what} {path} is empty")


def _check_size(spec: ModelJobSpec, dataset: str, root: str | None) -> None:
    """A job on more images than its split holds is refused, naming the split's size."""
    n = getattr(spec, "n", None)
    split = getattr(spec, "split", None) or "test"
    if not n:
        return
    size = catalog.split_size(dataset, split, root)
    if size is not None and n > size:
        raise InputError(f"-n {n:,} is more than the {size:,} images of {dataset}'s {split} "
                         f"split; give at most {size:,} (or leave -n out for all of them)")
