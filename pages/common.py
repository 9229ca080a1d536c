"""Small helpers shared by the pages (presentation only)."""
from __future__ import annotations

import threading

import streamlit as st

from core.confidence import interval_text
from core.paths import InputError, artifacts_dir
from core.progress import fmt_duration as fmt_seconds  # noqa: F401  (the pages' name for it)
from core.app.preload import import_libraries
from core.jobs import spare
from core.jobs.store import RunStore


@st.cache_resource
def _store_at(path: str) -> RunStore:
    return RunStore(path)


@st.cache_resource(show_spinner=False)
def warm_up() -> threading.Thread:
    """Start importing the pages' heavy libraries in the background, once per server, so that
    no page's first visit waits for them, and have a spare worker waiting for the next
    job. The libraries are third-party and never import the pages' modules (and the spare's
    module is imported here), so while a script waits for one of them the other thread never
    waits on the script."""
    store = get_store()

    def warm() -> None:
        import_libraries()
        # the next job's worker, its imports done while nobody waits for them
        spare.prepare(spare.environment(store.path))

    thread = threading.Thread(target=warm, name="robustlab-warm-up", daemon=True)
    thread.start()
    return thread


def get_store() -> RunStore:
    """The server process's run-store connection (one per database file)."""
    return _store_at(str(artifacts_dir() / "runs.db"))


def pick_run(label: str, runs: list, key: str, help: str | None = None):
    """A selectbox over runs that remembers its choice in the URL (?key=run_id)."""
    from core.app.runs import run_label

    if not runs:
        return None
    ids = [r.id for r in runs]
    wanted = st.query_params.get(key)
    index = ids.index(wanted) if wanted in ids else 0
    choice = st.selectbox(label, runs, index=index, format_func=run_label, key=f"pick-{key}",
                          help=help)
    st.query_params[key] = choice.id
    return choice


def require_trained_runs(store: RunStore) -> list:
    """Completed model runs (trained or imported), or a friendly note and a stop when there
    are none."""
    from core.app.runs import trained_runs

    runs = trained_runs(store)
    if not runs:
        st.info("No models yet. Train one on the **Train** page, or bring your own on the "
                "**Import** page.")
        st.stop()
    return runs


def show_error(err: Exception) -> None:
    """A readable message, never a traceback."""
    if isinstance(err, InputError):
        st.error(str(err), icon=":material/error:")
    else:
        st.error(f"{type(err).__name__}: {err}", icon=":material/error:")


@st.cache_resource
def favicon():
    """A small shield drawn locally, so no request leaves the machine for the page icon."""
    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.polygon([(32, 4), (58, 14), (54, 40), (32, 60), (10, 40), (6, 14)], fill="#2563eb")
    draw.line([(20, 32), (29, 41), (45, 23)], fill="white", width=6)
    return image


def show_table(frame, percent: list[str] = (), places: dict[str, int] | None = None) -> None:
    """A table with percentages and rounded numbers as text, "—" where a value is missing
    (Streamlit draws a missing number as "None" whatever a Styler says)."""
    shown = frame.copy()
    formats = {c: "{:.2%}" for c in percent}
    formats.update({c: f"{{:.{k}f}}" for c, k in (places or {}).items()})
    for column, fmt in formats.items():
        if column in shown:
            shown[column] = [fmt.format(v) if isinstance(v, (int, float)) and v == v else "—"
                             for v in shown[column]]
    st.dataframe(shown.astype(object).where(shown.notna(), "—"), hide_index=True,
                 width="stretch")


def headline(column, label: str, value: str, note: str = "") -> None:
    """A headline number drawn as Markdown, in st.metric's type sizes. Streamlit paints
    st.metric with a page's lazily loaded charts and tables (a second or more on a full load);
    Markdown is painted as soon as it arrives."""
    column.markdown(f'<p style="font-size:0.875rem;margin:0">{label}</p>'
                    f'<p style="font-size:2.25rem;line-height:1.3;margin:0">{value}</p>'
                    + (f'<p style="font-size:0.8rem;opacity:0.6;margin:0">{note}</p>'
                       if note else ""), unsafe_allow_html=True)


