"""Evaluate: metrics, per-class table, confusion matrix and a filterable misclassified gallery."""
import pandas as pd
import streamlit as st

from core.confidence import interval_text
from core.evaluation import misclassified
from core.figures import confusion_grid_figure
from core.attacks import ATTACKS
from core.app.evaluate import (attack_label, attack_results, cached_evaluation, gallery_images,
                               launch_attack, launch_evaluation)
from core.app.runs import eps_label, load_report
from core.jobs.specs import DEFAULT_GRID, AttackSpec
from core.threat import ThreatModel
from pages.common import (accuracy_metric, success_metric, downloads, figures_at, get_store, headline, job_bar,
                          pick_run, require_trained_runs, show_error)

store = get_store()
st.title("Evaluate a model")
runs = require_trained_runs(store)
run = pick_run("Model", runs, "model")
evaluation = cached_evaluation(store, run.id)


@st.fragment(run_every=1.0)
def wait_for(eval_id: str) -> None:
    ev = store.get(eval_id)
    if ev.status in ("completed", "cancelled"):
        st.rerun()
    if ev.status == "failed":
        st.error(f"Evaluation failed: {ev.error}")
    else:
        st.caption("A model's clean evaluation starts by itself the first time it is opened "
                   "here (seconds on its test split); cancel it to keep the machine free.")
        job_bar(store, eval_id, "Evaluating on the test split")


if evaluation.status == "cancelled":
    st.warning("The clean evaluation of this model was cancelled.",
               icon=":material/stop_circle:")
    if st.button("Evaluate", key="evaluate-again", icon=":material/play_arrow:",
                 help="Evaluate this model on its whole test split"):
        launch_evaluation(store, run.id)
        st.rerun()
    st.stop()
if evaluation.status != "completed":
    wait_for(evaluation.id)
    st.stop()

summary = evaluation.summary
c = st.columns(4)  # drawn before the per-example report is read: the first content comes sooner
headline(c[0], "Accuracy", f"{summary['accuracy']:.2%}",
         f"95% interval {interval_text(summary['accuracy'], summary['n'])} on "
         f"{summary['n']:,} images")
headline(c[1], "Micro-F1", f"{summary['micro_f1']:.2%}", "equals accuracy for single-label data")
headline(c[2], "Macro-F1", f"{summary['macro_f1']:.2%}")
headline(c[3], "Test images", f"{summary['n']:,}")
st.caption(f"Data: {summary.get('source', '')}")
downloads(evaluation.id, ["evaluation.json", "confusion.png", "mistakes.png"])
report = load_report(evaluation.id)
classes = report["classes"]

left, right = st.columns([3, 2])
with left:
    event = st.plotly_chart(confusion_grid_figure(summary["confusion"], classes),
                            width="stretch", on_select="rerun", selection_mode="points",
                            key="confusion")
with right:
    st.subheader("Per class")
    st.dataframe(pd.DataFrame(summary["per_class"]).style.format(
        {"precision": "{:.3f}", "recall": "{:.3f}", "f1": "{:.3f}"}), hide_index=True,
        width="stretch")  # sized to its rows: no blank row below the last class

points = (event.selection.points if event and event.selection else []) or []
clicked = (str(points[0]["y"]), str(points[0]["x"])) if points else None
# a click filters the gallery once; the selection stays on the chart, and must not undo a
# filter chosen in the boxes afterwards
if clicked and clicked != st.session_state.get("confusion-applied"):
    st.session_state["true-cls"], st.session_state["pred-cls"] = clicked
st.session_state["confusion-applied"] = clicked

st.subheader("Misclassified examples")
f1, f2, f3 = st.columns([2, 2, 1])
options = ["any"] + classes
true_cls = f1.selectbox("True class", options, key="true-cls")
pred_cls = f2.selectbox("Predicted class", options, key="pred-cls")
wrong = misclassified(report, None if true_cls == "any" else classes.index(true_cls),
                      None if pred_cls == "any" else classes.index(pred_cls))
