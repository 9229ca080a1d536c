"""Train: a form that launches a background training job, and the live view of a job."""
import streamlit as st

from core.figures import training_figures
from core.training.settings import DEFENSE_SETTINGS as DEFENSES
from core.training.settings import MODEL_ARGS as MODELS
from core.training.settings import MultiStepSettings
from core.app.runs import (export_tensorboard, lab_overview, progress, resumable, resume,
                           run_label, runs_frame, weights_file)
from core.app.train import launch_training, train_form_defaults, training_estimate
from core.jobs.runner import delete_run
from core.jobs.specs import OPTIMIZERS, SCHEDULES
from core.paths import artifacts_dir, data_dir
from pages.common import accuracy_metric, fmt_seconds, get_store, show_error, show_table

MULTI_STEP = [name for name, cls in DEFENSES.items() if issubclass(cls, MultiStepSettings)]
store = get_store()
st.title("Train a model")
st.markdown("**The workflow:** train → [evaluate](/evaluate) (confusion matrix, mistakes) → "
            "[attack](/attack) (drag epsilon) → [audit](/robustness) (the AutoAttack verdict "
            "and its checks) → [compare](/compare).")
lab = lab_overview(store)
if not lab.empty:
    with st.expander(f"The lab holds {len(lab)} trained model(s); best audited first",
                     expanded=False):
        tags = sorted({t for listed in lab["tags"] for t in listed.split(", ") if t})
        chosen_tags = st.multiselect("Only models tagged", tags, key="lab-tags") if tags else []
        shown_lab = lab[[all(t in listed.split(", ") for t in chosen_tags)
                         for listed in lab["tags"]]]
        show_table(shown_lab, percent=["clean acc", "audited robust acc"])

clone = st.session_state.pop("clone_from", None)
defaults = train_form_defaults(store.get(clone) if clone else None)
# widgets with a key keep their state over a changed default: their value lives in the
# session state, set here on the first visit and on a clone (or the clone would keep them)
for key, value in (("epochs", int(defaults["epochs"])),
                   ("subset", int(defaults["train_subset"] or 0)),
                   ("test-subset", int(defaults.get("test_subset") or 0)),
                   ("defense", defaults["defense"])):
    if clone or key not in st.session_state:
        st.session_state[key] = value
if clone:
    st.info(f"Form filled from run {clone}; change what you like and launch.")

d1, d2 = st.columns(2)
datasets = ["mnist", "cifar10", "imagefolder"]
chosen_dataset = defaults["dataset"].split(":", 1)[0]
if clone or "dataset" not in st.session_state:
    st.session_state["dataset"] = chosen_dataset if chosen_dataset in datasets else "mnist"
dataset = d1.selectbox("Dataset", datasets, key="dataset",
                       format_func=lambda d: "imagefolder: your own images"
                       if d == "imagefolder" else d)
defense = d2.selectbox("Defense", list(DEFENSES), key="defense",
                       help="Adversarial training; its epsilon and steps appear below when one "
                            "is chosen")
with st.form("train-form"):
    if dataset == "imagefolder":
        folder = st.text_input(
            "Image folder", value=defaults["dataset"].split(":", 1)[1]
            if defaults["dataset"].startswith("imagefolder:") else "",
            placeholder=f"{data_dir()}/my-images",
            help="A folder with train/<class>/ and test/<class>/ image files, inside "
                 f"{data_dir()} or {artifacts_dir()} (the command line's imagefolder:PATH, "
                 "with the same checks)")
    c1, c2, c3 = st.columns(3)
    model = c1.selectbox("Model", list(MODELS), index=list(MODELS).index(defaults["model"]))
    epochs = c2.number_input("Epochs", 1, 500, key="epochs")
    batch = c3.number_input("Batch size", 2, 4096, int(defaults["batch_size"]))
    c1, c2, c3, c4 = st.columns(4)
    optimizer = c1.selectbox("Optimizer", OPTIMIZERS, index=OPTIMIZERS.index(defaults["optimizer"]))
    schedule = c2.selectbox("Schedule", SCHEDULES, index=SCHEDULES.index(defaults["schedule"]))
    lr = c3.number_input("Peak learning rate", 1e-6, 10.0, float(defaults["lr"]), format="%.4f")
    seed = c4.number_input("Seed", 0, 2**31 - 1, int(defaults["seed"]))
    c1, c2, c3, c4 = st.columns(4)
    eps, steps = 0.0, MultiStepSettings.steps
    if defense != "none":  # a defense's budget only where there is a defense
        eps = c2.number_input("Defense epsilon (pixels)", 0.0, 1.0,
                              float(defaults["defense_args"].get("eps", MultiStepSettings.eps)),
                              step=1 / 255, format="%.4f")
        c2.caption(f"= {eps * 255:.1f}/255")
    if defense in MULTI_STEP:
        steps = c3.number_input("Defense attack steps", 1, 100,
                                int(defaults["defense_args"].get("steps",
                                                                 MultiStepSettings.steps)))
    subset = c1.number_input("Training images (0 = all)", 0, 10**7, step=1000, key="subset")
    test_subset = c4.number_input("Test images (0 = all)", 0, 10**7, step=1000,
                                  key="test-subset",
                                  help="Images of the test split scored after each epoch")
    name = st.text_input("Run name (optional)", placeholder="e.g. mnist baseline")
    b1, b2, _ = st.columns([1, 1, 3])
    submitted = b1.form_submit_button("Launch training", type="primary",
                                      icon=":material/play_arrow:")
    estimated = b2.form_submit_button("Estimate the time", icon=":material/timer:")

