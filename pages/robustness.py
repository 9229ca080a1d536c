"""Robustness: the audit (AutoAttack cascade and indicators of attack failure: launch, the
waterfall filling stage by stage, the traffic lights, the examples each stage broke), and
accuracy-versus-epsilon curves of several models and attacks with the seed-style table and a
CSV download. Both launch background jobs."""
import streamlit as st

from core.confidence import text as accuracy_text
from core.app.curves import curve_of, launch_curve
from core.figures import breaking_points_figure, robustness_figure, waterfall_figure
from core.attacks import ATTACKS, MINIMUM_NORM
from core.app.robustness import (STAGE_NAMES, audit_examples, audit_runs, audit_view,
                                 card_files, launch_audit, launch_sweep, sweep_curves,
                                 sweep_display)
from core.app.runs import eps_label, parse_budgets, progress, resumable, resume, run_label
from core.jobs.specs import DEFAULT_BUDGETS, AuditSpec, CurveSpec, SweepSpec
from core.paths import InputError
from core.threat import standard_threat
from pages.common import (downloads, get_store, job_bar, pick_run, require_trained_runs,
                          show_error)

store = get_store()
st.title("Robustness")
runs = require_trained_runs(store)
SHOWN = 8
LIGHT_COLOURS = {"pass": "#16a34a", "warn": "#ea580c", "fail": "#dc2626"}


def audit_form():
    """The launch form; returns the model it is set to (the page's ?model=)."""
    st.markdown("**Audit a model**: APGD-CE → APGD-T → FAB-T → Square (standard) or the "
                "first two (fast), each on the points still robust, then ten checks for "
                "attack failure.")
    # model and norm outside the form: the epsilon offered is the field's budget for them
    c1, c2 = st.columns([4, 1])
    with c1:
        model = pick_run("Model", runs, "model")
    norm = c2.selectbox("Norm", ["linf", "l2"], key="audit-norm")
    dataset = model.config["dataset"]
    standard = standard_threat(dataset, norm)
    with st.form("audit-form", border=False):
        c3, c4, c5 = st.columns(3)
        eps = c3.number_input("Epsilon (pixels)", 0.0, 100.0, standard.eps, step=0.01,
                              format="%.4f", key=f"audit-eps-{dataset}-{norm}",
                              help=f"{standard.label()} is the budget usually reported for "
                              f"{dataset} under this norm")
        version = c4.selectbox("Version", ["standard", "fast"], key="audit-version")
        n = c5.number_input("Test images", 10, 10000, AuditSpec.n, step=100, key="audit-n")
        go = st.form_submit_button("Run audit", type="primary", icon=":material/verified:")
    if go:
        try:
            st.query_params["audit"] = launch_audit(store, model.id, norm, float(eps), version,
                                                    int(n))
            st.toast(f"Audit launched at {norm} eps {eps_label(float(eps))}")
        except Exception as err:
            show_error(err)
    return model


def model_card(audit_id: str) -> None:
    """The audit's claim as a model card in RobustBench's format, for download."""
    try:
        files = card_files(store, audit_id)
    except Exception as err:
        show_error(err)
        return
    if not files:
        return
    st.caption("Model card: RobustBench's fields plus the exact images, intervals, waterfall, "
               "indicators and hashes; anyone re-runs it with `python -m core verify "
               "card.json --weights FILE`.")
    for column, (name, text) in zip(st.columns(4), files):
        column.download_button(f"Model card: {name}", text, file_name=f"{audit_id}-{name}",
                               mime="application/json" if name.endswith(".json") else
                               "text/markdown", icon=":material/badge:",
                               key=f"card-{audit_id}-{name}")


def pick_audit(model):
    audits = audit_runs(store)
    if not audits:
        st.info("No audits yet: launch one above.")
        return None
    # only this model's audits: another model's under this model's form would read as its own
    audits = [r for r in audits if r.config["model_run"] == model.id]
    if not audits:
        st.info(f"{run_label(model)} has no audit yet: launch one above. (Other models' "
                "audits: pick their model.)")
        st.query_params.pop("audit", None)
        return None
    ids = [r.id for r in audits]
    wanted = st.query_params.get("audit")
    index = ids.index(wanted) if wanted in ids else 0
    choice = st.selectbox("Audit", audits, index=index,
                          format_func=lambda r: f"{r.config['version']} at {r.config['norm']} "
                          f"eps {eps_label(r.config['eps'])} of "
                          f"{run_label(store.get(r.config['model_run']))} · {r.id[-9:]}")
    st.query_params["audit"] = choice.id
    return choice


