"""The Attack page's curve mode: a model's robustness curve (minimum-norm attacks) behind a
continuous epsilon slider. Every number follows the slider without a new job; the examples are
those broken at or below it, each at its own breaking point."""
from __future__ import annotations

import math

import streamlit as st

from core.app.curves import broken_examples, curve_checks, curve_of, find_curve, launch_curve
from core.app.images import pair_display
from core.jobs.store import Run, RunStore
from pages.common import job_bar, show_error
from pages.curve_slider import curve_slider


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
    """The slider and everything it moves: the numbers and the chart follow it in the
    browser (pages/curve_slider.py); a move then reruns only this fragment, for the
    examples."""
    curve = curve_of(job)
    finite = [v for v in curve.norms if 0 < v < math.inf]
    top = max(finite, default=0.3 if curve.norm == "linf" else 3.0) * 1.05
    median = curve.median()
    start = min(median if math.isfinite(median) else top / 2, top)
    checks = curve_checks(store, run.id, job)
    marks = [{"eps": c["eps"], "acc": float(c["figure"].split("%")[0]) / 100,
              "label": c["source"]} for c in checks]
    eps = curve_slider(curve, top, start, marks=marks, key=f"curve-eps-{job.id}", caption=(
        f"{curve.n:,} test images · curve by {', '.join(job.config['attacks'])} "
        f"({job.id[-9:]})" + (" · ✕: fixed-budget figures on the same images" if marks
                              else "")))
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
