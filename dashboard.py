"""RobustLab dashboard: ``streamlit run dashboard.py``. Router and shared frame only; every
computation lives in ``core``, and long work runs in worker processes.

``streamlit run`` imports this file to find ``app``: the server, with this same file as the
script each browser session runs (as ``__main__``: the router in :func:`main`)."""
import streamlit as st


def main() -> None:
    """The router: page configuration, the sidebar, the chosen page."""
    from core import catalog
    from core.app.runs import device_label
    from core.paths import InputError, data_dir
    from pages.common import favicon, get_store as store, warm_up

    # the icon is an image drawn here: a named icon would make the browser fetch it from a CDN
    st.set_page_config(page_title="RobustLab", page_icon=favicon(), layout="wide")
    pages = [
        st.Page("pages/train.py", title="Train", icon=":material/model_training:",
                default=True),
        st.Page("pages/import.py", title="Import", icon=":material/upload_file:"),
        st.Page("pages/evaluate.py", title="Evaluate", icon=":material/grid_on:"),
        st.Page("pages/attack.py", title="Attack", icon=":material/bolt:"),
        st.Page("pages/robustness.py", title="Robustness", icon=":material/show_chart:"),
        st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
    ]

    @st.fragment(run_every=3)
    def running_jobs() -> None:
        store().mark_stale()
        active = store().list_runs(status="running") + store().list_runs(status="queued")
        st.caption(f"Jobs running: {len(active)}")
        for run in active[:6]:
            what, stop = st.columns([4, 1], vertical_alignment="center")
            what.caption(f":material/autorenew: {run.kind} · {run.name or run.id[-9:]}")
            if stop.button("", icon=":material/stop_circle:", key=f"side-cancel-{run.id}",
                           help=f"Cancel this {run.kind} job", type="tertiary"):
                store().request_cancel(run.id)

    navigation = st.navigation(pages)
    with st.sidebar:
        st.markdown("### :material/shield: RobustLab")
        st.caption("Train classifiers, then find out how easily they are fooled.")
        try:
            found = catalog.available()
            st.caption(f"Data folder: `{data_dir()}`")
            for name in ("mnist", "cifar10"):
                icon = ":material/check_circle:" if name in found else ":material/cancel:"
                st.caption(f"{icon} {name}: {found.get(name, 'not found (downloads on first use)')}")
        except InputError as err:  # ROBUSTLAB_DATA names a file: say so, keep the pages usable
            st.error(str(err))
        st.caption(f"Device: {device_label()}")
        running_jobs()
    try:
        navigation.run()
    finally:
        # after the page is drawn (also when it stops early), so the first visit does not
        # share the CPU with it
        warm_up()


if __name__ == "__main__":
    main()
else:  # imported by `streamlit run` (or an ASGI server): the server itself
    from starlette.middleware import Middleware

    from core.app.serving import BackendBaseUrl

    # a direct load of /attack would otherwise probe /attack/_stcore/... first (two 404s)
    app = st.App(__file__, middleware=[Middleware(
        BackendBaseUrl, base_path=st.get_option("server.baseUrlPath") or "")])
