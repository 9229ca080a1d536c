"""One answer per question: every stored robust accuracy of one model at one threat model,
the strongest first (the audit where one exists), each with its source, its size and a
one-line reason why it differs from the first. Plain Python (no streamlit), so pages stay
thin; the figures are those the audit's tenth indicator checks (:mod:`core.jobs.claims`)."""
from __future__ import annotations

import math

from core import confidence
from core.jobs.claims import stored_figures
from core.jobs.store import Run, RunStore
from core.threat import ThreatModel

AUDIT_WHY = ("the strongest: AutoAttack's cascade, where an image counts as broken when any "
             "of its attacks breaks it")


def latest_audit(store: RunStore, model_run: str, threat: ThreatModel,
                 which: str = "final") -> Run | None:
    """The newest completed audit of ``model_run``'s ``which`` weights at ``threat``."""
    for run in store.list_runs(kind="audit", model_run=model_run, status="completed"):
        cfg = run.config
        if cfg.get("which", "final") == which and cfg.get("norm") == threat.norm and \
                math.isclose(float(cfg.get("eps", -1)), threat.eps, rel_tol=1e-9):
            return run
    return None


def answers(store: RunStore, model_run: str, threat: ThreatModel,
            which: str = "final") -> list[dict]:
    """Rows (``source``, ``run``, ``acc``, ``n``, ``figure``, ``why``, ``overstates``) for every robust
    accuracy stored for this model and threat model: the audit first, then the other figures
    from the lowest (the strongest attack) up."""
    audit = latest_audit(store, model_run, threat, which)
    rows = []
    if audit is not None:
        s = audit.summary
        rows.append({"source": f"audit {audit.id} ({s['version']} cascade)", "run": audit.id,
                     "acc": s["robust_acc"], "n": s["n"], "overstates": False,
                     "why": AUDIT_WHY})
    figures = sorted(stored_figures(store, model_run, which, threat), key=lambda f: f["acc"])
    for f in figures:
        rows.append({"source": f["what"], "run": f["run"], "acc": f["acc"], "n": f["n"],
                     **_compared(f, rows[0] if rows else None, audit is not None)})
    for row in rows:
        row["figure"] = confidence.text(row["acc"], row["n"])
    return rows


def _compared(figure: dict, first: dict | None, audited: bool) -> dict:
    """Why ``figure`` differs from the first row, and whether it overstates the audit."""
    if first is None:
        return {"overstates": False, "why": "the lowest figure stored: no audit of this threat "
                "model yet (run one on the Robustness page for the strongest answer)"}
    over = audited and confidence.overstates(figure["acc"], figure["n"], first["acc"],
                                             first["n"])
    if over:
        why = (f"overstates the audit by {(figure['acc'] - first['acc']) * 100:.1f} pp beyond "
               "both 95% intervals: a single attack misses examples the cascade finds "
               "(the audit's own-numbers indicator); believe the audit")
    elif figure["n"] != first["n"]:
        why = (f"inside the intervals: {figure['n']:,} images against {first['n']:,}, so "
               "chance alone moves it; the attack may also be weaker")
    else:
        why = "inside the intervals of the first: the difference may be chance"
    return {"overstates": over, "why": why}
