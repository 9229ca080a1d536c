"""Compare: runs side by side (clean accuracy, PGD and audited robust accuracy with their
sources, training curves overlaid, time, configuration differences)."""
import streamlit as st

from core.app.compare import compare_display, compare_rows, epoch_curves, run_name
from core.app.curves import curve_of, find_curve
from core.app.runs import config_diff, model_runs, run_label
from core.figures import PALETTE, curve_figure, epoch_curves_figure
from pages.common import get_store

store = get_store()
st.title("Compare runs")
runs = model_runs(store)
if len(runs) < 1:
    st.info("No completed training or imported models yet.")
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
st.table(compare_display(store, chosen))  # HTML: it wraps to the page, every column seen
st.caption("One column per run, each figure with its 95% interval. Audited: the run's latest "
           "audit (AutoAttack cascade), the strongest answer; launch one on the Robustness "
           "page. PGD rows: the run's latest sweep. Held-out: the overfitting guard's APGD-CE "
           "on training images it held out. ⚠ marks a figure above the audit's beyond both "
           "intervals (at the audit's threat model): its attack missed what the audit found. "
           "Clean accuracy: the test split at the end of training.")
st.download_button("Download CSV", compare_rows(store, chosen).to_csv(index=False),
                   "compare.csv", "text/csv", icon=":material/download:")
left, right = st.columns(2)
for column, metric, title in (
        (left, "test_acc", "Clean test accuracy per epoch"),
        (right, "robust_acc", "Held-out robust accuracy per epoch (the guard's training images)")):
    curves = epoch_curves(store, chosen, metric)
    if not any(curves.values()):  # empty axes would read as a chart that failed to load
        column.markdown(f"**{title}**")
        column.caption("None of these runs logged it"
                       + (": only runs with a defense have the guard." if metric == "robust_acc"
                          else "."))
        continue
    column.plotly_chart(epoch_curves_figure(curves, title), width="stretch")
# each run keeps its colour of the epoch charts, whichever runs have a curve
colours = {run_name(r): PALETTE[k % len(PALETTE)] for k, r in enumerate(chosen)}
curves = {norm: {run_name(r): curve_of(c) for r in chosen
                 if (c := find_curve(store, r.id, norm, statuses=("completed",))) is not None}
          for norm in ("linf", "l2")}
for norm, shown in curves.items():
    if shown:
        st.plotly_chart(curve_figure(shown, colours=colours, title=f"Robustness curves ({'L∞' if norm == 'linf' else 'L2'}"
                                     f", each model's latest; bands: 95% intervals)"),
                        width="stretch", key=f"compare-curves-{norm}")
        st.caption("Median smallest norm: " + " · ".join(
            f"{name} {c.median():.4f}" for name, c in shown.items()))
st.subheader("Configuration differences")
diff = config_diff(chosen)
if diff.empty:
    st.caption("The configurations are identical.")
else:
    st.table(diff)
