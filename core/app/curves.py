"""What the pages ask of robustness curves: the curve of a model and norm, launching one, the
numbers at any epsilon (no new job), the examples broken at or below it, and the check
against the fixed-budget figures stored for the same model, norm and images. Plain Python
(no streamlit), so pages stay thin."""
from __future__ import annotations

import functools
import math
from pathlib import Path

from core import checkpoint, confidence
from core.curve import RobustnessCurve
from core.jobs import runner
from core.jobs.specs import CurveSpec
from core.jobs.store import Run, RunStore
from core.paths import run_dir

EXAMPLES_FILE = "curve_examples.safetensors"


def find_curve(store: RunStore, model_run: str, norm: str, n: int | None = None,
               statuses: tuple[str, ...] = ("completed", "running", "queued")) -> Run | None:
    """The newest curve of ``model_run`` in ``norm`` (on ``n`` images if given)."""
    for run in store.list_runs(kind="curve", model_run=model_run):
        cfg = run.config
        if cfg.get("norm") == norm and (n is None or cfg.get("n") == n) and \
                cfg.get("which", "final") == "final" and run.status in statuses:
            return run
    return None


def launch_curve(store: RunStore, model_run: str, norm: str, n: int) -> str:
    """Start the curve job of a model (an identical one on its way or done is reused)."""
    found = find_curve(store, model_run, norm, n)
    if found is not None:
        return found.id
    return runner.submit(store, CurveSpec(model_run=model_run, norm=norm, n=n), parent=model_run)


_CURVES: dict[tuple, RobustnessCurve] = {}


def curve_of(run: Run) -> RobustnessCurve:
    """The curve a completed curve job measured: one object per finished job, so its band is
    computed once and every slider move reuses it."""
    key = (run.id, run.finished, len(run.summary["norms"]))
    if key not in _CURVES:
        if len(_CURVES) > 32:
            _CURVES.clear()
        s = run.summary
        _CURVES[key] = RobustnessCurve.of(s["norm"], [math.inf if v is None else v
                                                      for v in s["norms"]])
    return _CURVES[key]


def at(curve: RobustnessCurve, eps: float) -> dict:
    """Robust accuracy (with its interval), attack success rate and how many examples are
    broken at or below ``eps``."""
    correct = curve.robust(0.0)
    robust = curve.robust(eps)
    low, high = curve.interval(eps)
    return {"robust_acc": robust / curve.n, "low": low, "high": high, "n": curve.n,
            "clean_acc": curve.clean_accuracy(), "broken": correct - robust,
            "success_rate": (correct - robust) / correct if correct else 0.0}


def broken_examples(store: RunStore, job: Run, eps: float, limit: int = 8) -> list[dict]:
    """Up to ``limit`` examples broken at or below ``eps``, each at its own breaking point
    with the class the model gives it there: the largest smallest norms first (those ``eps``
    has just reached)."""
    path = run_dir(job.id) / EXAMPLES_FILE
    tensors, predicted = _breaking_points(store, job.config["model_run"],
                                          job.config.get("which", "final"), str(path),
                                          path.stat().st_mtime_ns)
    norms = tensors["norm"]
    chosen = ((norms > 0) & (norms <= eps)).nonzero().squeeze(1)
    chosen = chosen[norms[chosen].argsort(descending=True)][:limit]
    return [{"x": tensors["x"][k], "x_adv": tensors["x_adv"][k], "norm": float(norms[k]),
             "label": int(tensors["labels"][k]), "predicted": predicted[k],
             "position": int(k)} for k in chosen]


# A finished curve's files never change, and the slider asks for them at every move: read and
# classify them once (the modification time keys a rerun's new files).
@functools.lru_cache(maxsize=4)
def _breaking_points(store: RunStore, model_run: str, which: str, path: str,
                     mtime_ns: int) -> tuple[dict, list[int]]:
    import torch

    from core.app.runs import model_for_run

    tensors, _ = checkpoint.load(Path(path))
    if "adv_pred" in tensors:  # classified by the curve job
        return tensors, tensors["adv_pred"].tolist()
    model, _ = model_for_run(store, model_run, which, device="cpu")  # the weights it attacked
    with torch.no_grad():
        predicted = torch.cat([model(chunk).argmax(1) for chunk in tensors["x_adv"].split(500)])
    return tensors, predicted.tolist()


