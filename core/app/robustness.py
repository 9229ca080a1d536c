"""What the Robustness page asks: sweeps and their curves, audits and their views.
Plain Python (no streamlit), so pages stay thin."""
from __future__ import annotations

import json

import pandas as pd
import torch

from core import checkpoint
from core.confidence import success_text, text as confidence_text
from core.jobs import runner
from core.paths import run_dir
from core.jobs.specs import AuditSpec, SweepSpec
from core.jobs.store import Run, RunStore
from core.app.images import to_display
from core.app.runs import find_same, run_label


def launch_sweep(store: RunStore, model_run: str, attacks: list[str], budgets: list[float],
                 n: int, pgd_steps: int | None = None) -> str:
    """Start a sweep job (the attacks' own defaults, one strength everywhere); an identical
    sweep of the model that is queued, running or done is reused, not started twice."""
    specs = [{"name": a, "params": {"steps": pgd_steps} if a == "pgd" and pgd_steps else {}}
             for a in attacks]
    spec = SweepSpec(model_run=model_run, attacks=specs, budgets=budgets, n=n)
    existing = find_same(store, spec)
    return existing.id if existing else runner.submit(store, spec, parent=model_run)


def sweep_curves(store: RunStore, sweep_ids: list[str]) -> tuple[dict, pd.DataFrame]:
    """Curves (label -> [(budget, acc)]) and the combined table of completed sweeps."""
    series, frames = {}, []
    for sid in sweep_ids:
        run = store.get(sid)
        summary = run.summary or {}
        model = store.get(run.config["model_run"])
        label = model.name or run_label(model).split(" · ")[0] + " " + model.id[-4:]
        rows = summary.get("rows", [])
        for r in rows:
            if r["budget"] is not None:
                axis = "sigma" if r.get("kind") == "corruption" else r.get("norm", "")
                series.setdefault(f"{label} · {r['attack']} ({axis})", []).append(
                    (r["budget"], r["adv_acc"]))
        if rows:
            frame = pd.DataFrame([{**{k: v for k, v in r.items() if k != "params"},
                                   "steps": (r.get("params") or {}).get("steps")} for r in rows])
            frame.insert(0, "model", label)
            frames.append(frame)
    return series, (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame())


def sweep_display(table: pd.DataFrame) -> pd.DataFrame:
    """The sweeps' rows for reading: human column names, the threat model in one column, robust
    accuracy with its 95% interval, percentages and sizes as text."""
    def pct(v) -> str:
        return "—" if v is None or v != v else f"{v:.1%}"

    def with_interval(v, n) -> str:
        return "—" if v is None or v != v else confidence_text(v, int(n))

    def size(v) -> str:
        return "—" if v is None or v != v else f"{v:.3f}"

    rows = []
    for r in table.to_dict("records"):
        corruption = r.get("kind") == "corruption"
        norm = {"linf": "L∞", "l2": "L2"}.get(r.get("norm"), r.get("norm") or "")
        steps = r.get("steps")
        rows.append({
            "model": r["model"],
            "attack": r["attack"] + (f", {int(steps)} steps" if steps == steps and steps else ""),
            "budget": f"σ {r['budget']:g}" if corruption else f"{norm} ε {r['budget']:g}",
            "images": int(r["n"]), "clean accuracy (95% interval)": with_interval(
                r["clean_acc"], r["n"]),
            "robust accuracy (95% interval)": (
                f"{pct(r['adv_acc'])} ({r['adv_acc_low'] * 100:.1f}-{r['adv_acc_high'] * 100:.1f})"
                if r.get("adv_acc_low") == r.get("adv_acc_low") and r.get("adv_acc_low")
                is not None else pct(r["adv_acc"])),
            "success rate (95% interval)": success_text(r["success_rate"], r["clean_acc"],
                                                        int(r["n"])),
            "median L2 of flips": size(r.get("l2_median")),
            "median L∞ of flips": size(r.get("linf_median"))})
    return pd.DataFrame(rows)


