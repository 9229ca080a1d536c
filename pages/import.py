"""Import: bring in a model trained elsewhere. The form takes an upload or a path on the
server, an architecture and the model's input convention; Check runs the checks and the clean
accuracy in a child process, Import stores it as a model run every other page takes."""
import streamlit as st

from core.app.importing import (ARCHIVE, LAB_AND_ZOO, MODULE, PRESETS, SUFFIXES, TORCHVISION,
                                UPLOAD_LIMIT_MB, check, form_spec, launch, save_upload,
                                server_path)
from core.app.runs import progress
from core.confidence import text as accuracy_text
from core.paths import artifacts_dir, data_dir
from pages.common import get_store, show_error

store = get_store()
st.title("Import a model")
st.markdown("Bring a classifier trained anywhere: its weights (safetensors, or a PyTorch "
            "`.pt`/`.pth` checkpoint, read with `weights_only=True` so nothing in it runs) with "
            "its architecture, or a TorchScript or exported-program archive, which carries its "
            "own code. Attacks keep working on pixels in [0, 1]: the lab feeds the model "
            "(pixels × scale − mean) / std, as it was trained.")

ARCHS = [ARCHIVE] + LAB_AND_ZOO + [TORCHVISION, MODULE]
c1, c2 = st.columns(2)
where = c1.radio("The file", ["upload", "a path on the server"], horizontal=True,
                 key="import-where")
dataset = c2.selectbox("Dataset it classifies", ["mnist", "cifar10"], key="import-dataset")
if where == "upload":
    upload = st.file_uploader(f"Model file (at most {UPLOAD_LIMIT_MB} MB)", key="import-upload",
                              type=list(SUFFIXES), max_upload_size=UPLOAD_LIMIT_MB)
    path_text = None
else:
    upload = None
    path_text = st.text_input("Path on the server", key="import-path",
                              placeholder=f"{data_dir()}/models/my_model.pt",
                              help=f"Inside the data folder ({data_dir()}) or the artifacts "
                              f"folder ({artifacts_dir()})")
a1, a2 = st.columns(2)
arch_choice = a1.selectbox("Architecture", ARCHS, key="import-arch",
                           help="wrn-28-10, wrn-34-10, dm-wrn-70-16 and rb-preact-resnet18 "
                           "use RobustBench's parameter names, so its checkpoints load as they "
                           "are")
arch_text = module_text = None
if arch_choice == TORCHVISION:
    arch_text = a2.text_input("torchvision.models name", "resnet18", key="import-tv")
elif arch_choice == MODULE:
    module_text = a2.text_input("Code on the server (it runs: import only code you trust)",
                                key="import-module",
                                placeholder=f"{data_dir()}/models/net.py:build")
n1, n2, n3 = st.columns([2, 3, 1])
preset = n1.selectbox("Normalization the model expects", list(PRESETS), key="import-preset")
chosen = PRESETS[preset] or ([], [])
if preset == "custom":
    mean_text = n2.text_input("mean, std (one or one per channel)", "0.5; 0.5",
                              key="import-norm", help="e.g. 0.5,0.5,0.5; 0.25,0.25,0.25")
else:
    mean_text = "; ".join(",".join(f"{v:g}" for v in part) for part in chosen) if chosen[0] \
        else ""
    n2.text_input("mean; std", mean_text, disabled=True, key=f"import-norm-{preset}")
scale = n3.radio("Input scale", [1, 255], horizontal=True, key="import-scale",
                 help="255: the model takes pixels in [0, 255] (mean and std in those units)")
o1, o2 = st.columns(2)
classes_text = o1.text_input("Class order of its outputs (optional)", key="import-classes",
                             help="Comma-separated, when it differs from the dataset's")
name = o2.text_input("Name (optional)", key="import-name")


def _spec():
    if upload is not None:
        file = str(save_upload(upload.name, upload.getvalue()))
    elif path_text:
        file = server_path(path_text)
    else:
        raise ValueError("choose a model file first (upload one or give its path)")
    module = None
    if module_text:
        path, _, fn = module_text.rpartition(":")
        module = f"{server_path(path, 'code file')}:{fn}"
    arch = arch_text if arch_text else (arch_choice if arch_choice in LAB_AND_ZOO else None)
    mean = std = None
    if mean_text:
        parts = [p.strip() for p in mean_text.split(";")]
        if len(parts) != 2:
            raise ValueError("type the mean and the std separated by ';'")
        mean, std = ([float(v) for v in p.split(",")] for p in parts)
    classes = [c.strip() for c in classes_text.split(",")] if classes_text.strip() else None
    return form_spec({"file": file, "dataset": dataset, "arch": arch, "module": module,
                      "mean": mean, "std": std, "input_scale": int(scale), "classes": classes})


b1, b2 = st.columns(2)
if b1.button("Check", icon=":material/fact_check:", key="import-check"):
    try:
        spec = _spec()
        with st.spinner("Checking the model and measuring its clean accuracy..."):
            st.session_state["import-result"] = (spec.to_dict(), check(spec))
    except Exception as err:
        show_error(err)
result = st.session_state.get("import-result")
if result:
    config, outcome = result
    if outcome.get("ok"):
        for line in outcome["lines"]:
            st.markdown(f":material/check: {line}" if not line.startswith("flagged")
                        else f":material/flag: {line}")
        st.metric("Clean accuracy", f"{outcome['accuracy']:.2%}")
        st.caption(f"95% interval {outcome['interval'][0]:.1%}-{outcome['interval'][1]:.1%} of "
                   f"{outcome['n']:,} test images ({outcome['source']})")
        if outcome.get("warning"):
            st.warning(outcome["warning"])
        if b2.button("Import", type="primary", icon=":material/input:", key="import-go"):
            try:
                run_id = launch(store, form_spec(config), name=name)
                st.session_state["import-run"] = run_id
                st.session_state.pop("import-result")
            except Exception as err:
                show_error(err)
    else:
        st.error(f"Refused: {outcome['error']}", icon=":material/block:")
else:
    b2.button("Import", disabled=True, key="import-go-off",
              help="Check the model first: its checks and clean accuracy show here")


@st.fragment(run_every=1.0)
def import_status() -> None:
    run_id = st.session_state.get("import-run")
    if not run_id:
        return
    info = progress(store, run_id)
    run = store.get(run_id)
    if info["status"] in ("queued", "running"):
        st.progress(info["fraction"], text=f"Importing: {info['label']}")
    elif info["status"] == "completed":
        s = run.summary
        st.success(f"Imported as {run.name or run.id}: clean accuracy "
                   f"{accuracy_text(s['clean_acc'], s['n'])} on {s['n']:,} test images. "
                   "It is now on every page: [evaluate](/evaluate), [attack](/attack), "
                   "[audit](/robustness), [compare](/compare).", icon=":material/check_circle:")
    else:
        st.error(f"Import {info['status']}: {info['error']}")


import_status()
