"""What the Compare page asks: the chosen runs' accuracies side by side, each with its source,
and their per-epoch curves. Plain Python (no streamlit), so pages stay thin."""
from __future__ import annotations

import pandas as pd

import math

from core import confidence
from core.confidence import interval_text
from core.app.answers import answers
from core.app.curves import curve_of, find_curve
from core.app.runs import clean_figure, defense_of
from core.jobs.store import Run, RunStore
from core.progress import fmt_duration
from core.threat import ThreatModel


def compare_rows(store: RunStore, runs: list[Run]) -> pd.DataFrame:
    """One row per run: clean accuracy, the guard's held-out robust accuracy, the latest sweep's
    PGD rows (each column names its source and size), the latest audit, and training time."""
    rows = []
    for r in runs:
        final = (r.summary or {}).get("final") or {}
        clean, n_clean = clean_figure(r)
        held = int((r.summary or {}).get("n_held_out") or 0)
        rows.append({"run": r.name or r.id, "defense": defense_of(r),
                     "clean acc": _rounded(clean),
                     "clean 95% interval": interval_text(clean, n_clean),
                     "held-out robust acc (guard)": _rounded(final.get("robust_acc")),
                     "guard 95% interval": interval_text(final.get("robust_acc"), held),
                     "guard held-out training images": held or None,
                     **_pgd_columns(store, r.id), **_audit_columns(store, r.id),
                     "training time": fmt_duration(r.duration),
                     "test images": n_clean})
    return pd.DataFrame(rows)


def _pgd_columns(store: RunStore, run_id: str) -> dict:
    sweeps = store.list_runs(kind="sweep", model_run=run_id, status="completed")
    if not sweeps:
        return {}
    s = sweeps[0].summary
    out = {}
    for row in s.get("rows", []):
        if row["attack"] == "pgd":
            name = f"PGD {row['norm']} {row['budget']:g} (sweep, {s['n']} imgs)"
            out[name] = _rounded(row["adv_acc"])
            out[f"{name} 95% interval"] = interval_text(row["adv_acc"], s["n"])
    return out


def _rounded(value: float | None) -> float | None:
    """A share as the CSV shows it: 4 decimals, not float32's digits."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) \
        else round(float(value), 4)


def _audit_columns(store: RunStore, run_id: str) -> dict:
    audits = store.list_runs(kind="audit", model_run=run_id, status="completed")
    audit = audits[0].summary if audits else {}
    return {"audited robust acc": _rounded(audit.get("robust_acc")),
            "audit 95% interval": interval_text(audit.get("robust_acc"), audit.get("n")),
            "audit": (f"{audit['version']} at {audit['threat_label']} on {audit['n']} "
                      f"imgs: {audit['verdict']}") if audit else None}


def run_name(run: Run) -> str:
    """A run's short name on the Compare page: its table column and its colour's legend."""
    return run.name or run.id[-9:]


def compare_display(store: RunStore, runs: list[Run]) -> pd.DataFrame:
    """The runs side by side for reading, one column per run (so many figures still fit the
    page): the audit first, the lab's other robust figures each with its source and size,
    marked where the audit contradicts them, then clean accuracy and cost."""
    columns = {run_name(r): _display_column(store, r) for r in runs}
    order: list[str] = []
    for column in columns.values():
        order += [k for k in column if k not in order]
    first = ["defense", "audited robust accuracy (95% interval)", "audit", "clean accuracy"]
    last = ["training time", "test images"]
    order = [k for k in first if k in order] + sorted(
        k for k in order if k not in first and k not in last) + [k for k in last if k in order]
    frame = pd.DataFrame({name: [col.get(k, "—") for k in order]
                          for name, col in columns.items()}, index=order)
    frame.index.name = "figure"
    return frame


def _display_column(store: RunStore, run: Run) -> dict[str, str]:
    clean, n_clean = clean_figure(run)
    column = {"defense": defense_of(run)}
    audits = store.list_runs(kind="audit", model_run=run.id, status="completed")
    flagged: set[str] = set()
    if audits:
        a = audits[0].summary
        column["audited robust accuracy (95% interval)"] = \
            f"{confidence.text(a['robust_acc'], a['n'])} at {a['threat_label']}"
        column["audit"] = f"{a['version']} cascade on {a['n']:,} images: {a['verdict']}"
        threat = ThreatModel(audits[0].config["norm"], float(audits[0].config["eps"]))
        # keyed by the figure (its run, attack and budget), not the run: one FGSM row of a
        # sweep must not mark its PGD rows
        flagged = {_figure_key(row["run"], row["attack"], row["eps"])
                   for row in answers(store, run.id, threat) if row["overstates"]}
    if clean is not None:
        column["clean accuracy"] = confidence.text(clean, n_clean or 0)
    for key, (acc, n, source) in _robust_figures(store, run).items():
        text = f"{confidence.text(acc, n)} on {n:,} images"
        column[key] = text + (" ⚠ the audit contradicts it" if source in flagged else "")
    for norm, label in (("linf", "L∞"), ("l2", "L2")):
        curve = find_curve(store, run.id, norm, statuses=("completed",))
        if curve is not None:
            c = curve_of(curve)
            median = c.median()
            column[f"median smallest {label} norm (robustness curve)"] = (
                "above every norm found" if math.isinf(median) else f"{median:.4f}") + \
                f" on {c.n:,} images"
    column["training time"] = "imported" if run.kind == "import" else fmt_duration(run.duration)
    column["test images"] = f"{n_clean or 0:,}"
    return column


def _robust_figures(store: RunStore, run: Run) -> dict[str, tuple[float, int, str]]:
    """The latest sweep's PGD figures and the guard's, keyed by what and where they are."""
    out = {}
    sweeps = store.list_runs(kind="sweep", model_run=run.id, status="completed")
    if sweeps:
        s = sweeps[0]
        for row in s.summary.get("rows", []):
            if row["attack"] == "pgd" and row.get("adv_acc") is not None:
                steps = (row.get("params") or {}).get("steps")
                norm = {"linf": "L∞", "l2": "L2"}.get(row["norm"], row["norm"])
                out[f"PGD{f'-{steps}' if steps else ''} at {norm} ε {row['budget']:g} (sweep)"] = \
                    (row["adv_acc"], int(row["n"]), _figure_key(s.id, "pgd", row["budget"]))
    final = (run.summary or {}).get("final") or {}
    n = int((run.summary or {}).get("n_held_out") or 0)
    if final.get("robust_acc") is not None and n and not math.isnan(final["robust_acc"]):
        out[f"held-out robust accuracy (guard, ε {final.get('robust_eps', 0):g})"] = \
            (final["robust_acc"], n, _figure_key(run.id, "apgd-ce", final.get("robust_eps")))
    return out


def _figure_key(run_id: str, attack: str | None, eps) -> tuple:
    """What identifies one stored figure: its run, attack and budget."""
    return run_id, attack, round(float(eps), 9) if eps is not None else None


def epoch_curves(store: RunStore, runs: list[Run], metric: str) -> dict[str, list]:
    """``metric`` per epoch of each run, keyed by the run's name, in the runs' order (so each
    run keeps its colour across the page's charts)."""
    return {run_name(r): [(m["epoch"] + 1, m["value"]) for m in
                                  store.metrics(r.id, [metric])] for r in runs}