@st.fragment(run_every=2.0)
def audit_live(run_id: str) -> None:
    if store.get(run_id).status not in ("running", "queued"):
        st.rerun()  # done: the page draws the waterfall, indicators and examples once
    waterfall(run_id)


def waterfall(run_id: str) -> None:
    view = audit_view(store, run_id)
    if view["status"] in ("running", "queued"):
        info = progress(store, run_id)
        coming = view["pending"][0] if view["pending"] else "the indicators"
        st.progress(info["fraction"], text=f"{view['status']}: {info['label']} · next "
                    f"{STAGE_NAMES.get(coming, coming)}")
    elif view["status"] == "cancelled":  # asked for, not a fault: what is kept, what to do
        why = (view["error"] or "").split(";")[0].removeprefix("cancelled").strip(" ()")
        st.warning(f"Audit cancelled ({why or 'cancel requested'}). The batches it finished "
                   "are kept: **Resume audit** continues from them.",
                   icon=":material/pause_circle:")
    elif view["status"] != "completed":
        st.error(f"audit {view['status']}: {view['error'] or ''}", icon=":material/error:")
    if view["stages"]:
        st.plotly_chart(waterfall_figure(view["stages"], view["pending"],
                                         f"{view['version']} audit at {view['threat_label']}, "
                                         f"{view['n']:,} test images (whiskers: 95% "
                                         "intervals)" if view["status"] == "completed" else
                                         f"{view['n']:,} test images", STAGE_NAMES,
                                         n=view["n"] if view["status"] == "completed" else None),
                        width="stretch")


def audit_results(run_id: str) -> None:
    view = audit_view(store, run_id)
    if view["status"] != "completed":
        return
    st.markdown(f"**Robust accuracy {accuracy_text(view['robust_acc'], view['n'])}** at "
                f"{view['threat_label']} on {view['n']:,} test images ({view['version']} "
                f"cascade; 95% interval in brackets) · verdict: **{view['verdict']}**")
    if view["version"] == "fast" and view["verdict"] == "doubtful":
        st.caption("A fast audit is at best doubtful: Square, the black-box attack that checks "
                   "for gradient masking, runs only in the standard audit. Run the standard "
                   "version for a trusted verdict.")
    if view["verdict"] == "nothing left to check":
        st.caption("Every image was broken, so the indicators that look at surviving points "
                   "had nothing to examine: 0% is the model's robust accuracy here, not a "
                   "vouched-for measurement of a robust model.")
    st.markdown("**Indicators of attack failure**")
    for c in view["indicators"]:
        light, text = st.columns([1, 14], vertical_alignment="center")
        light.html(f'<div title="{c["status"]}" style="width:1.6rem;height:1.6rem;'
                   f'border-radius:50%;background:{LIGHT_COLOURS[c["status"]]}"></div>'
                   f'<div style="font-size:0.75rem">{c["status"]}</div>')
        text.markdown(f"**{c['name']}**: {c['detail']}")
    shown = audit_examples(run_id)
    if not shown:
        return
    for stage, items in shown["broken"].items():
        if items:
            st.markdown(f"**Broken by {STAGE_NAMES.get(stage, stage)}** (clean above, "
                        "adversarial below; true → predicted)")
            cols = st.columns(SHOWN)  # a fixed grid: one example is not drawn page-wide
            for col, item in zip(cols, items):
                col.image(item["clean"], caption=item["caption"], width="stretch")
                col.image(item["adversarial"], width="stretch")
    if shown["survived"]:
        st.markdown("**Survived every stage**")
        cols = st.columns(SHOWN)
        for col, item in zip(cols, shown["survived"]):
            col.image(item["clean"], caption=item["caption"], width="stretch")


