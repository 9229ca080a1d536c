"""Compare: runs side by side (clean accuracy, PGD and audited robust accuracy with their
sources, training curves overlaid, time, configuration differences)."""
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.app.service import config_diff, run_label
from pages.common import fmt_seconds, get_store, show_table

store = get_store()
st.title("Compare runs")
runs = [r for r in store.list_runs(kind="train") if r.status == "completed"]
if len(runs) < 1:
    st.info("No completed training runs yet.")
    st.stop()
studies = store.list_runs(kind="study")
study = st.selectbox("Start from a study (its models side by side)", [None] + studies,
                     key="compare-study",
                     format_func=lambda r: "—" if r is None else run_label(r)) if studies else None
default = ([r for r in runs if r.parent == study.id] if study is not None
           else runs[: min(3, len(runs))])
chosen = st.multiselect("Runs", runs, default=default, format_func=run_label)
if not chosen:
    st.stop()
rows = []
for r in chosen:
    final = (r.summary or {}).get("final") or {}
    sweeps = store.list_runs(kind="sweep", model_run=r.id, status="completed")
    pgd = {}
    if sweeps:  # the latest sweep's PGD rows; the column names their source and size
        s = sweeps[0].summary
        for row in s.get("rows", []):
            if row["attack"] == "pgd":
                pgd[f"PGD {row['norm']} {row['budget']:g} (sweep, {s['n']} imgs)"] = \
                    row["adv_acc"]
    audits = store.list_runs(kind="audit", model_run=r.id, status="completed")
    audit = audits[0].summary if audits else {}
    rows.append({"run": r.name or r.id, "defense": r.config.get("defense"),
                 "clean acc": final.get("test_acc"), "held-out PGD acc (guard)":
                 final.get("robust_acc"), **pgd, "audited robust acc": audit.get("robust_acc"),
                 "audit": (f"{audit['version']} at {audit['threat_label']} on {audit['n']} "
                           f"imgs: {audit['verdict']}") if audit else None,
                 "training time": fmt_seconds(r.duration),
                 "test images": (r.summary or {}).get("n_test")})
frame = pd.DataFrame(rows)
numeric = [c for c in frame.columns if "acc" in c or c.startswith("PGD")]
show_table(frame, percent=numeric)
st.caption("Clean accuracy: the run's test split at the end of training. Held-out PGD: the "
           "overfitting guard's training images. PGD columns: the latest sweep of the run. "
           "Audited: the latest audit (AutoAttack cascade) of the run; launch one on the "
           "Robustness page.")
left, right = st.columns(2)
for column, metric, title in (
        (left, "test_acc", "Clean test accuracy per epoch"),
        (right, "robust_acc", "Held-out PGD accuracy per epoch (the guard's training images)")):
    curves = go.Figure()
    for r in chosen:
        epochs = store.metrics(r.id, [metric])
        if epochs:
            curves.add_trace(go.Scatter(x=[m["epoch"] + 1 for m in epochs],
                                        y=[m["value"] for m in epochs], mode="lines+markers",
                                        name=r.name or r.id[-9:]))
    if not curves.data:  # empty axes would read as a chart that failed to load
        column.markdown(f"**{title}**")
        column.caption("None of these runs logged it"
                       + (": only runs with a defense have the guard." if metric == "robust_acc"
                          else "."))
        continue
    curves.update_layout(title=title, xaxis_title="epoch", height=320, yaxis_tickformat=".0%",
                         yaxis_range=[0, 1], xaxis_dtick=1, margin=dict(l=50, r=10, t=40, b=40))
    column.plotly_chart(curves, width="stretch")
st.subheader("Configuration differences")
diff = config_diff(chosen)
if diff.empty:
    st.caption("The configurations are identical.")
else:
    st.dataframe(diff.map(lambda v: "—" if v is None else str(v)), width="stretch")
