"""What the Compare page asks: the chosen runs' accuracies side by side, each with its source,
and their per-epoch curves. Plain Python (no streamlit), so pages stay thin."""
from __future__ import annotations

import pandas as pd

from core.confidence import interval_text
from core.jobs.store import Run, RunStore
from core.progress import fmt_duration


def compare_rows(store: RunStore, runs: list[Run]) -> pd.DataFrame:
    """One row per run: clean accuracy, the guard's held-out robust accuracy, the latest sweep's
    PGD rows (each column names its source and size), the latest audit, and training time."""
    rows = []
    for r in runs:
        final = (r.summary or {}).get("final") or {}
        rows.append({"run": r.name or r.id, "defense": r.config.get("defense"),
                     "clean acc": final.get("test_acc"),
                     "held-out robust acc (guard)": final.get("robust_acc"),
                     **_pgd_columns(store, r.id), **_audit_columns(store, r.id),
                     "training time": fmt_duration(r.duration),
                     "test images": (r.summary or {}).get("n_test")})
    return pd.DataFrame(rows)


def _pgd_columns(store: RunStore, run_id: str) -> dict:
    sweeps = store.list_runs(kind="sweep", model_run=run_id, status="completed")
    if not sweeps:
        return {}
    s = sweeps[0].summary
    return {f"PGD {row['norm']} {row['budget']:g} (sweep, {s['n']} imgs)": row["adv_acc"]
            for row in s.get("rows", []) if row["attack"] == "pgd"}


def _audit_columns(store: RunStore, run_id: str) -> dict:
    audits = store.list_runs(kind="audit", model_run=run_id, status="completed")
    audit = audits[0].summary if audits else {}
    return {"audited robust acc": audit.get("robust_acc"),
            "audit 95% interval": interval_text(audit.get("robust_acc"), audit.get("n")),
            "audit": (f"{audit['version']} at {audit['threat_label']} on {audit['n']} "
                      f"imgs: {audit['verdict']}") if audit else None}


def epoch_curves(store: RunStore, runs: list[Run], metric: str) -> dict[str, list]:
    """``metric`` per epoch of each run, keyed by the run's name, in the runs' order (so each
    run keeps its colour across the page's charts)."""
    return {r.name or r.id[-9:]: [(m["epoch"] + 1, m["value"]) for m in
                                  store.metrics(r.id, [metric])] for r in runs}
