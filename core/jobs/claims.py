"""The lab's own robustness figures for one model at one threat model, gathered from the run
store: attack runs, sweeps, the Attack page's grids, robustness curves and the overfitting
guard's held-out figure.
The audit's tenth indicator checks each of them against the audit's number."""
from __future__ import annotations

import math

from core.jobs.store import Run, RunStore
from core.threat import ThreatModel


def _same_eps(a: float | None, b: float) -> bool:
    return a is not None and math.isclose(float(a), b, rel_tol=1e-9, abs_tol=1e-12)


def _steps(params: dict | None) -> str:
    steps = (params or {}).get("steps")
    return f", {steps} steps" if steps else ""


def _mine(run: Run, model_run: str, which: str) -> bool:
    return run.status == "completed" and run.summary is not None and \
        run.config.get("model_run") == model_run and run.config.get("which", "final") == which


def stored_figures(store: RunStore, model_run: str, which: str, threat: ThreatModel
                   ) -> list[dict]:
    """Every stored robust accuracy of ``model_run``'s ``which`` weights at ``threat``: dicts
    with ``what`` (where it came from), ``run``, ``acc`` and ``n``."""
    out: list[dict] = []
    for run in store.list_runs():
        if run.kind in ("attack", "sweep", "grid") and _mine(run, model_run, which):
            out += _from_run(run, threat)
        elif run.kind == "curve" and _mine(run, model_run, which):
            out += _from_curve(run, threat)
        elif run.kind == "train" and run.id == model_run and run.summary:
            out += _from_guard(run, which, threat)
    return out


def _from_run(run: Run, threat: ThreatModel) -> list[dict]:
    summary = run.summary
    if run.kind == "attack":
        rows = [summary]
    elif run.kind == "sweep":
        rows = summary.get("rows", [])
    else:  # a grid: one accuracy per budget, all of the same attack and parameters
        params = run.config.get("params", {})
        rows = [{"attack": run.config.get("attack"), "norm": params.get("norm", "linf"),
                 "eps": summary["budgets"][int(k)], "adv_acc": acc, "n": summary["n"],
                 "params": params} for k, acc in summary.get("adv_acc", {}).items()
                if summary.get("kind") == "adversarial"]
    label = {"attack": "attack run", "sweep": "sweep", "grid": "Attack page grid"}[run.kind]
    return [{"what": f"{label} {run.id}: {r['attack']}{_steps(r.get('params'))}",
             "run": run.id, "acc": float(r["adv_acc"]), "n": int(r["n"])}
            for r in rows if r.get("norm") == threat.norm and _same_eps(r.get("eps"), threat.eps)
            and r.get("adv_acc") is not None]


def _from_curve(run: Run, threat: ThreatModel) -> list[dict]:
    from core.curve import RobustnessCurve

    s = run.summary
    if s.get("norm") != threat.norm or "norms" not in s:
        return []
    curve = RobustnessCurve.of(s["norm"], [math.inf if v is None else v for v in s["norms"]])
    return [{"what": f"robustness curve {run.id}: {', '.join(s.get('attacks', []))}",
             "run": run.id, "acc": curve.accuracy(threat.eps), "n": curve.n}]


def _from_guard(run: Run, which: str, threat: ThreatModel) -> list[dict]:
    figure = run.summary.get("best" if which == "best" else "final") or {}
    n = int(run.summary.get("n_held_out") or 0)
    if threat.norm != "linf" or not n or not _same_eps(figure.get("robust_eps"), threat.eps) \
            or figure.get("robust_acc") is None:
        return []
    steps = int(run.config.get("robust_eval", {}).get("steps", 10))
    return [{"what": f"the overfitting guard's held-out figure ({steps} steps, {which} "
                     "weights)", "run": run.id, "acc": float(figure["robust_acc"]), "n": n}]
