"""The lab's own robustness figures for one model at one threat model, gathered from the run
store in one record each: attack runs, sweeps, the Attack page's grids, robustness curves and
the overfitting guard's held-out figure. A record names its source run (``what``, ``run``),
the attack and its steps, the norm and epsilon, which weights, ``acc`` and ``n``, the seed, the
``images`` it was measured on (``test`` or ``held-out training``) and, where the run keeps
them, the image ``positions`` and whether each was ``robust``. The audit's tenth indicator,
the answers, Compare and the curve's checks all read these records and judge them with
:func:`core.comparison.compare`."""
from __future__ import annotations

import json
import math

from core.jobs.store import Run, RunStore
from core.paths import runs_root
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
        rows = [dict(summary, params=run.config.get("params", {}),
                     attack=run.config.get("attack", summary.get("attack")))]
    elif run.kind == "sweep":
        rows = summary.get("rows", [])
    else:  # a grid: one accuracy per budget, all of the same attack and parameters
        params = run.config.get("params", {})
        rows = [{"attack": run.config.get("attack"), "norm": params.get("norm", "linf"),
                 "eps": summary["budgets"][int(k)], "adv_acc": acc, "n": summary["n"],
                 "params": params} for k, acc in summary.get("adv_acc", {}).items()
                if summary.get("kind") == "adversarial"]
    label = {"attack": "attack run", "sweep": "sweep", "grid": "Attack page grid"}[run.kind]
    out = []
    for r in rows:
        if r.get("norm") != threat.norm or not _same_eps(r.get("eps"), threat.eps) or \
                r.get("adv_acc") is None:
            continue
        record = _record(run, f"{label} {run.id}: {r['attack']}{_steps(r.get('params'))}",
                         r["attack"], (r.get("params") or {}).get("steps"), threat,
                         float(r["adv_acc"]), int(r["n"]))
        if run.kind == "attack":
            record.update(_attack_outcomes(run))
        out.append(record)
    return out


def _record(run: Run, what: str, attack: str, steps, threat: ThreatModel, acc: float,
            n: int, images: str = "test") -> dict:
    return {"what": what, "run": run.id, "attack": attack, "steps": steps,
            "norm": threat.norm, "eps": threat.eps, "which": run.config.get("which", "final"),
            "acc": acc, "n": n, "seed": run.config.get("seed", 0), "images": images,
            "positions": None, "robust": None}


def _attack_outcomes(run: Run) -> dict:
    """An attack run's per-image outcomes from its records.csv (robust: correct before and
    after the attack)."""
    import csv

    path = runs_root() / run.id / "records.csv"
    if not path.exists():
        return {}

    def read() -> dict:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        return {"positions": [int(r["index"]) for r in rows],
                "robust": [r["true"] == r["clean_pred"] == r["adv_pred"] for r in rows]}

    return _cached(path, read)


_FILES: dict[tuple, object] = {}


def _cached(path, read):
    """A finished run's file read once per version (pages gather figures on every redraw)."""
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _FILES:
        if len(_FILES) > 256:
            _FILES.clear()
        _FILES[key] = read()
    return _FILES[key]


def _from_curve(run: Run, threat: ThreatModel) -> list[dict]:
    from core.curve import RobustnessCurve

    s = run.summary
    if s.get("norm") != threat.norm or "norms" not in s:
        return []
    curve = RobustnessCurve.of(s["norm"], [math.inf if v is None else v for v in s["norms"]])
    record = _record(run, f"robustness curve {run.id}: {', '.join(s.get('attacks', []))}",
                     "curve", s.get("steps"), threat, curve.accuracy(threat.eps), curve.n)
    path = runs_root() / run.id / "curve.json"
    if path.exists():
        rows = _cached(path, lambda: json.loads(path.read_text())["examples"])
        record.update(positions=[r["index"] for r in rows],
                      robust=[bool(r["correct"]) and (r["smallest_norm"] is None or
                                                      r["smallest_norm"] > threat.eps)
                              for r in rows])
    return [record]


def _from_guard(run: Run, which: str, threat: ThreatModel) -> list[dict]:
    figure = run.summary.get("best" if which == "best" else "final") or {}
    n = int(run.summary.get("n_held_out") or 0)
    if threat.norm != "linf" or not n or not _same_eps(figure.get("robust_eps"), threat.eps) \
            or figure.get("robust_acc") is None:
        return []
    steps = int(run.config.get("robust_eval", {}).get("steps", 10))
    return [dict(_record(run, f"the overfitting guard's held-out figure ({steps} steps, "
                         f"{which} weights)", "apgd-ce", steps, threat,
                         float(figure["robust_acc"]), n, images="held-out training"),
                 which=which)]


def audit_file_reference(path) -> dict:
    """:func:`audit_reference` of an audit.json, read once per version of the file."""
    return _cached(path, lambda: audit_reference(json.loads(path.read_text())))


def audit_reference(report: dict) -> dict:
    """An audit's figure with its per-image outcomes (from audit.json), for comparisons."""
    return {"acc": report["robust_acc"], "n": report["n"], "seed": report.get("seed"),
            "positions": [e["index"] for e in report["examples"]],
            "robust": [bool(e["robust"]) for e in report["examples"]]}