per_page = 24
pages = max(1, -(-len(wrong) // per_page))
page = f3.number_input(f"Page (of {pages})", 1, pages, 1)
if true_cls == pred_cls != "any":
    k = classes.index(true_cls)
    st.caption(f"True and predicted class are both {true_cls}: the "
               f"{summary['confusion'][k][k]:,} images of this diagonal cell are classified "
               "correctly, so none of them is a mistake to show. Pick a cell off the diagonal.")
else:
    st.caption(f"{len(wrong)} misclassified examples match.")
shown = wrong[(page - 1) * per_page: page * per_page]
try:
    images = gallery_images(run.config["dataset"], shown, run.config.get("data_dir"))
except Exception as err:
    show_error(err)
    images = []
pairs = list(zip(shown, images))
for start in range(0, len(pairs), 8):
    # one row of columns per eight images: a caption that wraps lengthens only its own row
    for col, (rec, img) in zip(st.columns(8), pairs[start:start + 8]):
        with col:
            st.image(img, width="stretch")
            st.caption(f"**{classes[rec['true']]}** → {classes[rec['pred']]} "
                       f"({rec['confidence']:.0%}) · #{rec['index']}")
st.subheader("Under attack")
st.caption("Robust accuracy and the confusion matrix under a chosen attack, beside the clean "
           "matrix of the same test images. Each attack runs once in the background and is kept.")
with st.form("eval-attack", border=False):
    a1, a2, a3, a4 = st.columns([2, 2, 2, 1], vertical_alignment="bottom")
    budgeted = [a for a, s in ATTACKS.items() if s.budget == "eps"]
    attack = a1.selectbox("Attack", budgeted, index=budgeted.index("pgd"), key="eval-attack")
    # the defaults are the attack's and the spec's own (one place for every default)
    eps = a2.select_slider("eps (pixel units)", options=list(DEFAULT_GRID[1:]),
                           value=ATTACKS["pgd"].eps, format_func=eps_label,
                           key="eval-eps")
    n = a3.select_slider("Test images", [100, 200, 500, 1000], value=AttackSpec.n,
                         key="eval-n")
    if a4.form_submit_button("Attack"):
        try:
            st.session_state["eval-attack-run"] = launch_attack(store, run.id, attack, eps, n)
        except Exception as err:
            show_error(err)
done_attacks = attack_results(store, run.id)
if done_attacks:
    ids = [r.id for r in done_attacks]
    wanted = st.session_state.get("eval-attack-run")
    if wanted in ids:
        st.session_state["eval-attack-pick"] = wanted
    chosen = st.selectbox("Result", ids, key="eval-attack-pick",
                          format_func=lambda i: attack_label(store.get(i)))

    @st.fragment(run_every=1.0)
    def attack_progress(attack_id: str) -> None:
        job = store.get(attack_id)
        if job.status != "running" and job.status != "queued":
            st.rerun()  # the page draws the result once and stops polling
        job_bar(store, attack_id, attack_label(job))

    def under_attack(attack_id: str) -> None:
        job = store.get(attack_id)
        if job.status in ("running", "queued"):
            attack_progress(attack_id)
            return
        if job.status == "cancelled":
            st.warning("This attack was cancelled; press Attack to run it again.",
                       icon=":material/stop_circle:")
            return
        if job.status != "completed":
            st.error(f"This attack {job.status}: {job.error}")
            return
        res = job.summary
        m = st.columns(3)
        accuracy_metric(m[0], "Clean accuracy (these images)", res["clean_acc"], res.get("n"))
        accuracy_metric(m[1], "Robust accuracy", res["adv_acc"], res.get("n"),
                        delta=f"{(res['adv_acc'] - res['clean_acc']) * 100:+.1f} pp",
                        help="Correct before and after the attack")
        success_metric(m[2], res["success_rate"], res["clean_acc"], res.get("n"),
                       help="Of the images classified correctly, the share the attack turned "
                       "wrong")
        if res.get("norm") in ("linf", "l2") and res.get("eps"):
            figures_at(store, run.id, ThreatModel(res["norm"], float(res["eps"])))
        if "confusion_clean" not in res:
            st.caption("This attack ran before the clean matrix was kept; run it again.")
            return
        left_, right_ = st.columns(2)
        left_.plotly_chart(confusion_grid_figure(res["confusion_clean"], classes,
                                                 f"Clean ({res['n']:,} images)"),
                           width="stretch", key=f"clean-{attack_id}")
        right_.plotly_chart(confusion_grid_figure(res["confusion_adv"], classes,
                                                  f"Under {res['threat_label']}"),
                            width="stretch", key=f"adv-{attack_id}")

    under_attack(chosen)
else:
    st.caption("No attack of this model yet: choose one above.")

with st.expander("Configuration of this model"):
    st.json(run.config)
