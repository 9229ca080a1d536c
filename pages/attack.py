"""Attack playground: pick a model (and a second one to set beside it) and an attack; the
epsilon slider reads grids computed in the background; the examples are the flipped ones, all,
or one picked, the same images for both models; upload your own image to attack it."""
import streamlit as st

from core.attacks import ATTACKS, MINIMUM_NORM
from core.figures import epsilon_curve_figure, probability_bars
from core.app.attack import (attack_single, attack_summary, example_choice, existing_grid, grid_result,
                             grid_spec, grid_summaries, launch_grid, stopped_grid)
from core.app.evaluate import classes_for_run
from core.app.images import amplified_perturbation, read_upload, to_display
from core.app.runs import eps_label, model_for_run, progress, run_label
from core.jobs.specs import GRID_SLIDER_START, GridSpec
from core.jobs.store import Run
from core.threat import ThreatModel
from pages.common import (accuracy_metric, success_metric, figures_at, get_store, pick_run, require_trained_runs,
                          show_error, time_left)
from pages.curve_view import curve_mode
from pages.epsilon_slider import epsilon_slider

store = get_store()
st.title("Attack playground")
runs = require_trained_runs(store)
c1, c2, c3 = st.columns([3, 1, 1])
with c1:
    run = pick_run("Model", runs, "model")
attack = c2.selectbox("Attack", [a for a in ATTACKS if a not in ("semantic",) + MINIMUM_NORM]
                      + ["semantic", "curve"], index=2, key="attack-name",
                      format_func=lambda a: "curve (every ε)" if a == "curve" else a,
                      help="curve: minimum-norm attacks find each image's smallest adversarial "
                           "perturbation once, so the ε slider is continuous")
n = c3.select_slider("Test images", [100, 200, 500, 1000], value=GridSpec.n, key="attack-n")
if attack == "curve":
    curve_mode(store, run, n, classes_for_run(run))
    st.stop()
params = {}
with st.expander("Attack parameters", expanded=False):
    if attack == "pgd":
        p1, p2, p3 = st.columns(3)
        params["steps"] = p1.number_input("Steps", 1, 200, ATTACKS["pgd"].steps,
                                          key="attack-pgd-steps")
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
    st.caption(attack_summary(attack))

others = [r for r in runs if r.id != run.id]
# options are run ids with "" for none: a None value reads as "no choice" to Streamlit and
# showed its "Choose an option" placeholder after a visit to the curve mode
labels = {"": "no second model", **{r.id: run_label(r) for r in others}}
chosen = st.selectbox("Side by side with (a second model, on the same images)", list(labels),
                      key="attack-other-id", format_func=labels.get)
other = next((r for r in others if r.id == chosen), None)
models = [run] + ([other] if other is not None else [])
try:
    specs = [grid_spec(m.id, attack, params, n) for m in models]
except Exception as err:
    show_error(err)
    st.stop()


def own_image(eps: float | None) -> None:
    """Attack an uploaded image with the chosen attack at ``eps`` (its budget, if any)."""
    st.divider()
    st.subheader("Attack your own image")
    upload = st.file_uploader("An image (PNG, JPEG, …, at most 5 MB); it is resized to the model's "
                              "input", type=None, key="upload", max_upload_size=5)
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
            how = attack + (f" at {ATTACKS[attack].budget} {eps_label(eps)}" if budgeted
                            and eps is not None else "")
            cols[1].image(to_display(out["x_adv"]), caption=f"attacked ({how}): "
                          f"{classes[int(out['adv_prob'].argmax())]} ({out['adv_prob'].max():.0%})",
                          width="stretch")
            cols[2].html(probability_bars(out["clean_prob"].tolist(), out["adv_prob"].tolist(),
                                          classes))
        except Exception as err:
            show_error(err)


budgeted = ATTACKS[attack].budget is not None
grids = [existing_grid(store, spec) for spec in specs]
if None in grids:
    # nothing heavy starts by itself: the user asks for the grid (minutes on a CPU)
    todo = [m for m, g in zip(models, grids) if g is None]
    points = len(specs[0].budgets) if budgeted else 1
    stopped = [stopped_grid(store, spec) for spec, g in zip(specs, grids) if g is None]
    kept = [(g, sum(p is not None for p in grid_summaries(g.id, points)))
            for g in stopped if g is not None]
    if kept:
        st.warning("Stopped before it finished: " + "; ".join(
            f"{run_label(store.get(g.config['model_run']))}, {g.status} with {k} of {points} "
            "epsilons computed (kept)" for g, k in kept) + ". **Resume** computes the rest.",
            icon=":material/pause_circle:")
    else:
        st.info(f"{attack} over {points} epsilon(s) on {n:,} test images is not computed yet "
                "for " + ", ".join(run_label(m) for m in todo) + ". It runs in the background; "
                "the slider then reads its results.")
    if st.button("Resume" if kept else "Compute", type="primary", key="attack-compute"):
        for spec, grid in zip(specs, grids):
            if grid is None:
                launch_grid(store, spec)
        st.rerun()
    own_image(specs[0].params.get(ATTACKS[attack].budget or "", None))
    st.stop()


