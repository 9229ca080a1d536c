"""The adversarial examples the lab already found for a model's weights: every audit keeps
each example its cascade found (``adversarial.safetensors``: the image's index in its split
and the adversarial image, float32), and every curve keeps each image at its breaking point
(``curve_examples.safetensors``). A new curve of the same weights starts from them, so it is
never weaker than what the lab already knows."""
from __future__ import annotations

from pathlib import Path

import torch

from core import checkpoint
from core.data import TensorData
from core.jobs.store import RunStore
from core.paths import runs_root

FILE = "adversarial.safetensors"


def save(folder: Path, positions: torch.Tensor, x_adv: torch.Tensor, split: TensorData,
         found_by: str) -> None:
    """Keep the adversarial images ``x_adv`` of ``split``'s rows at ``positions``."""
    checkpoint.save(folder / FILE, {"index": split.original_index()[positions].long(),
                                    "x_adv": x_adv.float().contiguous()},
                    {"found_by": found_by, "split": split.split, "dataset": split.name})


def stored(store: RunStore, model_run: str, which: str, split: TensorData, norm: str
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """Every kept adversarial example of ``model_run``'s ``which`` weights on ``split``'s
    images: their rows in ``split``, the images, the radius of the ``norm`` ball each was
    projected into (an audit's in that norm; else infinity), and the runs they came from."""
    row_of = {int(i): k for k, i in enumerate(split.original_index().tolist())}
    rows, images, bounds, runs = [], [], [], []
    for run in store.list_runs():
        if run.status != "completed" or run.kind not in ("audit", "curve") or \
                run.config.get("model_run") != model_run or \
                run.config.get("which", "final") != which:
            continue
        got = _read(runs_root() / run.id, run.kind)
        if got is None:
            continue
        index, x_adv = got
        mine = [(k, row_of[int(i)]) for k, i in enumerate(index.tolist()) if int(i) in row_of]
        if not mine or x_adv.shape[1:] != split.images.shape[1:]:
            continue
        rows.append(torch.tensor([r for _, r in mine]))
        images.append(x_adv[torch.tensor([k for k, _ in mine])])
        ball = float(run.config["eps"]) if run.kind == "audit" and \
            run.config.get("norm") == norm else float("inf")
        bounds.append(torch.full((len(mine),), ball))
        runs.append(run.id)
    if not rows:
        return torch.empty(0, dtype=torch.long), torch.empty(0), torch.empty(0), []
    return torch.cat(rows), torch.cat(images), torch.cat(bounds), runs


def _read(folder: Path, kind: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """An audit's kept examples, or a curve's images at their breaking points (those it
    broke); None where the run kept none (runs of earlier versions)."""
    from safetensors.torch import load_file

    path = folder / (FILE if kind == "audit" else "curve_examples.safetensors")
    if not path.exists():
        return None
    tensors = load_file(str(path))
    if "index" not in tensors:
        return None
    if kind == "audit":
        return tensors["index"], tensors["x_adv"]
    broken = torch.isfinite(tensors["norm"]) & (tensors["norm"] > 0)
    return tensors["index"][broken], tensors["x_adv"][broken]


def audited_robust_share(store: RunStore, model_run: str, norm: str, eps: float,
                         which: str | None = None) -> float | None:
    """The lowest robust accuracy any completed audit of ``model_run`` found at ``eps`` in
    ``norm`` (None: none audited there): about the share of images a curve's check sees."""
    shares = [float(a.summary["robust_acc"]) for a in store.list_runs(
        kind="audit", model_run=model_run, status="completed")
        if a.config.get("norm") == norm and abs(float(a.config["eps"]) - eps) <= 1e-9 * eps
        and (which is None or a.config.get("which", "final") == which)
        and (a.summary or {}).get("robust_acc") is not None]
    return min(shares) if shares else None


def audited_budgets(store: RunStore, model_run: str, norm: str, which: str | None = None
                    ) -> list[float]:
    """The budgets of ``model_run``'s completed audits in ``norm`` (of its ``which`` weights,
    or any)."""
    return sorted({float(a.config["eps"]) for a in store.list_runs(
        kind="audit", model_run=model_run, status="completed")
        if a.config.get("norm") == norm and (which is None or
                                             a.config.get("which", "final") == which)})