if submitted or estimated:
    defense_args = {}
    if defense != "none":
        defense_args = {"eps": eps}
        if defense in MULTI_STEP:
            defense_args["steps"] = int(steps)
    values = dict(defaults, dataset=f"imagefolder:{folder.strip()}" if dataset == "imagefolder"
                  else dataset, model=model, epochs=int(epochs),
                  batch_size=int(batch), optimizer=optimizer, schedule=schedule, lr=float(lr),
                  seed=int(seed), defense=defense, defense_args=defense_args,
                  train_subset=int(subset) or None, test_subset=int(test_subset) or None)
    st.info(f"Estimated training time: {training_estimate(store, values)}.",
            icon=":material/timer:")
if submitted:
    try:
        run_id = launch_training(store, values, name=name)
        st.query_params["run"] = run_id
        st.session_state["job-pick"] = run_id  # show the new job at once
        st.toast(f"Started {run_id}", icon=":material/rocket_launch:")
    except Exception as err:  # shown to the user as a readable message
        show_error(err)

st.divider()
train_runs = store.list_runs(kind="train")
if not train_runs:
    st.info("No training runs yet. Fill in the form and press **Launch training**.")
    st.stop()
by_id = {r.id: r for r in train_runs}
if st.session_state.get("job-pick") not in by_id:  # first visit (or its job was deleted)
    wanted = st.query_params.get("run")
    st.session_state["job-pick"] = wanted if wanted in by_id else train_runs[0].id
picked = st.selectbox("Job", list(by_id), format_func=lambda i: run_label(by_id[i]),
                      key="job-pick")
st.query_params["run"] = picked
selected = by_id[picked]


@st.fragment(run_every=1.5)
def live(run_id: str, shown_status: str) -> None:
    store.mark_stale()
    run = store.get(run_id)
    if run.status != shown_status:
        st.rerun()  # the picker's label and the Resume button outside depend on the status
    draw(run)


