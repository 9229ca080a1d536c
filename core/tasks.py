"""What each kind of run does when a worker (or the CLI) executes it, and where it puts files."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn

from . import checkpoint, data, distributed
from .attacks import build_attack
from .evaluation import (AttackOutcome, Progress, clean_report, misclassified, run_attack,
                         sanity_warnings, sweep)
from .paths import InputError, run_dir
from .store import RunStore
from .training import TrainConfig, fit, load_model, model_from, pick_device, run_model_path


def model_path(store: RunStore, run_id: str, which: str = "final") -> Path:
    """The weights file of a training run, refusing runs of other kinds or without weights."""
    run = store.get(run_id)
    if run.kind != "train":
        raise InputError(f"run {run_id} is a {run.kind} run; pick a training run")
    return run_model_path(run_id, which)


def model_for_run(store: RunStore, run_id: str, which: str = "final",
                  device: str = "auto") -> tuple[nn.Module, dict]:
    """Load the trained model of a training run (on the GPU when there is one)."""
    return load_model(model_path(store, run_id, which), device)


def job_model(store: RunStore | None, cfg: dict) -> tuple[nn.Module, dict]:
    """The model a job's config names. Under torchrun rank 0 reads the file and sends it to
    the other ranks (which have no run store), and each rank uses its own device."""
    ctx = distributed.current()
    path = model_path(store, cfg["model_run"], cfg.get("which", "final")) if ctx.is_main \
        else None
    tensors, meta = distributed.shared_checkpoint(path, ctx)
    device = ctx.device if ctx.world > 1 else pick_device(cfg.get("device", "auto"))
    return model_from(tensors, meta, device), meta


def test_split(meta: dict, split: str = "test", n: int | None = None, seed: int = 0,
               data_dir: str | None = None) -> data.TensorData:
    """The split a model was trained for, optionally a reproducible subset of ``n`` examples."""
    root = data_dir or meta["train_config"].get("data_dir")
    return data.load(meta["dataset"], split, root).subset(n, seed)


def train_task(store: RunStore, run_id: str, resume: bool, progress: bool) -> dict:
    """Train per the run's config."""
    cfg = TrainConfig.from_dict(store.get(run_id).config)
    return fit(cfg, store, run_id, resume=resume, progress=progress)


def evaluate_task(store: RunStore, run_id: str, resume: bool, progress: bool) -> dict:
    """Clean metrics, confusion matrix and misclassified examples of a model run."""
    report, split = evaluate_compute(store, store.get(run_id).config)
    folder = run_dir(run_id)
    checkpoint.atomic_write_text(folder / "evaluation.json", json.dumps(report))
    save_grid(split, misclassified(report)[:64], folder / "misclassified.png")
    summary = {k: v for k, v in report.items() if k != "records"}
    summary["n_misclassified"] = len(misclassified(report))
    store.set_summary(run_id, summary)
    return summary


def evaluate_compute(store: RunStore | None, cfg: dict,
                     progress: Progress | None = None) -> tuple[dict, data.TensorData]:
    """The clean report of an evaluate job (under torchrun, each rank predicts its shard)."""
    model, meta = job_model(store, cfg)
    split = test_split(meta, cfg.get("split", "test"), cfg.get("n"), data_dir=cfg.get("data_dir"))
    predictor = distributed.sharded_predict(distributed.current())
    return clean_report(model, split, predictor=predictor), split


def load_report(run_id: str) -> dict:
    """The full evaluation report (with per-example records) of an evaluate run."""
    path = run_dir(run_id) / "evaluation.json"
    if not path.exists():
        raise InputError(f"run {run_id} has no evaluation report")
    return json.loads(path.read_text())


def save_grid(split: data.TensorData, records: list[dict], path: Path, cols: int = 8) -> None:
    """Write a PNG grid of the examples named by ``records`` (by their original index)."""
    from torchvision.utils import save_image

    if not records:
        return
    position = {int(i): k for k, i in enumerate(split.original_index())}
    idx = torch.tensor([position[r["index"]] for r in records])
    tmp = path.with_name(path.name + ".tmp.png")
    save_image(split.floats(idx), str(tmp), nrow=cols, padding=2, pad_value=1.0)
    tmp.replace(path)


def attack_task(store: RunStore, run_id: str, resume: bool, progress: bool) -> dict:
    """One attack on a sample of a model's test split: summary, records and example images."""
    cfg = store.get(run_id).config
    bar = _bar(progress, cfg.get("n") or 0, "attack")
    outcome, split, model = attack_compute(
        store, cfg, lambda done, total: _tick(store, run_id, bar, done, total))
    bar.close()
    warnings = sanity_warnings(model, split.floats(slice(0, 64)), split.labels[:64])
    folder = run_dir(run_id)
    pd.DataFrame(outcome.records()).to_csv(folder / "records.csv", index=False)
    checkpoint.save(folder / "examples.safetensors", outcome.examples,
                    {"attack": outcome.attack})
    summary = dict(outcome.summary(), n_test_source=split.source, model_run=cfg["model_run"])
    for w in warnings:
        store.add_warning(run_id, w)
    store.set_summary(run_id, summary)
    return summary


def attack_compute(store: RunStore | None, cfg: dict, progress: Progress | None = None
                   ) -> tuple[AttackOutcome, data.TensorData, nn.Module]:
    """Run an attack job's attack (under torchrun, each rank attacks its shard)."""
    attack = build_attack(cfg["attack"], **cfg.get("params", {}))
    model, meta = job_model(store, cfg)
    split = test_split(meta, "test", cfg.get("n"), cfg.get("seed", 0), cfg.get("data_dir"))
    runner = distributed.sharded_attack(distributed.current())
    outcome = runner(model, split, attack, cfg.get("batch_size", 250), keep_examples=64,
                     progress=progress)
    return outcome, split, model