def read_points(grid_ids: list[str]) -> list[list[dict | None]]:
    """Each grid's points (None where not computed yet): the one record that the slider, the
    curve and every count on this page read."""
    return [grid_summaries(g, len(budgets)) for g in grid_ids]


def count(points: list[list[dict | None]]) -> int:
    return sum(p is not None for grid in points for p in grid)


budgets = grids[0].config["budgets"] if budgeted else [None]
if budgeted:
    # the numbers of every computed epsilon travel with the slider, which repaints them in the
    # browser; the server draws the examples and the curve's marker after each move
    summaries = read_points([g.id for g in grids])
    index = epsilon_slider(
        f"{ATTACKS[attack].budget} (pixel units)", [eps_label(b) for b in budgets],
        [{"name": run_label(m) if len(models) > 1 else "", "results": s}
         for m, s in zip(models, summaries)], index=GRID_SLIDER_START, key="eps")
    eps = budgets[index]
    known = count(summaries)
else:
    eps, index, known, summaries = None, 0, 0, None
st.caption(f"Every number here is on the same {n:,} test images (a seeded sample of the test "
           "split, the first of them shown below)"
           + ("" if budgeted else f"; {attack} has no epsilon, so there is one result")
           + ". The Evaluate page's clean accuracy is on the whole test split, so it can differ "
           "by a point or two.")


if budgeted and ATTACKS[attack].budget == "eps" and eps:
    norm = params.get("norm") or getattr(ATTACKS[attack], "norm", None) or "linf"
    figures_at(store, run.id, ThreatModel(norm, eps))
e1, e2 = st.columns([2, 3])
SHOW = ["flipped", "all", "pick"]
# kept outside the widget: a run that stops at the Compute prompt (a second model added) does
# not draw this radio, and Streamlit forgets the state of widgets it did not draw
show_what = e1.radio("Examples to show", SHOW, horizontal=True,
                     index=SHOW.index(st.session_state.get("attack-show-choice", "flipped")),
                     format_func={"flipped": "flipped only", "all": "all",
                                  "pick": "pick an image"}.get)
st.session_state["attack-show-choice"] = show_what
picked = None
if show_what == "pick":
    first = grid_result(grids[0].id, index)
    if first is None:
        e2.caption("The images can be picked once this epsilon is computed.")
    else:
        classes = classes_for_run(run)
        picked = e2.selectbox(
            f"Image (the first {len(first['x'])} of the sample)", range(len(first["x"])),
            key="attack-pick", format_func=lambda k: f"test image #{int(first['index'][k])} "
            f"({classes[int(first['labels'][k])]})")


def finished(grid_ids: list[str]) -> bool:
    return all(store.get(g).status in ("completed", "failed", "cancelled") for g in grid_ids)


@st.fragment(run_every=1.0)
def poll(grid_ids: list[str], index: int, examples_shown: bool) -> None:
    # The examples are drawn by whole-page runs only: a poll redrawing images every second
    # drops media files the browser is still fetching (404, "image source error"). A newly
    # computed epsilon also reruns the page, so that the slider carries its numbers.
    fresh = read_points(grid_ids)
    if finished(grid_ids) or (not examples_shown and all(g[index] for g in fresh)) or (
            budgeted and count(fresh) > known):
        st.rerun()
    # one placeholder for everything: a new attack's first poll replaces the previous
    # attack's numbers instead of leaving them on screen, faded
    with st.empty().container():
        show_grids(grid_ids, index, fresh, with_examples=False)


def show_grids(grid_ids: list[str], index: int, points: list[list[dict | None]],
               with_examples: bool = True) -> None:
    results = []
    columns = st.columns(len(grid_ids))
    for model, grid_id, grid_points, column in zip(models, grid_ids, points, columns):
        with column:
            results.append(show_grid(grid_id, index, grid_points,
                                     model if len(grid_ids) > 1 else None, with_examples))
    if budgeted:
        curves = {run_label(m): [(budgets[k], p["adv_acc"]) for k, p in enumerate(grid) if p]
                  for m, grid in zip(models, points)}
        if any(curves.values()):
            st.plotly_chart(epsilon_curve_figure(curves, eps, ATTACKS[attack].budget),
                            width="stretch",
                            key=f"curve-{'-'.join(grid_ids)}-{sum(map(len, curves.values()))}")
    if budgeted and finished(grid_ids) and count(points) == len(budgets) * len(grid_ids):
        st.caption(f"All {len(budgets)} epsilons computed: the slider reads stored results.")
    if with_examples and all(r is not None for r in results):
        examples(results)


