"""One answer per question: every stored robust accuracy of one model at one threat model,
the strongest first (the audit where one exists), each with its source, its size and a
one-line reason why it differs from the first. Plain Python (no streamlit), so pages stay
thin; the figures are those the audit's tenth indicator checks (:mod:`core.jobs.claims`)."""
from __future__ import annotations

import math

from core import confidence
from core.comparison import compare
from core.jobs.claims import audit_file_reference, stored_figures
from core.jobs.store import Run, RunStore
from core.paths import run_dir
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
    """Rows (``source``, ``run``, ``attack``, ``eps``, ``acc``, ``n``, ``figure``, ``why``,
    ``overstates``) for every robust accuracy stored for this model and threat model: the
    audit first, then the other figures from the lowest (the strongest attack) up, each judged
    against the audit by the one rule (:func:`core.comparison.compare`: paired on shared
    images, by intervals across others)."""
    audit = latest_audit(store, model_run, threat, which)
    rows, reference = [], None
    if audit is not None:
        s = audit.summary
        rows.append({"source": f"audit {audit.id} ({s['version']} cascade)", "run": audit.id,
                     "attack": "audit", "eps": threat.eps, "acc": s["robust_acc"],
                     "n": s["n"], "overstates": False, "why": AUDIT_WHY})
        reference = _reference(audit)
    figures = sorted(stored_figures(store, model_run, which, threat), key=lambda f: f["acc"])
    for f in figures:
        rows.append({"source": f["what"], "run": f["run"], "attack": f["attack"],
                     "eps": f["eps"], "acc": f["acc"], "n": f["n"],
                     **_compared(f, reference, rows[0] if rows else None)})
    for row in rows:
        row["figure"] = confidence.text(row["acc"], row["n"])
    return rows


def _reference(audit: Run) -> dict:
    """The audit's figure with its per-image outcomes where its audit.json is on disk."""
    path = run_dir(audit.id) / "audit.json"
    if path.exists():
        ref = dict(audit_file_reference(path))
    else:
        ref = {"acc": audit.summary["robust_acc"], "n": audit.summary["n"]}
    ref["seed"] = audit.config.get("seed", 0)
    return ref


def _compared(figure: dict, audit: dict | None, first: dict | None) -> dict:
    """Why ``figure`` differs from the audit (or, with none, from the lowest figure)."""
    if audit is None:
        lowest = first is None
        return {"overstates": False, "why": (
            "the lowest figure stored: no audit of this threat model yet (run one on the "
            "Robustness page for the strongest answer)" if lowest else
            "no audit of this threat model yet, so nothing was checked: an audit would say "
            "whether this figure holds")}
    judged = compare(figure, audit)
    return {"overstates": judged["overstates"], "why": judged["sentence"],
            "status": judged["status"]}
