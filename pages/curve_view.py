"""The Attack page's curve mode: a model's robustness curve (minimum-norm attacks) behind a
continuous epsilon slider. Every number follows the slider without a new job; the examples are
those broken at or below it, each at its own breaking point."""
from __future__ import annotations

import math

import streamlit as st

from core.app.curves import (at, broken_examples, curve_checks, curve_of,
                             find_curve, launch_curve)
from core.app.images import pair_display
from core.figures import curve_figure, with_marker
from core.jobs.store import Run, RunStore
from pages.common import accuracy_metric, success_metric, job_bar, show_error


def curve_mode(store: RunStore, run: Run, n: int, classes: list[str]) -> None:
    """The curve of ``run`` on ``n`` test images: its Compute, its progress, or its slider."""
    norm = st.radio("Norm", ["linf", "l2"], horizontal=True, key="curve-norm",
                    format_func={"linf": "L∞", "l2": "L2"}.get)
    every = ("completed", "running", "queued", "cancelled", "failed")
    # a curve on this many images, else the model's latest in this norm (its size is shown)
    job = find_curve(store, run.id, norm, n, every) or find_curve(store, run.id, norm, None,
                                                                  ("completed",))
    if job is None or job.status in ("cancelled", "failed"):
        if job is not None:
            st.warning(f"The last curve of this model {job.status}: {job.error or ''}",
                       icon=":material/stop_circle:")
        st.info(f"No {'L∞' if norm == 'linf' else 'L2'} curve of this model on {n:,} test images yet. FMN and FAB find each "
                "image's smallest adversarial perturbation, once; then every epsilon is read "
                "from it, the slider is continuous, and no epsilon costs a new job.")
        if st.button("Compute the curve", type="primary", key="curve-compute"):
            try:
                launch_curve(store, run.id, norm, n)
                st.rerun()
            except Exception as err:
                show_error(err)
        return
    if job.status != "completed":
        _follow(store, job.id)
        return
    if job.config.get("n") != n:
        # the numbers below are on the curve's own images, not the count the control asks for
        note, press = st.columns([4, 1], vertical_alignment="center")
        note.info(f"This curve is on {job.config.get('n'):,} test images, not the {n:,} the "
                  "control asks for; every number below is on its images.",
                  icon=":material/info:")
        if press.button(f"Compute on {n:,}", key="curve-compute-n"):
            try:
                launch_curve(store, run.id, norm, n)
                st.rerun()
            except Exception as err:
                show_error(err)
    _draw(store, run, job, classes)


@st.fragment(run_every=1.0)
def _follow(store: RunStore, job_id: str) -> None:
    if store.get(job_id).status not in ("running", "queued"):
        st.rerun()
    job_bar(store, job_id, "Computing the curve in the background")


@st.fragment
def _draw(store: RunStore, run: Run, job: Run, classes: list[str]) -> None:
    """The slider and everything it moves; a move reruns only this fragment."""
    curve = curve_of(job)
    finite = [v for v in curve.norms if 0 < v < math.inf]
    top = max(finite, default=0.3 if curve.norm == "linf" else 3.0) * 1.05
    median = curve.median()
    start = min(median if math.isfinite(median) else top / 2, top)
    eps = st.slider(f"ε ({'L∞' if curve.norm == 'linf' else 'L2'}, pixel units; continuous)",
                    0.0, float(top), float(round(start, 4)), step=float(top) / 1000,
                    format="%.4f", key=f"curve-eps-{job.id}")
    numbers = at(curve, eps)
    cols = st.columns(4)
    accuracy_metric(cols[0], "Clean accuracy", numbers["clean_acc"], numbers["n"])
    accuracy_metric(cols[1], "Robust accuracy", numbers["robust_acc"], numbers["n"],
                    delta=f"{(numbers['robust_acc'] - numbers['clean_acc']) * 100:+.1f} pp",
                    help="Correct at ε: classified correctly and not broken at or below it")
    success_metric(cols[2], numbers["success_rate"], numbers["clean_acc"], numbers["n"],
                   help="Of the images classified correctly, the share broken at or below ε")
    cols[3].metric("Median smallest norm", "above every norm found" if math.isinf(median)
                   else f"{median:.4f}", help="Of the images classified correctly")
    st.caption(f"ε = {eps:.4f}" + (f" = {eps * 255:.1f}/255" if curve.norm == "linf" else "")
               + f" · {numbers['n']:,} test images · curve by {', '.join(job.config['attacks'])} "
               f"({job.id[-9:]})")
    checks = curve_checks(store, run.id, job)
    st.plotly_chart(with_marker(_figure(run, job, curve, checks), eps), width="stretch",
                    key=f"curve-{job.id}")
    if checks:
        weaker = [c for c in checks if c["verdict"].startswith("curve weaker")]
        # an audit's gap is reported; a PGD figure below the curve is a fault of the curve
        with st.expander(f"Checked against {len(checks)} fixed-budget figure(s) on the same "
                         "images (✕ on the chart)" + (": the curve is weaker at some"
                                                        if weaker else ""), expanded=bool(weaker)):
            st.table([{"source": c["source"], "ε": f"{c['eps']:.4g}", "images": c["images"],
                       "fixed budget": c["figure"], "curve": c["curve"],
                       "gap": f"{c['gap_pp']:+.1f} pp", "": c["verdict"]} for c in checks])
    _examples(store, job, eps, classes)


def _figure(run: Run, job: Run, curve, checks: list[dict]):
    """The curve's chart, built once per curve and set of checks in this session; a slider
    move only moves its marker."""
    key = (job.id, tuple((c["source"], c["eps"], c["figure"]) for c in checks))
    cached = st.session_state.get("curve-figure")
    if cached is None or cached[0] != key:
        fig = curve_figure({run.name or run.id[-9:]: curve}, None, [
            {"eps": c["eps"], "acc": float(c["figure"].split("%")[0]) / 100,
             "label": c["source"]} for c in checks])
        cached = st.session_state["curve-figure"] = (key, fig)
    return cached[1]


def _examples(store: RunStore, job: Run, eps: float, classes: list[str]) -> None:
    shown = broken_examples(store, job, eps)
    st.subheader("Broken at or below this ε")
    if not shown:
        st.caption("No image is broken at or below this ε.")
        return
    st.caption("Each image at its own breaking point (its smallest adversarial perturbation), "
               "the largest of them first: clean above, attacked below.")
    # one picture per pair, in a row that wraps: eight pairs fit a desktop row and two short
    # rows of a phone's screen (eight columns would stack into sixteen screen-wide images)
    st.image([pair_display(item["x"], item["x_adv"]) for item in shown], width=110,
             caption=[f"{classes[item['label']]} → {classes[item['predicted']]} at "
                      f"{item['norm']:.4f}" for item in shown])