audit_tab, sweep_tab, curve_tab = st.tabs(["Audit", "Sweeps", "Curves"])
with audit_tab:
    with st.container(border=True):
        model = audit_form()
    picked = pick_audit(model)
    if picked is not None:
        status = store.get(picked.id).status
        if status in ("running", "queued"):
            if st.button("Cancel audit", key="audit-cancel", icon=":material/stop_circle:",
                         help="Stop it; its finished batches are kept, so it can resume"):
                store.request_cancel(picked.id)
            audit_live(picked.id)  # polls until the audit ends
        else:
            if resumable(store.get(picked.id)) and st.button(
                    "Resume audit", key="audit-resume", icon=":material/replay:",
                    help="Continue from the batches it finished before it stopped"):
                try:
                    resume(store, picked.id)
                    st.rerun()
                except Exception as err:
                    show_error(err)
            waterfall(picked.id)  # a finished audit is drawn once, not every 2 s
            downloads(picked.id, ["audit.json", "audit.csv", "audit.md"])
            model_card(picked.id)
            audit_results(picked.id)


@st.fragment(run_every=2.0)
def active_sweeps() -> None:
    running = [r for r in store.list_runs(kind="sweep") if r.status in ("running", "queued")]
    for r in running:
        info = progress(store, r.id)
        bar, stop = st.columns([6, 1], vertical_alignment="bottom")
        bar.progress(info["fraction"], text=f"sweep of "
                     f"{run_label(store.get(r.config['model_run']))}: {info['label']}")
        if stop.button("Cancel", key=f"sweep-cancel-{r.id}", icon=":material/stop_circle:"):
            store.request_cancel(r.id)
    if st.session_state.get("had_running") and not running:
        st.session_state["had_running"] = False
        st.rerun()
    st.session_state["had_running"] = bool(running)


def sweep_form() -> None:
    with st.form("sweep-form"):
        st.markdown("**Launch a sweep**")
        c1, c2 = st.columns([3, 2])
        models = c1.multiselect("Models", runs, default=runs[:1], format_func=run_label)
        attacks = c2.multiselect("Attacks", [a for a in ATTACKS if a not in MINIMUM_NORM],
                                 default=["noise", "fgsm", "pgd"])
        c1, c2, c3 = st.columns(3)
        eps_text = c1.text_input("Epsilons (pixel units)",
                                 ", ".join(f"{b:g}" for b in DEFAULT_BUDGETS))
        n = c2.number_input("Test images", 10, 10000, SweepSpec.n, step=100)
        steps = c3.number_input("PGD steps", 1, 200, ATTACKS["pgd"].steps)
        go = st.form_submit_button("Run sweep", type="primary", icon=":material/play_arrow:")
    if go:
        try:
            budgets = parse_budgets(eps_text)
            if not models or not attacks:
                raise InputError("pick at least one model and one attack")
            before = {r.id for r in store.list_runs(kind="sweep")}
            ids = [launch_sweep(store, m.id, attacks, budgets, int(n), int(steps))
                   for m in models]
            new = [i for i in ids if i not in before]
            st.toast(f"Launched {len(new)} sweep job(s)" + (
                f"; {len(ids) - len(new)} identical one(s) already there, not started again"
                if len(new) < len(ids) else ""))
        except Exception as err:
            show_error(err)


def sweep_results() -> None:
    done = [r for r in store.list_runs(kind="sweep", status="completed")]
    if not done:
        st.info("No completed sweeps yet: launch one above.")
        return
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
        table = table.drop(columns=["per_class_adv_acc", "confusion_adv"], errors="ignore")
        st.dataframe(sweep_display(table), hide_index=True, width="stretch")
        st.caption("Robust: correct before and after the attack. Sizes are those of the flipped "
                   "examples; — where none flipped. A sweep runs each attack on its own: the "
                   "audit (its cascade) gives the strongest figure at one epsilon.")
        st.download_button("Download CSV", table.round(4).to_csv(index=False),
                           "robustness.csv", "text/csv", icon=":material/download:")


def stopped_sweeps() -> None:
    """Cancelled or failed sweeps, each with its Resume (it continues from its finished
    batches)."""
    for r in store.list_runs(kind="sweep"):
        if r.status not in ("cancelled", "failed") or not resumable(r):
            continue
        note, again = st.columns([6, 1], vertical_alignment="center")
        note.caption(f"sweep of {run_label(store.get(r.config['model_run']))} · {r.id[-9:]} "
                     f"{r.status}: {r.error or ''}")
        if again.button("Resume", key=f"sweep-resume-{r.id}", icon=":material/replay:"):
            try:
                resume(store, r.id)
                st.rerun()
            except Exception as err:
                show_error(err)