STAGE_NAMES = {"clean": "clean", "apgd-ce": "APGD-CE", "apgd-t": "APGD-T", "fab-t": "FAB-T",
               "square": "Square"}


def launch_audit(store: RunStore, model_run: str, norm: str, eps: float, version: str,
                 n: int) -> str:
    """Start an audit job of a trained model; returns the audit's run id."""
    return runner.submit(store, AuditSpec(model_run=model_run, norm=norm, eps=eps,
                                          version=version, n=n), parent=model_run)


def audit_runs(store: RunStore) -> list[Run]:
    """Every audit run, newest first."""
    return store.list_runs(kind="audit")


def audit_view(store: RunStore, run_id: str) -> dict:
    """An audit as the dashboard shows it: its stages so far (clean first; from the store
    while it runs, from audit.json once done), the stages still to come, and when done the
    indicators and verdict."""
    from core.audit import VERSIONS

    run = store.get(run_id)
    spec = AuditSpec.from_dict(run.config)
    planned = ["clean", *VERSIONS[spec.version]]
    view = {"status": run.status, "error": run.error, "threat_label": spec.threat().label(),
            "version": spec.version, "n": spec.n, "model_run": spec.model_run,
            "indicators": [], "verdict": None}
    path = run_dir(run_id) / "audit.json"
    if run.status == "completed" and path.exists():
        report = json.loads(path.read_text())
        stages = [{"attack": "clean", "robust_acc": report["clean_acc"], "seconds": 0.0}]
        stages += report["stages"]
        view.update(indicators=report["indicators"], verdict=report["verdict"], n=report["n"],
                    robust_acc=report["robust_acc"])
    else:
        rows = store.metrics(run_id)
        accs = {m["name"].split(":", 1)[1]: m["value"] for m in rows
                if m["name"].startswith("stage:")}
        secs = {m["name"].split(":", 1)[1]: m["value"] for m in rows
                if m["name"].startswith("stage_seconds:")}
        stages = [{"attack": a, "robust_acc": accs[a], "seconds": secs.get(a, 0.0)}
                  for a in planned if a in accs]
    view["stages"] = stages
    view["pending"] = [a for a in planned if a not in {s["attack"] for s in stages}]
    return view


def audit_examples(run_id: str) -> dict | None:
    """The examples an audit kept: per stage some it broke (clean and adversarial images, as
    data URIs), and some that survived; None before the audit finishes."""
    path = run_dir(run_id) / "audit_examples.safetensors"
    if not path.exists():
        return None
    tensors, meta = checkpoint.load(path)
    stages, classes = meta["stages"], meta["classes"]

    def pictures(x: torch.Tensor) -> list[str]:
        return [to_display(img) for img in x] if x.numel() else []

    broken: dict[str, list[dict]] = {name: [] for name in stages}
    for img, adv, k, label, pred, index in zip(
            pictures(tensors["x"]), pictures(tensors["x_adv"]), tensors["stage"].tolist(),
            tensors["label"].tolist(), tensors["adv_pred"].tolist(), tensors["index"].tolist()):
        broken[stages[k]].append({"clean": img, "adversarial": adv, "index": index,
                                  "caption": f"#{index}: {classes[label]} → {classes[pred]}"})
    survived = [{"clean": img, "index": index, "caption": f"#{index}: {classes[label]}"}
                for img, label, index in zip(pictures(tensors["x_robust"]),
                                             tensors["robust_label"].tolist(),
                                             tensors["robust_index"].tolist())]
    return {"broken": broken, "survived": survived}


def card_files(store: RunStore, audit_id: str) -> list[tuple[str, str]]:
    """The model card of an audit as downloads: (file name, text) for card.json and card.md;
    empty when the audit cannot carry one (not completed)."""
    import json

    from core.jobs import card

    audit = store.get(audit_id)
    if audit.status != "completed":
        return []
    built = card.build(store, audit.config["model_run"], audit_id)
    return [("card.json", json.dumps(built, indent=2) + "\n"), ("card.md", card.markdown(built))]