def sweep_task(store: RunStore, run_id: str, resume: bool, progress: bool) -> dict:
    """Attacks over a grid of budgets: the tidy table, worst case per budget, CSV and Markdown."""
    cfg = store.get(run_id).config
    bar = _bar(progress, 0, "sweep")
    result, split = sweep_compute(
        store, cfg, lambda done, total: _tick(store, run_id, bar, done, total))
    bar.close()
    write_table(result, run_dir(run_id) / "sweep")
    for w in result["warnings"]:
        store.add_warning(run_id, w)
    summary = dict(result, n=len(split), source=split.source, model_run=cfg["model_run"])
    store.set_summary(run_id, summary)
    return summary


def sweep_compute(store: RunStore | None, cfg: dict, progress: Progress | None = None
                  ) -> tuple[dict, data.TensorData]:
    """Run a sweep job's attacks over its budgets (under torchrun, each rank takes a shard)."""
    attacks = [build_attack(a["name"], **a.get("params", {})) for a in cfg["attacks"]]
    model, meta = job_model(store, cfg)
    split = test_split(meta, "test", cfg.get("n"), cfg.get("seed", 0), cfg.get("data_dir"))
    runner = distributed.sharded_attack(distributed.current())
    result = sweep(model, split, attacks, cfg["budgets"], cfg.get("batch_size", 250),
                   progress=progress, runner=runner)
    return result, split


def follow(kind: str, cfg: dict) -> None:
    """A torchrun rank other than 0: compute this rank's shard of a job; rank 0 writes."""
    computes = {"evaluate": evaluate_compute, "attack": attack_compute,
                "sweep": sweep_compute}
    if kind not in computes:
        raise InputError(f"{kind} jobs do not run under torchrun; valid: {', '.join(computes)}")
    computes[kind](None, cfg)


def write_table(result: dict, stem: Path) -> pd.DataFrame:
    """Save a sweep's rows as ``stem``.csv and ``stem``.md; return them as a DataFrame."""
    frame = table_frame(result["rows"])
    frame.to_csv(stem.with_suffix(".csv"), index=False)
    stem.with_suffix(".md").write_text(frame.to_markdown(index=False, floatfmt=".4f"))
    return frame


def table_frame(rows: list[dict]) -> pd.DataFrame:
    """The seed-style attack table as a DataFrame (params left out)."""
    frame = pd.DataFrame([{k: v for k, v in r.items() if k != "params"} for r in rows])
    return frame


def grid_task(store: RunStore, run_id: str, resume: bool, progress: bool) -> dict:
    """One attack over a grid of budgets, each point saved as soon as it is done, with a few
    example images and their class probabilities (the dashboard's epsilon slider)."""
    from .attacks import with_budget

    cfg = store.get(run_id).config
    attack = build_attack(cfg["attack"], **cfg.get("params", {}))
    model, meta = model_for_run(store, cfg["model_run"])
    split = test_split(meta, "test", cfg.get("n"), cfg.get("seed", 0), cfg.get("data_dir"))
    budgets = cfg["budgets"] if attack.budget else [None]
    done = {}
    device = next(model.parameters()).device
    for k, budget in enumerate(budgets):
        concrete = with_budget(attack, budget) if budget is not None else attack
        outcome = run_attack(model, split, concrete, keep_examples=cfg.get("keep", 12))
        summary = {key: v for key, v in outcome.summary().items()
                   if key not in ("confusion_adv", "per_class_adv_acc")}
        with torch.no_grad():
            clean_prob = torch.softmax(model(outcome.examples["x"].to(device)).float(), 1).cpu()
            adv_prob = torch.softmax(model(outcome.examples["x_adv"].to(device)).float(),
                                     1).cpu()
        keep = len(outcome.examples["x"])
        tensors = dict(outcome.examples, clean_prob=clean_prob, adv_prob=adv_prob,
                       clean_pred=clean_prob.argmax(1), adv_pred=adv_prob.argmax(1),
                       labels=outcome.labels[:keep])
        checkpoint.save(run_dir(run_id) / f"grid-{k:03d}.safetensors", tensors,
                        {"summary": summary})
        done[str(k)] = summary["adv_acc"]
        store.log_metrics(run_id, [(k + 1, None, "progress", (k + 1) / len(budgets)),
                                   (k, None, "adv_acc", summary["adv_acc"])])
    result = {"adv_acc": done, "budgets": budgets, "n": len(split), "source": split.source,
              "classes": split.classes}
    store.set_summary(run_id, result)
    return result


def reproduce_task(store: RunStore, run_id: str, resume: bool, progress: bool) -> dict:
    """The whole seed study (see :mod:`core.reproduce`)."""
    from .reproduce import reproduce

    cfg = store.get(run_id).config
    return reproduce(store, run_id, quick=cfg.get("quick", False), data_dir=cfg.get("data_dir"),
                     progress=progress)


def _bar(enabled: bool, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled or not sys.stderr.isatty(), desc=desc,
                dynamic_ncols=True)


def _tick(store: RunStore, run_id: str, bar, done: int, total: int) -> None:
    bar.total, bar.n = total, done
    bar.refresh()
    store.log_metrics(run_id, [(done, None, "progress", done / max(total, 1))])