def draw(run) -> None:
    run_id = run.id
    info = progress(store, run_id)
    cols = st.columns([3, 1, 1, 1])
    left = ("" if info["seconds_left"] is None else " · finishing the epoch's evaluation"
            if info["seconds_left"] < 1 else f" · about {fmt_seconds(info['seconds_left'])} left")
    cols[0].progress(info["fraction"], text=f"{run.status} · {info['label']}{left}")
    epoch_rows = store.metrics(run_id, ["test_acc", "robust_acc"])
    last = {m["name"]: m["value"] for m in epoch_rows}
    summary = run.summary or {}
    accuracy_metric(cols[1], "Clean test accuracy", last.get("test_acc"), summary.get("n_test"))
    guard_eps = (run.config.get("robust_eval") or {}).get("eps") or \
        (run.config.get("defense_args") or {}).get("eps")
    accuracy_metric(cols[2], f"Held-out robust (L∞ ε {guard_eps:.4g})" if guard_eps
                    else "Held-out robust", last.get("robust_acc"),
                    summary.get("n_held_out"),
                    help="The overfitting guard's robust accuracy (APGD-CE, as strong as the "
                         "audit's first stage; runs before 2026-12-05 used PGD) on training "
                         "images held out from training; it picks the best epoch, so it never "
                         "sees test images.")
    n_test = summary.get("n_test")
    cols[3].metric("Test images", f"{n_test:,}" if n_test else "—")
    if run.status in ("running", "queued"):
        if cols[0].button("Cancel", icon=":material/stop:", key=f"cancel-{run_id}"):
            store.request_cancel(run_id)
            st.toast("Cancel requested; the job stops after its current step.")
    elif run.status == "failed":
        st.error(f"This run failed: {run.error}", icon=":material/error:")
    elif run.status == "cancelled":
        st.warning(f"This run was {run.error}", icon=":material/stop_circle:")
    for w in run.warnings:
        st.warning(w, icon=":material/warning:")
    metrics = store.metrics(run_id)
    if metrics:
        figures = training_figures(metrics, running=run.status in ("running", "queued"))
        # two columns side by side, stacked on a phone's narrow screen
        for col, fig, name in zip(st.columns(2), figures, ("loss", "accuracy")):
            col.plotly_chart(fig, width="stretch", key=f"curve-{run_id}-{name}-{len(metrics)}")
    else:
        st.caption("Waiting for the first steps…")
    if run.status in ("completed", "failed", "cancelled"):
        st.session_state["finished_" + run_id] = True


run = store.get(selected.id)
if run.status in ("running", "queued"):
    live(run.id, run.status)
else:
    draw(run)  # a finished run does not change: drawn once, not every 1.5 s
b1, b2, _ = st.columns([1, 1, 4])
if resumable(run):
    if b1.button("Resume from last checkpoint", icon=":material/replay:"):
        try:
            resume(store, run.id)
            st.rerun()
        except Exception as err:
            show_error(err)
if b2.button("Clone into form", icon=":material/content_copy:"):
    st.session_state["clone_from"] = run.id
    st.rerun()
with st.expander("Manage this run: rename, tag, download its weights, export, delete it"):
    m1, m2, m3 = st.columns([2, 1, 1])
    new_name = m1.text_input("Name", run.name or "", key=f"name-{run.id}")
    new_tags = m1.text_input("Tags (comma-separated)", ", ".join(run.tags),
                             key=f"tags-{run.id}", help="Short words to group runs by, such as "
                             "baseline or mnist; the lab table and `runs --tag` filter by them")
    if m1.button("Save name and tags", icon=":material/edit:"):
        try:
            store.rename(run.id, new_name)
            store.set_tags(run.id, new_tags.split(","))
            st.rerun()
        except Exception as err:
            show_error(err)
    weights = weights_file(run.id)
    if weights:
        m2.download_button("Download weights", weights[0], weights[1],
                           "application/octet-stream", icon=":material/download:",
                           help="a zip of model.safetensors and its JSON sidecar; unzip and "
                                "load it with core.prediction.load_model")
    if run.status == "completed" and m2.button(
            "Export to TensorBoard", icon=":material/monitoring:", key=f"tb-{run.id}",
            help="Training scalars, evaluations, audits (stages and indicators) and curves as "
                 "event files"):
        try:
            folder, count = export_tensorboard(store, run.id)
            m2.success(f"{count} tags in `{folder}`; view: `tensorboard --logdir "
                       f"{folder.rsplit('/', 1)[0]}`")
        except Exception as err:
            show_error(err)
    sure = m3.checkbox("Yes, delete", help="Deletes the run with its evaluations, attacks, "
                       "audits and all their files",
                       key=f"sure-{run.id}")
    if m3.button("Delete", icon=":material/delete:", disabled=not sure):
        try:
            gone = delete_run(store, run.id)
            st.session_state.pop("job-pick", None)
            st.query_params.pop("run", None)
            st.toast(f"Deleted {len(gone)} run(s)")
            st.rerun()
        except Exception as err:
            show_error(err)
with st.expander("Configuration"):
    st.json(run.config)
with st.expander("All runs"):
    # the result column holds the sentence that matters: it gets the room, the rest shrink
    st.dataframe(runs_frame(store), hide_index=True, width="stretch", column_config={
        "result": st.column_config.TextColumn(width="large"),
        "id": st.column_config.TextColumn(width="small")})
