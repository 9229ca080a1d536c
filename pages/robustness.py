"""Robustness: accuracy-versus-epsilon curves of several models and attacks, the seed-style
table, CSV download; sweeps launch as background jobs."""
import streamlit as st

from core.figures import robustness_figure
from core.hyperparams import ATTACK_SETTINGS
from core.service import launch_sweep, progress, run_label, sweep_curves
from core.specs import DEFAULT_BUDGETS, SweepSpec
from pages.common import require_trained_runs, get_store, show_error

store = get_store()
st.title("Robustness curves")
runs = require_trained_runs(store)

with st.form("sweep-form"):
    st.markdown("**Launch a sweep**")
    c1, c2 = st.columns([3, 2])
    models = c1.multiselect("Models", runs, default=runs[:1], format_func=run_label)
    attacks = c2.multiselect("Attacks", list(ATTACK_SETTINGS), default=["noise", "fgsm", "pgd"])
    c1, c2, c3 = st.columns(3)
    eps_text = c1.text_input("Epsilons (pixel units)",
                             ", ".join(f"{b:g}" for b in DEFAULT_BUDGETS))
    n = c2.number_input("Test images", 10, 10000, SweepSpec.n, step=100)
    steps = c3.number_input("PGD steps", 1, 200, ATTACK_SETTINGS["pgd"].steps)
    go = st.form_submit_button("Run sweep", type="primary", icon=":material/play_arrow:")
if go:
    try:
        budgets = [float(v) for v in eps_text.split(",") if v.strip()]
        bad = [b for b in budgets if not 0 <= b <= 1]
        if bad or not budgets:
            raise ValueError(f"epsilons must be numbers in [0, 1], got {eps_text!r}")
        if not models or not attacks:
            raise ValueError("pick at least one model and one attack")
        for m in models:
            launch_sweep(store, m.id, attacks, budgets, int(n), int(steps))
        st.toast(f"Launched {len(models)} sweep job(s)")
    except Exception as err:
        show_error(err)


@st.fragment(run_every=2.0)
def active() -> None:
    running = [r for r in store.list_runs(kind="sweep") if r.status in ("running", "queued")]
    for r in running:
        info = progress(store, r.id)
        st.progress(info["fraction"], text=f"sweep of {r.config['model_run'][-9:]}: {info['label']}")
    if st.session_state.get("had_running") and not running:
        st.session_state["had_running"] = False
        st.rerun()
    st.session_state["had_running"] = bool(running)


active()
done = [r for r in store.list_runs(kind="sweep", status="completed")]
if not done:
    st.info("No completed sweeps yet: launch one above.")
    st.stop()
chosen = st.multiselect("Sweeps to show", done, default=done[: min(3, len(done))],
                        format_func=lambda r: f"{r.name or 'sweep'} of "
                        f"{run_label(store.get(r.config['model_run']))} · {r.id[-9:]}")
series, table = sweep_curves(store, [r.id for r in chosen])
if series:
    st.plotly_chart(robustness_figure(series), width="stretch")
for r in chosen:
    for w in r.warnings:
        st.warning(f"{r.id}: {w}", icon=":material/warning:")
if not table.empty:
    st.dataframe(table, hide_index=True, width="stretch")
    st.download_button("Download CSV", table.to_csv(index=False), "robustness.csv",
                       "text/csv", icon=":material/download:")
