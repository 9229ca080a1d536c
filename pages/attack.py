"""Attack playground: pick a model and an attack; the epsilon slider reads a grid computed in
the background; upload your own image to attack it."""
import plotly.graph_objects as go
import streamlit as st

from core.hyperparams import ATTACK_SETTINGS as ATTACKS
from core.service import (amplified_perturbation, attack_single, classes_for_run, eps_label,
                          grid_result, grid_run, model_for_run, progress, read_upload,
                          to_display)
from core.specs import GridSpec
from pages.common import fmt_seconds, require_trained_runs, get_store, pick_run, show_error

store = get_store()
st.title("Attack playground")
runs = require_trained_runs(store)
c1, c2, c3 = st.columns([3, 1, 1])
with c1:
    run = pick_run("Model", runs, "model")
attack = c2.selectbox("Attack", [a for a in ATTACKS if a != "semantic"] + ["semantic"],
                      index=2, key="attack-name")
n = c3.select_slider("Test images", [100, 200, 500, 1000], value=GridSpec.n, key="attack-n")
params = {}
with st.expander("Attack parameters", expanded=False):
    if attack == "pgd":
        p1, p2, p3 = st.columns(3)
        params["steps"] = p1.number_input("Steps", 1, 200, ATTACKS["pgd"].steps)
        params["norm"] = p2.selectbox("Norm", ["linf", "l2"])
        params["restarts"] = p3.number_input("Restarts", 1, 10, 1)
    elif attack == "cw":
        p1, p2 = st.columns(2)
        params["steps"] = p1.number_input("Steps per search", 10, 1000, ATTACKS["cw"].steps)
        params["search_steps"] = p2.number_input("Binary search steps", 1, 9,
                                                 ATTACKS["cw"].search_steps)
    elif attack == "semantic":
        params["mode"] = st.selectbox("Mode", ["negative", "hsv"])
    elif attack == "noise":
        params["distribution"] = st.selectbox("Distribution", ["gaussian", "uniform"])
    st.caption(ATTACKS[attack].__doc__.split("\n")[0])

try:
    grid = grid_run(store, run.id, attack, params, n)
except Exception as err:
    show_error(err)
    st.stop()
budgeted = ATTACKS[attack].budget is not None
budgets = grid.config["budgets"] if budgeted else [None]
if budgeted:
    eps = st.select_slider(f"{ATTACKS[attack].budget} (pixel units)", options=budgets,
                           value=budgets[4], format_func=eps_label, key="eps")
    index = budgets.index(eps)
else:
    st.caption(f"{attack} has no epsilon: one result on {n:,} test images.")
    index = 0


@st.fragment(run_every=1.0)
def show(grid_id: str, index: int) -> None:
    # one placeholder for everything: a new attack's first poll replaces the previous
    # attack's examples instead of leaving them on screen, faded
    with st.empty().container():
        show_grid(grid_id, index)


def show_grid(grid_id: str, index: int) -> None:
    g = store.get(grid_id)
    done = store.metrics(grid_id, ["adv_acc"])
    if g.status == "failed":
        st.error(f"The attack job failed: {g.error}")
        return
    if not budgeted and not done:
        info = progress(store, grid_id)
        left = f" · {fmt_seconds(info['seconds_left'])} left" if info["seconds_left"] else ""
        st.progress(info["fraction"], text=f"Computing {attack} on {n:,} test images in the "
                    f"background: {info['label']}{left}")
        return
    if len(done) < len(budgets):
        st.progress(len(done) / len(budgets),
                    text=f"Computing the grid in the background: {len(done)}/{len(budgets)} done")
    result = grid_result(grid_id, index)
    if result is None:
        st.info("This epsilon is still being computed…")
        return
    classes = classes_for_run(run)
    m = st.columns(4)
    m[0].metric("Clean accuracy", f"{result['clean_acc']:.2%}")
    m[1].metric("Accuracy under attack", f"{result['adv_acc']:.2%}",
                delta=f"{result['adv_acc'] - result['clean_acc']:+.2%}")
    m[2].metric("Attack success rate", f"{result['success_rate']:.2%}")
    l2 = result["l2_median"]
    m[3].metric("Median L2 of flips", "—" if l2 is None else f"{l2:.3f}",
                help="None flipped: no perturbation size" if l2 is None else None)
    if budgeted and done:
        curve = go.Figure(go.Scatter(x=[budgets[int(d['step'])] for d in done],
                                     y=[d["value"] for d in done], mode="lines+markers"))
        curve.update_layout(height=220, margin=dict(l=40, r=10, t=10, b=30),
                            xaxis_title="epsilon", yaxis_tickformat=".0%", yaxis_range=[0, 1])
        st.plotly_chart(curve, width="stretch", key=f"curve-{len(done)}")
    examples(result, classes)


def examples(result: dict, classes: list) -> None:
    st.subheader("Examples")
    for k in range(min(6, len(result["x"]))):
        cols = st.columns([1, 1, 1, 2])
        amp = amplified_perturbation(result["x"][k], result["x_adv"][k])
        cols[0].image(to_display(result["x"][k]), caption="clean", width="stretch")
        cols[1].image(to_display(result["x_adv"][k]), caption="adversarial", width="stretch")
        cols[2].image(to_display(amp), caption="perturbation (amplified)", width="stretch")
        true = classes[int(result["labels"][k])]
        cp, ap = result["clean_prob"][k], result["adv_prob"][k]
        cols[3].markdown(f"true **{true}** · clean → **{classes[int(cp.argmax())]}** "
                         f"({cp.max():.0%}) · adversarial → **{classes[int(ap.argmax())]}** "
                         f"({ap.max():.0%})")
        cols[3].plotly_chart(bars(cp, ap, classes), width="stretch", key=f"bars-{k}")


def bars(cp, ap, classes) -> go.Figure:
    fig = go.Figure([go.Bar(x=classes, y=cp.tolist(), name="clean", marker_color="#2563eb"),
                     go.Bar(x=classes, y=ap.tolist(), name="adversarial", marker_color="#dc2626")])
    fig.update_layout(height=160, margin=dict(l=10, r=10, t=10, b=10), barmode="group",
                      yaxis_range=[0, 1], showlegend=False)
    return fig


show(grid.id, index)

st.divider()
st.subheader("Attack your own image")
upload = st.file_uploader("An image (PNG, JPEG, …, at most 5 MB); it is resized to the model's "
                          "input", type=None, key="upload")
if upload is not None:
    try:
        model, meta = model_for_run(store, run.id, device="cpu")  # one image: no GPU needed
        x = read_upload(upload.getvalue(), meta["input_shape"])
        single = dict(params)
        if budgeted:
            single[ATTACKS[attack].budget] = eps
        out = attack_single(model, x, attack, single)
        classes = meta["classes"]
        cols = st.columns(3)
        cols[0].image(to_display(out["x"]), caption=f"yours: {classes[int(out['clean_prob'].argmax())]} "
                      f"({out['clean_prob'].max():.0%})", width="stretch")
        cols[1].image(to_display(out["x_adv"]), caption=f"attacked: "
                      f"{classes[int(out['adv_prob'].argmax())]} ({out['adv_prob'].max():.0%})",
                      width="stretch")
        cols[2].plotly_chart(bars(out["clean_prob"], out["adv_prob"], classes), width="stretch")
    except Exception as err:
        show_error(err)
