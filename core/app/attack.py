"""What the Attack page asks: the epsilon grid's job and points, the examples to show, and
single-image attacks on an upload.
Plain Python (no streamlit), so pages stay thin."""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from core import checkpoint
from core.confidence import success_interval_text
from core.jobs import runner
from core.attacks import build_attack
from core.paths import grid_point_path
from core.jobs.specs import DEFAULT_GRID, GRID_SLIDER_START, GridSpec
from core.jobs.store import Run, RunStore
from core.app.runs import find_same


def grid_spec(model_run: str, attack: str, params: dict, n: int,
              budgets: list[float] | None = None) -> GridSpec:
    """The attack-grid job of these settings (checked; raises InputError when one is bad)."""
    budgets = list(budgets or DEFAULT_GRID)
    return GridSpec(model_run=model_run, attack=attack, params=params, n=n, budgets=budgets,
                    first=GRID_SLIDER_START if GRID_SLIDER_START < len(budgets) else None)


def existing_grid(store: RunStore, spec: GridSpec) -> Run | None:
    """A queued, running or completed grid of exactly ``spec``; None when there is none."""
    return find_same(store, spec)


def stopped_grid(store: RunStore, spec: GridSpec) -> Run | None:
    """The latest cancelled or failed grid of exactly ``spec`` (its finished points are on
    disk, so it resumes), when no live or completed one exists."""
    config = spec.to_dict()
    for run in store.list_runs(kind="grid", parent=spec.model_run):
        if run.config == config and run.status in ("cancelled", "failed"):
            return run
    return None


def launch_grid(store: RunStore, spec: GridSpec) -> Run:
    """The grid of ``spec``: a matching one, a stopped one resumed (its points kept), else a
    new job in a worker."""
    found = existing_grid(store, spec)
    if found is not None:
        return found
    stopped = stopped_grid(store, spec)
    if stopped is not None:
        from core.app.runs import resume

        resume(store, stopped.id)
        return store.get(stopped.id)
    return store.get(runner.submit(store, spec, parent=spec.model_run))



def grid_point_done(run_id: str, index: int) -> bool:
    """Whether grid point ``index`` has been computed (without reading it)."""
    return checkpoint.is_complete(grid_point_path(run_id, index))


def grid_summaries(run_id: str, count: int) -> list[dict | None]:
    """Each grid point's numbers (clean and attacked accuracy, success rate, median L2 of the
    flips), None where not yet computed; from the sidecars alone, so it is cheap to poll."""
    keys = ("clean_acc", "adv_acc", "adv_acc_ci", "n", "success_rate", "l2_median")
    out = []
    for k in range(count):
        meta = checkpoint.read_sidecar(grid_point_path(run_id, k))
        row = None if meta is None else {key: meta["summary"].get(key) for key in keys}
        if row is not None and row["n"] and row["clean_acc"] is not None:
            row["success_note"] = success_interval_text(row["success_rate"], row["clean_acc"],
                                                        row["n"])
        out.append(row)
    return out


def grid_result(run_id: str, index: int) -> dict | None:
    """Result of grid point ``index`` (accuracy, examples) if it has been computed."""
    if not grid_point_done(run_id, index):
        return None
    tensors, meta = checkpoint.load(grid_point_path(run_id, index))
    keep = len(tensors["x"])
    return dict(meta["summary"], x=tensors["x"], x_adv=tensors["x_adv"],
                clean_pred=tensors["clean_pred"], adv_pred=tensors["adv_pred"],
                clean_prob=tensors["clean_prob"], adv_prob=tensors["adv_prob"],
                labels=tensors["labels"],
                # grids saved before the index was kept hold the sample's first images
                index=tensors.get("index", torch.arange(keep)))


def example_choice(results: list[dict], show: str, picked: int | None = None,
                   limit: int = 6) -> list[int]:
    """Which kept examples to show, the same for every model: ``flipped`` (the attack turned a
    correct prediction wrong on any of the models), ``all`` (in sample order) or ``pick``."""
    if show == "pick":
        return [] if picked is None else [picked]
    keep = min(len(r["x"]) for r in results)
    if show == "all":
        return list(range(min(limit, keep)))
    flipped = torch.zeros(keep, dtype=torch.bool)
    for r in results:
        labels = r["labels"][:keep]
        flipped |= (r["clean_pred"][:keep] == labels) & (r["adv_pred"][:keep] != labels)
    return flipped.nonzero().squeeze(1)[:limit].tolist()


def attack_single(model: torch.nn.Module, x: torch.Tensor, attack: str, params: dict,
                  label: int | None = None) -> dict:
    """Attack one image (true label: the given one, else the model's prediction)."""
    with torch.no_grad():
        clean = F.softmax(model(x), 1)[0]
    y = torch.tensor([int(clean.argmax()) if label is None else label])
    adv = build_attack(attack, **params)(model, x, y)
    with torch.no_grad():
        probs = F.softmax(model(adv), 1)[0]
    return {"x": x[0], "x_adv": adv[0], "clean_prob": clean, "adv_prob": probs, "label": int(y)}


def attack_summary(name: str, at_least: int = 120) -> str:
    """What an attack is, in whole sentences from its docstring (its paper first), without
    code markup: the docstring's first line alone stops mid-sentence."""
    from core.attacks import ATTACKS

    text = " ".join((ATTACKS[name].__doc__ or "").split("\n\n")[0].split()).replace("``", "")
    out = ""
    for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
        out = f"{out} {sentence}".strip()
        if len(out) >= at_least:
            break
    return out