def accuracy_metric(column, label: str, share: float | None, n: int | None,
                    delta: str | None = None, help: str | None = None) -> None:
    """An accuracy as st.metric with its 95% interval and image count written under it, so
    that no figure is shown without how sure it is ("—" when there is no figure yet)."""
    if share is None:
        column.metric(label, "—", help=help)
        return
    column.metric(label, f"{share:.2%}", delta=delta, delta_arrow="off", help=help)
    if n:
        column.caption(f"95% interval {interval_text(share, n)} of {n:,} images")


def success_metric(column, rate: float | None, clean_acc: float | None, n: int | None,
                   help: str | None = None) -> None:
    """An attack's success rate with its 95% interval and denominator (the images classified
    correctly) under it."""
    from core.confidence import success_interval_text

    if rate is None:
        column.metric("Attack success rate", "—", help=help)
        return
    column.metric("Attack success rate", f"{rate:.2%}", help=help)
    note = success_interval_text(rate, clean_acc or 0.0, n or 0) if n else None
    if note:
        column.caption(f"95% interval {note}")


def time_left(info: dict) -> str:
    """' · about 2 min left' from a job's progress; never '0 s' while work remains."""
    seconds = info.get("seconds_left")
    if seconds is None:
        return ""
    return " · finishing" if seconds < 1 else f" · about {fmt_seconds(seconds)} left"


def job_bar(store: RunStore, run_id: str, what: str) -> None:
    """A running job's progress bar, its time left and its Cancel button."""
    from core.app.runs import progress

    info = progress(store, run_id)
    bar, stop = st.columns([6, 1], vertical_alignment="bottom")
    bar.progress(info["fraction"], text=f"{what}: {info['label']}{time_left(info)}")
    if stop.button("Cancel", key=f"cancel-{run_id}", icon=":material/stop_circle:",
                   help="Stop this job; what it finished is kept"):
        store.request_cancel(run_id)
        st.toast("Cancel requested; the job stops within a few seconds.")


def figures_at(store: RunStore, model_run: str, threat) -> None:
    """Every robust accuracy stored for the model at this threat model, the audit first, each
    with the reason it differs from the first: one answer per question."""
    from core.app.answers import answers

    rows = answers(store, model_run, threat)
    if not any(r["source"].startswith("audit") for r in rows):
        st.caption(f"No audit of this model at {threat.label()} yet: the Robustness page's "
                   "audit gives the strongest answer, and checks the figures here.")
        if len(rows) < 2:
            return
    flagged = any(r["overstates"] for r in rows)
    with st.expander(f"{len(rows)} robust accuracies stored for this model at {threat.label()}"
                     + (", the audit first: it contradicts some" if flagged else
                        ", the strongest first"), expanded=flagged):
        st.table([{"source": r["source"], "robust accuracy (95% interval)": r["figure"],
                   "images": f"{r['n']:,}", "why it differs": r["why"]} for r in rows])


MIME = {".json": "application/json", ".csv": "text/csv", ".md": "text/markdown",
        ".png": "image/png"}


def downloads(run_id: str, names: list[str]) -> None:
    """A download button for each of the run's result files that exists."""
    from core.app.runs import run_files

    files = run_files(run_id, names)
    for column, (name, payload) in zip(st.columns(max(len(files), 1) + 2), files):
        column.download_button(name, payload, file_name=f"{run_id}-{name}",
                               mime=MIME.get(name[name.rfind("."):], "application/octet-stream"),
                               icon=":material/download:", key=f"download-{run_id}-{name}")


def _leave_legacy_mode() -> None:
    # When a deep link (/attack) is the server's first request, Streamlit runs the file from
    # pages/ directly (its legacy multipage mode) and the router in dashboard.py never runs:
    # no sidebar, no wide layout, a file-name page list. st.navigation clears this same flag;
    # clearing it here and rerunning sends the request through the router.
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


_leave_legacy_mode()
