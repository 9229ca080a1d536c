"""Compare: runs side by side (configuration differences, clean and robust accuracy, time)."""
import pandas as pd
import streamlit as st

from core.service import config_diff, run_label
from pages.common import fmt_seconds, get_store

store = get_store()
st.title("Compare runs")
runs = [r for r in store.list_runs(kind="train") if r.status == "completed"]
if len(runs) < 1:
    st.info("No completed training runs yet.")
    st.stop()
chosen = st.multiselect("Runs", runs, default=runs[: min(3, len(runs))], format_func=run_label)
if not chosen:
    st.stop()
rows = []
for r in chosen:
    final = (r.summary or {}).get("final") or {}
    sweeps = store.list_runs(kind="sweep", parent=r.id, status="completed")
    pgd = {}
    if sweeps:
        for row in sweeps[0].summary.get("rows", []):
            if row["attack"] == "pgd":
                pgd[f"PGD {row['budget']}"] = row["adv_acc"]
    rows.append({"run": r.name or r.id, "defense": r.config.get("defense"),
                 "clean acc": final.get("test_acc"), "held-out PGD acc (guard)":
                 final.get("robust_acc"), **pgd, "training time": fmt_seconds(r.duration),
                 "test images": (r.summary or {}).get("n_test")})
frame = pd.DataFrame(rows)
numeric = [c for c in frame.columns if "acc" in c or c.startswith("PGD")]
frame[numeric] = frame[numeric].astype(float)  # None -> NaN, shown as "—"
st.dataframe(frame.style.format({c: "{:.2%}" for c in numeric}, na_rep="—"),
             hide_index=True, width="stretch")
st.subheader("Configuration differences")
diff = config_diff(chosen)
if diff.empty:
    st.caption("The configurations are identical.")
else:
    st.dataframe(diff.map(lambda v: "—" if v is None else str(v)), width="stretch")