with sweep_tab:
    sweep_form()
    active_sweeps()
    stopped_sweeps()
    sweep_results()


def curves_tab() -> None:
    """Launch curves, follow them (with Cancel), and the breaking points of the models'
    curves side by side: the histogram and each model's median smallest norm."""
    with st.form("curve-form"):
        st.markdown("**Robustness curves**: FMN and FAB find each test image's smallest "
                    "adversarial perturbation, so robust accuracy is known at every epsilon.")
        c1, c2, c3 = st.columns([4, 1, 1])
        models = c1.multiselect("Models", runs, default=runs[:1], format_func=run_label,
                                key="curve-models")
        norm = c2.selectbox("Perturbation measure", ["linf", "l2"], key="curve-form-norm")
        n = c3.number_input("Test images", 10, 10000, CurveSpec.n, step=100, key="curve-n")
        go = st.form_submit_button("Compute curves", type="primary", icon=":material/timeline:")
    if go:
        try:
            if not models:
                raise InputError("pick at least one model")
            for m in models:
                launch_curve(store, m.id, norm, int(n))
            st.toast(f"{len(models)} curve job(s) on their way")
        except Exception as err:
            show_error(err)
    active_curves()
    stopped_curves()
    done = {r.id: r for r in store.list_runs(kind="curve", status="completed")}
    if not done:
        st.info("No completed curves yet: compute one above.")
        return
    # a curve that finished since the last look is shown by itself, beside the user's choice
    known = st.session_state.setdefault("curves-known", set(done))
    fresh = [i for i in done if i not in known]
    if "curves-shown" not in st.session_state:
        st.session_state["curves-shown"] = list(done)[:3]
    if fresh:
        st.session_state["curves-shown"] = [i for i in st.session_state["curves-shown"]
                                            if i in done] + fresh
        known.update(fresh)
    chosen = st.multiselect("Curves to show", list(done), key="curves-shown",
                            format_func=lambda i: f"{done[i].config['norm']} · "
                            f"{run_label(store.get(done[i].config['model_run']))} · "
                            f"{done[i].summary['n']:,} images · {i[-9:]}")
    by_norm: dict[str, dict] = {}
    for r in (done[i] for i in chosen):
        model = store.get(r.config["model_run"])
        by_norm.setdefault(r.config["norm"], {})[model.name or model.id[-9:]] = curve_of(r)
    for norm_, curves in by_norm.items():
        st.markdown(f"**Breaking points ({'L∞' if norm_ == 'linf' else 'L2'})**")
        st.plotly_chart(breaking_points_figure(curves), width="stretch")
        st.table([{"model": name, "images": c.n,
                   "clean accuracy (95% interval)": accuracy_text(c.clean_accuracy(), c.n),
                   "median smallest norm": "above every norm found" if c.median() == float(
                       "inf") else f"{c.median():.4f}",
                   "never broken": sum(1 for v in c.norms if v == float("inf"))}
                  for name, c in curves.items()])


def stopped_curves() -> None:
    """The latest cancelled or failed curves, each with what stopped it and its Resume (its
    finished batches are kept)."""
    stopped = [r for r in store.list_runs(kind="curve") if r.status in ("cancelled", "failed")]
    for r in stopped[:3]:
        text, button = st.columns([5, 1], vertical_alignment="center")
        why = (r.error or r.status).split(";")[0]
        text.warning(f"{r.config['norm']} curve of {run_label(store.get(r.config['model_run']))}"
                     f" on {r.config['n']:,} images {r.status}: {why}",
                     icon=":material/pause_circle:")
        if resumable(r) and button.button("Resume", key=f"curve-resume-{r.id}",
                                          icon=":material/replay:",
                                          help="Continue from the batches it finished"):
            try:
                resume(store, r.id)
                st.rerun()
            except Exception as err:
                show_error(err)


@st.fragment(run_every=2.0)
def active_curves() -> None:
    running = [r for r in store.list_runs(kind="curve") if r.status in ("running", "queued")]
    for r in running:
        job_bar(store, r.id, f"{r.config['norm']} curve of "
                f"{run_label(store.get(r.config['model_run']))}")
    if st.session_state.get("had_curves") and not running:
        st.session_state["had_curves"] = False
        st.rerun()
    st.session_state["had_curves"] = bool(running)


with curve_tab:
    curves_tab()