def curve_checks(store: RunStore, model_run: str, run: Run) -> list[dict]:
    """Every PGD grid, sweep and audit of the same model in the curve's norm whose images are
    among the curve's (a seeded sample of m images is part of the same seed's sample of n >=
    m), each beside the curve's accuracy on those images at that epsilon: the curve must not
    be weaker than a fixed-budget attack (it may be stronger)."""
    curve, cfg = curve_of(run), run.config
    total = _test_size(store.get(model_run))
    rows = []
    for figure in _figures(store, model_run, cfg["norm"]):
        if figure["seed"] != cfg.get("seed", 0) or figure["n"] > cfg["n"]:
            continue  # other images: no like-for-like check
        mine = shared_positions(total, cfg["n"], figure["n"], figure["seed"])
        acc = RobustnessCurve.of(curve.norm, [curve.norms[k] for k in mine]).accuracy(
            figure["eps"])
        gap = acc - figure["acc"]
        rows.append({"source": figure["what"], "eps": figure["eps"], "images": figure["n"],
                     "figure": confidence.text(figure["acc"], figure["n"]),
                     "curve": confidence.text(acc, figure["n"]), "gap_pp": gap * 100,
                     "verdict": _verdict(gap, figure["what"].startswith("audit"))})
    return sorted(rows, key=lambda r: (r["eps"], r["source"]))


def _verdict(gap: float, audit: bool) -> str:
    """How the curve compares with one fixed-budget figure (``gap``: curve minus figure)."""
    if audit:  # the audit's cascade is the reference: the gap is reported, not judged
        if abs(gap) <= 0.01 + 1e-9:
            return f"within 1 pp of the audit ({gap * 100:+.1f} pp)"
        return (f"the audit is lower by {gap * 100:.1f} pp" if gap > 0 else
                f"the curve is lower by {-gap * 100:.1f} pp")
    if gap > 0.01 + 1e-9:
        return "curve weaker than PGD: its attacks missed points"
    if abs(gap) <= 0.01 + 1e-9:
        return f"within 1 pp ({gap * 100:+.1f} pp)"
    return "curve stronger"


def shared_positions(total: int, n: int, m: int, seed: int) -> list[int]:
    """Where the images of the seeded sample of ``m`` test images sit in the same seed's
    sample of ``n`` (as :meth:`core.data.TensorData.subset` draws them)."""
    import torch

    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    if n >= total:
        return order[:m].sort()[0].tolist() if m < total else list(range(total))
    where = {idx: k for k, idx in enumerate(order[:n].sort()[0].tolist())}
    return [where[i] for i in (order[:m].sort()[0].tolist() if m < total else range(total))]


def _test_size(model: Run) -> int:
    return _split_size(model.config["dataset"], model.config.get("data_dir"))


@functools.lru_cache(maxsize=8)
def _split_size(dataset: str, data_dir: str | None) -> int:
    from core import data

    return len(data.load(dataset, "test", data_dir))


def _figures(store: RunStore, model_run: str, norm: str) -> list[dict]:
    """Fixed-budget robust accuracies of the model's final weights in ``norm``, any epsilon."""
    out = []
    for run in store.list_runs(model_run=model_run, status="completed"):
        cfg, s = run.config, run.summary or {}
        if cfg.get("which", "final") != "final":
            continue
        seed = cfg.get("seed", 0)
        if run.kind == "audit" and cfg.get("norm") == norm:
            out.append({"what": f"audit ({s.get('version')}) {run.id[-9:]}", "eps": cfg["eps"],
                        "acc": s["robust_acc"], "n": s["n"], "seed": seed})
        elif run.kind == "grid" and cfg.get("attack") == "pgd" and \
                cfg.get("params", {}).get("norm", "linf") == norm and s.get("kind") == "adversarial":
            steps = cfg["params"].get("steps")
            out += [{"what": f"PGD-{steps} grid {run.id[-9:]}", "eps": s["budgets"][int(k)],
                     "acc": acc, "n": s["n"], "seed": seed}
                    for k, acc in s.get("adv_acc", {}).items() if s["budgets"][int(k)]]
        elif run.kind == "sweep":
            out += [{"what": f"PGD-{(r.get('params') or {}).get('steps')} sweep {run.id[-9:]}",
                     "eps": r["eps"], "acc": r["adv_acc"], "n": r["n"], "seed": seed}
                    for r in s.get("rows", []) if r.get("attack") == "pgd"
                    and r.get("norm") == norm and r.get("eps")]
    return out