def show_grid(grid_id: str, index: int, points: list[dict | None], named: Run | None,
              load: bool) -> dict | None:
    """Progress (and, for an attack without epsilon, its numbers: the slider shows the
    others); the point's full result when ``load``."""
    g = store.get(grid_id)
    done = sum(p is not None for p in points)
    if named is not None and (g.status == "failed" or done < len(budgets) or not budgeted):
        st.markdown(f"**{run_label(named)}**")
    if g.status == "failed":
        st.error(f"The attack job failed: {g.error}")
        return None
    if budgeted:
        if done < len(budgets):
            st.progress(done / len(budgets),
                        text=f"Computing the grid in the background: {done}/{len(budgets)} done")
        return grid_result(grid_id, index) if load else None
    return show_single(grid_id, narrow=named is not None)


def show_single(grid_id: str, narrow: bool) -> dict | None:
    """An attack without epsilon: its progress while it runs, then its one result's numbers."""
    result = grid_result(grid_id, 0)
    if result is None:
        info = progress(store, grid_id)
        st.progress(info["fraction"], text=f"Computing {attack} on {n:,} test images in the "
                    f"background: {info['label']}{time_left(info)}")
        return None
    m = st.columns(2 if narrow else 4)
    accuracy_metric(m[0], "Clean accuracy", result["clean_acc"], result.get("n"))
    accuracy_metric(m[1], "Accuracy under attack", result["adv_acc"], result.get("n"),
                    delta=f"{(result['adv_acc'] - result['clean_acc']) * 100:+.1f} pp",
                    help="Correct before and after the attack")
    if narrow:
        m = st.columns(2)
    success_metric(m[-2], result["success_rate"], result["clean_acc"], result.get("n"),
                   help="Of the images the model got right, the share the attack turned wrong")
    l2 = result["l2_median"]
    m[-1].metric("Median L2 of flips", "—" if l2 is None else f"{l2:.3f}",
                 help="None flipped: no perturbation size" if l2 is None else None)
    return result


def examples(results: list[dict]) -> None:
    classes = classes_for_run(run)
    chosen = example_choice(results, show_what, picked)
    st.subheader("Examples")
    if not chosen:
        if show_what == "flipped":
            st.info(f"The attack flipped none of the first {min(len(r['x']) for r in results)} "
                    "images at this epsilon: raise epsilon, or show all.")
        return
    for k in chosen:
        first = results[0]
        true = classes[int(first["labels"][k])]
        st.markdown(f"test image **#{int(first['index'][k])}**, true class **{true}**")
        widths = [1] + ([1, 1, 2] if len(results) == 1 else [1, 2] * len(results))
        cols = st.columns(widths)
        cols[0].image(to_display(first["x"][k]), caption="clean", width="stretch")
        at = 1
        for model, result in zip(models, results):
            cp, ap = result["clean_prob"][k], result["adv_prob"][k]
            name = "" if len(results) == 1 else f"{model.name or model.id}: "
            cols[at].image(to_display(result["x_adv"][k]), width="stretch",
                           caption=f"{name}{classes[int(cp.argmax())]} ({cp.max():.0%}) → "
                           f"{classes[int(ap.argmax())]} ({ap.max():.0%})")
            if len(results) == 1:
                at += 1
                cols[at].image(to_display(amplified_perturbation(result["x"][k],
                                                                 result["x_adv"][k])),
                               caption="perturbation (amplified)", width="stretch")
            cols[at + 1].html(probability_bars(cp.tolist(), ap.tolist(), classes,
                                               int(first["labels"][k])))
            at += 2


grid_ids = [g.id for g in grids]
# read once: a grid finishing between two reads would show a Cancel button and no poll, or
# stop the page on the points read at its top (one short) with nothing left to rerun it
done_now = finished(grid_ids)
if done_now and budgeted and count(read_points(grid_ids)) > known:
    st.rerun()  # the last points landed after the slider read them
if not done_now and st.button("Cancel", key="attack-cancel",
                                        help="Stop computing this grid (and the second model's)"):
    for g in grid_ids:
        store.request_cancel(g)
    st.rerun()
if done_now:
    # drawn once per slider move, not every second; in place, so the browser updates the
    # charts it has instead of building new ones
    show_grids(grid_ids, index, summaries or read_points(grid_ids))
else:
    ready = [grid_result(g, index) for g in grid_ids]
    shown = all(r is not None for r in ready)
    poll(grid_ids, index, shown)
    if shown:
        examples(ready)

own_image(eps)
