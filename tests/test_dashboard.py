"""streamlit.testing AppTest: every page renders; the train form creates a run; the epsilon
slider carries every epsilon's numbers and its position moves the curve's marker; the gallery
filters by class."""
import pytest
from streamlit.testing.v1 import AppTest

from core.app.attack import grid_spec, launch_grid
from core.jobs.store import RunStore

from conftest import wait_for, requires_mnist

TIMEOUT = 60


def _app(page: str, **query) -> AppTest:
    at = AppTest.from_file("../dashboard.py", default_timeout=TIMEOUT)
    at.switch_page(f"pages/{page}.py")
    for k, v in query.items():
        at.query_params[k] = v
    return at


def _no_exceptions(at: AppTest) -> None:
    assert not at.exception, [e.message for e in at.exception]




@pytest.mark.parametrize("page", ["train", "import", "evaluate", "attack", "robustness",
                                  "compare"])
def test_every_page_renders_with_an_empty_store(page, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLAB_ARTIFACTS", str(tmp_path))
    at = _app(page).run()
    _no_exceptions(at)
    assert at.title[0].value


@pytest.mark.slow
@requires_mnist
def test_train_form_creates_a_run(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLAB_ARTIFACTS", str(tmp_path))
    at = _app("train").run()
    at.number_input(key="epochs").set_value(1)
    at.number_input(key="subset").set_value(500)
    at.number_input(key="test-subset").set_value(300)
    at.text_input[0].input("apptest run")
    at.button[0].click().run()
    _no_exceptions(at)
    store = RunStore()
    runs = store.list_runs(kind="train")
    assert len(runs) == 1 and runs[0].name == "apptest run"
    assert runs[0].config["epochs"] == 1 and runs[0].config["train_subset"] == 500
    assert runs[0].config["test_subset"] == 300
    assert wait_for(lambda: store.get(runs[0].id).status == "completed")
    # its clean evaluation starts when training ends, before anyone opens the Evaluate page
    assert wait_for(lambda: any(r.status == "completed" for r in
                                store.list_runs(kind="evaluate", parent=runs[0].id)))


@pytest.mark.slow
@requires_mnist
def test_pages_with_a_trained_model(mnist_model):
    _, _, run_id = mnist_model
    store = RunStore()
    for page in ("evaluate", "attack", "robustness", "compare", "train"):
        at = _app(page, model=run_id, run=run_id).run()
        _no_exceptions(at)
    # evaluation runs as a job; wait for it, then the gallery filters by class
    assert wait_for(lambda: any(r.status == "completed"
                             for r in store.list_runs(kind="evaluate", parent=run_id)))
    at = _app("evaluate", model=run_id).run()
    _no_exceptions(at)
    all_count = _gallery_count(at)
    at.selectbox(key="true-cls").set_value("3").run()
    captions = [c.value for c in at.caption if "→" in c.value]
    assert captions and all(c.startswith("**3**") for c in captions)
    assert _gallery_count(at) < all_count


@requires_mnist
def test_class_names_come_from_the_weights_sidecar_without_reading_the_dataset(mnist_model,
                                                                                monkeypatch):
    from core import data
    from core.app import evaluate as service

    _, meta, run_id = mnist_model
    run = RunStore().get(run_id)
    expected = data.load("mnist", "test").classes

    def refuse(*args, **kwargs):
        raise AssertionError("the dataset was read for its class names")

    monkeypatch.setattr(data, "load", refuse)
    assert service.classes_for_run(run) == expected == meta["classes"]


def _own_store_with_a_model(tmp_path, monkeypatch) -> tuple[RunStore, str]:
    """A store of this test's own holding one tiny trained MNIST model (its run id)."""
    from core.jobs.runner import create, execute
    from core.jobs.specs import TrainSpec

    monkeypatch.setenv("ROBUSTLAB_ARTIFACTS", str(tmp_path))
    store = RunStore()
    model = create(store, TrainSpec(dataset="mnist", epochs=1, train_subset=200,
                                    test_subset=50))
    execute(store, model, echo=False)
    return store, model


def _gallery_count(at) -> int:
    text = next(c.value for c in at.caption if "misclassified examples match" in c.value)
    return int(text.split()[0])


@requires_mnist
def test_opening_the_attack_page_starts_no_job_until_compute_is_pressed(tmp_path, monkeypatch):
    """Nothing heavy starts by itself: the page offers the grid, the button launches it, and
    a running grid has its Cancel."""
    store, model = _own_store_with_a_model(tmp_path, monkeypatch)
    at = _app("attack", model=model).run()
    _no_exceptions(at)
    assert [r.kind for r in store.list_runs()] == ["train"]
    assert at.button(key="attack-compute").label == "Compute"
    with monkeypatch.context() as m:  # launched, not run: this test needs no worker
        from core.jobs import runner

        m.setattr(runner, "start_worker", lambda *a, **k: None)
        at.button(key="attack-compute").click().run()
    grids = store.list_runs(kind="grid")
    assert len(grids) == 1 and grids[0].status == "queued"
    _no_exceptions(at)
    at.button(key="attack-cancel").click().run()
    assert store.cancel_requested(grids[0].id)  # its worker stops at its next check


@pytest.mark.slow
@requires_mnist
def test_epsilon_slider_carries_every_epsilons_accuracy_and_moves_the_marker(mnist_model):
    """The slider is drawn in the browser from the numbers the page hands it (the browser test
    moves it); here: those numbers fall with epsilon, and the position it reports back moves
    the curve's marker."""
    import json

    from core.jobs.specs import DEFAULT_GRID

    _, _, run_id = mnist_model
    store = RunStore()
    at = _app("attack", model=run_id)
    at.session_state["attack-n"] = 100  # a grid of seconds: PGD-5 on 100 images
    at.session_state["attack-pgd-steps"] = 5
    at.run()
    _no_exceptions(at)
    # Compute is offered unless this worker's store already holds the grid (tests share it)
    compute = [b for b in at.button if b.key == "attack-compute"]
    if compute:
        compute[0].click().run()
        _no_exceptions(at)
    grid = launch_grid(store, grid_spec(run_id, "pgd", {"steps": 5, "norm": "linf",
                                                        "restarts": 1}, 100))
    assert wait_for(lambda: store.get(grid.id).status == "completed", 300), store.get(grid.id).error
    at.run()
    sliders = [e for e in at.get("bidi_component")
               if e.proto.component_name == "robustlab.epsilon_slider"]
    assert len(sliders) == 1
    data = json.loads(sliders[0].proto.json)
    results = data["models"][0]["results"]
    assert len(results) == len(data["labels"]) == len(DEFAULT_GRID) and None not in results
    acc = {eps: r["adv_acc"] for eps, r in zip(DEFAULT_GRID, results)}
    assert acc[0.0] > acc[0.1] > acc[0.3]
    assert data["labels"][4] == "0.03137 (8/255)" and data["index"] == 4

    def marker() -> float:
        figure = json.loads(at.get("plotly_chart")[0].proto.spec)
        return figure["layout"]["shapes"][0]["x0"]

    assert marker() == pytest.approx(8 / 255)
    at.session_state["eps"] = {"index": len(DEFAULT_GRID) - 1}  # what the browser sends back
    at.run()
    _no_exceptions(at)
    assert marker() == pytest.approx(0.3)


def test_a_grid_finishing_while_the_page_runs_is_shown_complete(mnist_model, monkeypatch):
    """The last epsilon lands after the page read the points at its top, just before the grid
    is marked completed: the page reruns and shows every epsilon, not a progress bar stuck one
    short with nothing left to poll it (a CI failure)."""
    import core.app.attack as app_attack
    from core.jobs.specs import DEFAULT_GRID

    _, _, run_id = mnist_model
    store = RunStore()
    grid = launch_grid(store, grid_spec(run_id, "fgsm", {}, 100))
    assert wait_for(lambda: store.get(grid.id).status == "completed", 300), store.get(grid.id).error
    real, calls = app_attack.grid_summaries, []

    def late_last_point(run: str, count: int) -> list:
        calls.append(run)
        points = real(run, count)
        return points[:-1] + [None] if len(calls) == 1 else points

    monkeypatch.setattr(app_attack, "grid_summaries", late_last_point)
    at = _app("attack", model=run_id)
    at.session_state["attack-n"] = 100
    at.session_state["attack-name"] = "fgsm"
    at.run()
    _no_exceptions(at)
    assert len(calls) > 1
    assert not [p for p in at.get("progress") if "done" in p.proto.text]
    assert any(f"All {len(DEFAULT_GRID)} epsilons computed" in c.value for c in at.caption)


def test_a_failed_run_shows_its_error_on_the_train_page(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLAB_ARTIFACTS", str(tmp_path))
    store = RunStore()
    run_id = store.create_run("train", {"dataset": "mnist", "epochs": 1})
    store.set_status(run_id, "running")
    store._conn.execute("UPDATE runs SET heartbeat=0, pid=NULL WHERE id=?", (run_id,))
    at = _app("train", run=run_id).run()
    _no_exceptions(at)
    assert store.get(run_id).status == "failed"  # the page's poll marked the dead worker
    errors = [e.value for e in at.error]
    # it died before its first checkpoint: nothing to resume, and the page says so
    assert any("worker stopped unexpectedly" in e and "start it again" in e for e in errors), errors
    assert not any(b.label == "Resume from last checkpoint" for b in at.button)
    from core.paths import run_dir

    (run_dir(run_id) / "checkpoint.safetensors").write_bytes(b"weights")
    at = _app("train", run=run_id).run()
    assert any(b.label == "Resume from last checkpoint" for b in at.button)


@requires_mnist
def test_the_train_form_shows_a_defense_budget_only_with_a_defense_and_estimates_time(
        mnist_model):
    at = _app("train").run()
    labels = [n.label for n in at.number_input]
    assert "Defense epsilon (pixels)" not in labels and "Defense attack steps" not in labels
    at.selectbox(key="defense").set_value("fgsm-at").run()
    labels = [n.label for n in at.number_input]
    assert "Defense epsilon (pixels)" in labels and "Defense attack steps" not in labels
    at.selectbox(key="defense").set_value("pgd-at").run()
    assert "Defense attack steps" in [n.label for n in at.number_input]
    at.selectbox(key="defense").set_value("none").run()
    at.number_input(key="epochs").set_value(2)
    at.number_input(key="subset").set_value(12000)
    next(b for b in at.button if b.label == "Estimate the time").click().run()
    _no_exceptions(at)
    text = next(i.value for i in at.info if "Estimated training time" in i.value)
    # the session's MNIST model ran 1 epoch on 6,000 images: twice the images, twice the epochs
    assert "images/s measured by run" in text, text
    runs = RunStore().list_runs(kind="train")
    assert all(r.config.get("train_subset") != 12000 for r in runs)  # estimating launches nothing


def test_the_same_sweep_is_not_launched_twice(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLAB_ARTIFACTS", str(tmp_path))
    from core.app import robustness as service

    store = RunStore()
    model = store.create_run("train", {"dataset": "mnist", "epochs": 1})
    started = []
    monkeypatch.setattr(service.runner, "submit", lambda s, spec, parent=None: started.append(
        spec) or s.create_run(spec.kind, spec.to_dict(), parent=parent))
    first = service.launch_sweep(store, model, ["fgsm", "pgd"], [0.1, 0.2], 100, 40)
    again = service.launch_sweep(store, model, ["fgsm", "pgd"], [0.1, 0.2], 100, 40)
    other = service.launch_sweep(store, model, ["fgsm"], [0.1, 0.2], 100, 40)
    assert again == first and other != first and len(started) == 2
    store.set_status(first, "failed")  # a failed one may be started again
    assert service.launch_sweep(store, model, ["fgsm", "pgd"], [0.1, 0.2], 100, 40) != first


@requires_mnist
def test_a_run_is_renamed_downloaded_and_deleted_with_what_belongs_to_it(tmp_path, monkeypatch):
    import io
    import zipfile

    monkeypatch.setenv("ROBUSTLAB_ARTIFACTS", str(tmp_path))
    from core.prediction import load_model
    from core.jobs.runner import create, execute
    from core.app.runs import weights_file
    from core.jobs.runner import delete_run
    from core.jobs.specs import EvaluateSpec, TrainSpec

    store = RunStore()
    run = create(store, TrainSpec(dataset="mnist", epochs=1, train_subset=300, test_subset=50))
    execute(store, run, echo=False)
    evaluation = create(store, EvaluateSpec(model_run=run, n=50))
    execute(store, evaluation, echo=False)
    store.rename(run, "  baseline ")
    assert store.get(run).name == "baseline"
    data, name = weights_file(run)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        archive.extractall(tmp_path / "download")
    model, _ = load_model(tmp_path / "download" / run / "model.safetensors")
    assert name == f"{run}.zip" and model is not None
    assert set(delete_run(store, run)) == {run, evaluation}  # the evaluation belongs to it
    assert not (tmp_path / "runs" / run).exists()  # run_dir() would make the folder again
    assert not (tmp_path / "runs" / evaluation).exists()
    assert store.list_runs() == []


def test_tags_are_set_from_the_cli_shown_in_labels_and_filter_the_runs_table(tmp_path,
                                                                           monkeypatch, capsys):
    monkeypatch.setenv("ROBUSTLAB_ARTIFACTS", str(tmp_path))
    from core.app.cli import main
    from core.app.runs import run_label

    store = RunStore()
    tagged = store.create_run("train", {"dataset": "mnist", "model": "seed-resnet"})
    other = store.create_run("train", {"dataset": "mnist", "model": "seed-resnet"})
    assert main(["tag", tagged, "Baseline", " mnist ", "baseline"]) == 0
    assert store.get(tagged).tags == ["baseline", "mnist"]
    assert "[baseline, mnist]" in run_label(store.get(tagged))
    capsys.readouterr()
    assert main(["runs", "--tag", "baseline"]) == 0
    out = capsys.readouterr().out
    assert tagged in out and other not in out
    assert main(["tag", tagged, "a,b"]) == 2  # one clear line, the old tags kept
    assert "without spaces, commas" in capsys.readouterr().err
    assert store.get(tagged).tags == ["baseline", "mnist"]
    assert main(["rename", other, "second"]) == 0 and store.get(other).name == "second"
    assert main(["delete", other]) == 2  # queued: refused
    store.set_status(other, "cancelled")
    assert main(["delete", other]) == 0 and [r.id for r in store.list_runs()] == [tagged]


def test_time_left_is_the_average_rate_since_the_first_step_counting_down():
    from core.app.runs import remaining_seconds

    steady = [(100.0 + 2 * k, 10.0 * k) for k in range(11)]  # 5 steps/s, 100 of 400 done
    assert remaining_seconds(steady, 400, now=120.0) == pytest.approx(60.0)
    assert remaining_seconds(steady, 400, now=130.0) == pytest.approx(50.0)  # counts down
    paused = steady + [(150.0, 110.0)]  # an evaluation pause counts in the average rate
    assert remaining_seconds(paused, 400, now=150.0) == pytest.approx(290 / (110 / 50))
    resumed = steady + [(2000.0, 110.0), (2002.0, 120.0)]  # a stop and a resume an hour later
    assert remaining_seconds(resumed, 400, now=2002.0) == pytest.approx(56.0)
    assert remaining_seconds(steady[:1], 400, now=120.0) is None
    assert remaining_seconds(steady, 100, now=1000.0) == 0.0


def test_examples_are_the_same_images_for_both_models_and_flipped_on_either():
    import torch

    from core.app.attack import example_choice

    labels = torch.tensor([0, 1, 2, 3, 4])
    a = {"x": torch.zeros(5, 1, 2, 2), "labels": labels, "clean_pred": labels.clone(),
         "adv_pred": torch.tensor([0, 0, 2, 3, 4])}  # flips image 1
    b = {"x": torch.zeros(5, 1, 2, 2), "labels": labels,
         "clean_pred": torch.tensor([0, 1, 2, 0, 4]),  # wrong on image 3 before the attack
         "adv_pred": torch.tensor([0, 1, 1, 0, 4])}  # flips image 2; 3 was never right
    assert example_choice([a], "flipped") == [1]
    assert example_choice([a, b], "flipped") == [1, 2]
    assert example_choice([a, b], "all", limit=3) == [0, 1, 2]
    assert example_choice([a, b], "pick", picked=4) == [4]


def test_images_are_inline_pngs_upscaled_without_smoothing():
    """Shown as data URIs, so a rerun cannot drop a file the browser is still fetching."""
    import base64
    import io

    import torch
    from PIL import Image

    from core.app.images import to_display

    gray = torch.tensor([[[0.0, 1.0], [0.5, 0.25]]])
    uri = to_display(gray, scale=3)
    assert uri.startswith("data:image/png;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert img.mode == "L" and img.size == (6, 6)
    assert [img.getpixel((x, 0)) for x in range(6)] == [0, 0, 0, 255, 255, 255]
    assert img.getpixel((5, 5)) == 64
    rgb = Image.open(io.BytesIO(base64.b64decode(
        to_display(torch.zeros(3, 2, 2, dtype=torch.uint8)).split(",", 1)[1])))
    assert rgb.mode == "RGB" and rgb.size == (8, 8)


def test_the_epsilon_curve_marks_the_slider_and_the_bars_name_their_classes():
    import re

    from core.figures import epsilon_curve_figure, probability_bars

    fig = epsilon_curve_figure({"A": [(0.0, 0.99), (0.1, 0.5)], "B": [(0.0, 0.98), (0.1, 0.9)]},
                               0.1)
    rings = [t for t in fig.data if t.mode == "markers"]
    assert [tuple(t.y) for t in rings] == [(0.5,), (0.9,)]
    assert fig.layout.shapes[0].x0 == 0.1 and fig.layout.showlegend
    bars = probability_bars([0.9, 0.1], [0.2, 0.8], ["cat", "<dog>"], true=0)
    assert "clean" in bars and "adversarial" in bars  # the legend
    assert re.findall(r"width:([\d.]+)%", bars) == ["90.0", "20.0", "10.0", "80.0"]
    assert 'font-weight:600;white-space:nowrap">cat<' in bars  # the true class in bold
    assert "&lt;dog&gt;" in bars and "<dog>" not in bars  # a class name is text, not markup
    assert 'title="cat: clean 90.0%, adversarial 20.0%"' in bars


def test_compare_starts_from_a_study_with_its_models_and_their_audits(tmp_path, monkeypatch):
    """A study's audits have the study as parent; Compare finds them by the model they
    audited, and picking the study chooses its models."""
    from core.jobs.specs import AuditSpec, StudySpec, TrainSpec

    monkeypatch.setenv("ROBUSTLAB_ARTIFACTS", str(tmp_path))
    store = RunStore()
    study = store.create_run("study", StudySpec(datasets=["mnist"]).to_dict())
    models = [store.create_run("train", TrainSpec(defense=d, defense_args={"eps": 0.3}).to_dict(),
                               parent=study, name=d) for d in ("pgd-at", "iat")]
    outsider = store.create_run("train", TrainSpec().to_dict(), name="outsider")
    audit = store.create_run("audit", AuditSpec(model_run=models[1], eps=0.3).to_dict(),
                             parent=study)
    store.set_summary(audit, {"robust_acc": 0.4321, "version": "standard", "n": 200,
                              "threat_label": "L∞ ε=0.3", "verdict": "trusted"})
    for run in models + [outsider, audit]:
        store.set_status(run, "completed")
    at = _app("compare").run()
    _no_exceptions(at)
    at.selectbox(key="compare-study").select_index(1).run()
    _no_exceptions(at)
    table = at.table[0].value  # one column per run, one row per figure
    assert sorted(table.columns) == ["iat", "pgd-at"]  # the study's models, not the outsider
    # these runs logged no epoch figures: each chart says so instead of drawing empty axes
    assert not at.get("plotly_chart")
    assert any("only runs with a defense have the guard" in c.value for c in at.caption)
    assert table.loc["audited robust accuracy (95% interval)", "iat"].startswith(
        "43.2% (36.3-49.9) at L∞ ε=0.3")
    assert table.loc["audited robust accuracy (95% interval)", "pgd-at"] == "—"
    from core.app.runs import run_label

    cifar = store.create_run("train", TrainSpec(dataset="cifar10", defense="pgd-at",
                                                defense_args={"eps": 8 / 255}).to_dict())
    assert "pgd-at eps 0.03137 ·" in run_label(store.get(cifar))  # not 0.03137254901960784


def test_confusion_cell_numbers_are_white_on_dark_cells_and_dark_on_light_ones():
    from core.figures import confusion_grid_figure

    # the shade is log(1 + count): 3 sits in the light fifth of the scale, 900 and 800 at the top
    fig = confusion_grid_figure([[900, 3], [0, 800]], ["cat", "dog"])
    colors = dict(zip(fig.data[0].text, fig.data[0].textfont.color))
    assert colors["900"] == colors["800"] == "white"
    assert colors["3"] != "white" and colors["0"] != "white"


@requires_mnist
def test_an_audit_is_cancelled_and_resumed_from_its_page_and_bad_epsilons_are_one_line(
        tmp_path, monkeypatch):
    from core.jobs import runner

    monkeypatch.setattr(runner, "start_worker", lambda *a, **k: None)  # launched, not run
    store, model = _own_store_with_a_model(tmp_path, monkeypatch)
    at = _app("robustness", model=model).run()
    _no_exceptions(at)
    next(b for b in at.button if b.label == "Run audit").click().run()
    audit = store.list_runs(kind="audit")[0]
    at.button(key="audit-cancel").click().run()
    assert store.cancel_requested(audit.id)
    store.set_status(audit.id, "cancelled", error="cancelled (cancel requested)")
    at = _app("robustness", model=model, audit=audit.id).run()
    _no_exceptions(at)
    at.button(key="audit-resume").click().run()
    assert store.get(audit.id).status == "queued"  # its new worker continues from the ledger
    next(t for t in at.text_input if t.label.startswith("Epsilons")).set_value("0.1, abc")
    next(b for b in at.button if b.label == "Run sweep").click().run()
    errors = [e.value for e in at.error]
    assert any("'abc' is not a number" in e for e in errors), errors
    assert not store.list_runs(kind="sweep")


@requires_mnist
def test_a_stopped_sweep_is_resumed_from_the_sweeps_tab(tmp_path, monkeypatch):
    from core.jobs import runner
    from core.jobs.runner import create
    from core.jobs.specs import SweepSpec

    monkeypatch.setattr(runner, "start_worker", lambda *a, **k: None)  # launched, not run
    store, model = _own_store_with_a_model(tmp_path, monkeypatch)
    sweep = create(store, SweepSpec(model_run=model, attacks=["fgsm"], budgets=[0.1], n=20))
    store.set_status(sweep, "cancelled", error="cancelled (SIGTERM); resume it with ...")
    at = _app("robustness", model=model).run()
    _no_exceptions(at)
    at.button(key=f"sweep-resume-{sweep}").click().run()
    assert store.get(sweep).status == "queued"


def test_configuration_differences_show_no_nan_or_empty_braces(tmp_path, monkeypatch):
    from core.app.runs import config_diff

    monkeypatch.setenv("ROBUSTLAB_ARTIFACTS", str(tmp_path))
    store = RunStore()
    plain = store.create_run("train", {"defense": "none", "defense_args": {}, "lr": 0.05})
    defended = store.create_run("train", {"defense": "pgd-at", "defense_args": {"eps": 0.3},
                                          "lr": 0.05, "robust_eval": {"steps": 10}})
    diff = config_diff([store.get(plain), store.get(defended)])
    cells = {str(v) for v in diff.to_numpy().ravel()}
    assert "defense_args.eps" in diff.index and "robust_eval.steps" in diff.index
    assert "lr" not in diff.index  # the same in both
    assert not cells & {"nan", "{}", "None"} and "—" in cells


def test_each_attacks_help_is_whole_sentences_without_code_markup():
    from core.app.attack import attack_summary
    from core.attacks import ATTACKS

    for name in ATTACKS:
        text = attack_summary(name)
        assert text.endswith((".", ")")) and "``" not in text, (name, text)
        assert len(text) > 60, (name, text)


def test_the_server_tells_the_frontend_its_root_so_a_page_load_probes_no_subpath():
    import asyncio

    from core.app.serving import BackendBaseUrl

    seen_headers = []

    async def streamlit(scope, receive, send):
        seen_headers.append(dict(scope["headers"]))
        body = b"<html><head><title>x</title></head></html>" if scope["path"] != "/x.js" \
            else b"let a = '<head>';"
        kind = b"text/html" if scope["path"] != "/x.js" else b"text/javascript"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", kind),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body[:10], "more_body": True})
        await send({"type": "http.response.body", "body": body[10:]})

    def get(path: str) -> tuple[dict, bytes]:
        sent = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": path,
                 "headers": [(b"accept-encoding", b"gzip")]}
        asyncio.run(BackendBaseUrl(streamlit, base_path="")(scope, None, send))
        return dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent[1:])

    headers, page = get("/attack")
    assert page.startswith(b"<html><head><script>window.__streamlit = ")
    assert b'BACKEND_BASE_URL: window.location.origin + "/"' in page
    assert int(headers[b"content-length"]) == len(page)
    assert b"accept-encoding" not in seen_headers[-1]  # asked uncompressed, to be edited
    headers, script = get("/x.js")
    assert script == b"let a = '<head>';"  # only HTML pages are edited
    seen_headers.clear()
    get("/_stcore/health")
    assert b"accept-encoding" in seen_headers[-1]  # the server's own paths pass untouched


def test_one_answer_per_question_puts_the_audit_first_and_says_why_the_others_differ(
        tmp_path, monkeypatch):
    from core.app.answers import answers
    from core.jobs.specs import AttackSpec, AuditSpec, TrainSpec
    from core.threat import ThreatModel

    monkeypatch.setenv("ROBUSTLAB_ARTIFACTS", str(tmp_path))
    store = RunStore()
    model = store.create_run("train", TrainSpec().to_dict())
    threat = ThreatModel("linf", 0.1)
    assert answers(store, model, threat) == []
    for acc, n in ((0.81, 500), (0.46, 200)):  # one overstates the audit, one agrees with it
        run = store.create_run("attack", AttackSpec(model_run=model, attack="pgd",
                                                    params={"eps": 0.1}, n=n).to_dict())
        store.set_summary(run, {"attack": "pgd", "norm": "linf", "eps": 0.1, "adv_acc": acc,
                                "n": n, "params": {"steps": 10}})
        store.set_status(run, "completed")
    rows = answers(store, model, threat)
    assert [r["acc"] for r in rows] == [0.46, 0.81]  # no audit: the lowest first
    assert "no audit" in rows[0]["why"] and not any(r["overstates"] for r in rows)
    audit = store.create_run("audit", AuditSpec(model_run=model, eps=0.1).to_dict())
    store.set_summary(audit, {"robust_acc": 0.44, "n": 500, "version": "standard"})
    store.set_status(audit, "completed")
    rows = answers(store, model, threat)
    assert rows[0]["source"].startswith("audit ") and rows[0]["figure"] == "44.0% (39.7-48.4)"
    assert [r["overstates"] for r in rows] == [False, False, True]
    assert rows[1]["why"].startswith("the same within chance") and \
        "other test images (200 against the audit's 500)" in rows[1]["why"]
    assert rows[2]["why"].startswith("above the audit by 37.0 pp beyond both 95% intervals")
    assert answers(store, model, ThreatModel("linf", 0.2)) == []  # another threat model


def test_the_import_form_refuses_a_path_outside_the_allowed_folders(tmp_path, monkeypatch):
    """A path typed into the browser may point only inside the data or artifacts folders;
    Check says so in one line and nothing runs."""
    monkeypatch.setenv("ROBUSTLAB_ARTIFACTS", str(tmp_path / "artifacts"))
    at = _app("import").run()
    at.radio(key="import-where").set_value("a path on the server").run()
    at.text_input(key="import-path").input("/etc/passwd").run()
    at.button(key="import-check").click().run()
    _no_exceptions(at)
    assert any("outside the allowed folders" in e.value for e in at.error)
    assert at.button(key="import-go-off").disabled


def test_a_cancelled_curve_shows_on_the_curves_tab_with_its_resume(tmp_path, monkeypatch):
    from core.jobs.specs import CurveSpec, TrainSpec

    monkeypatch.setenv("ROBUSTLAB_ARTIFACTS", str(tmp_path))
    store = RunStore()
    model = store.create_run("train", TrainSpec().to_dict())
    store.set_status(model, "completed")
    (tmp_path / "runs" / model).mkdir(parents=True)
    (tmp_path / "runs" / model / "model.safetensors").write_bytes(b"x")
    curve = store.create_run("curve", CurveSpec(model_run=model, n=300).to_dict(), parent=model)
    store.set_status(curve, "cancelled", error="cancelled (SIGINT); resume it with ...")
    at = _app("robustness", model=model).run()
    _no_exceptions(at)
    assert any("curve of" in w.value and "on 300 images cancelled: cancelled (SIGINT)" in w.value
               for w in at.warning)
    assert at.button(key=f"curve-resume-{curve}")


def test_a_direct_load_of_train_is_redirected_to_the_root(tmp_path):
    """Train is the default page, at /: its own name answers with a redirect (keeping the
    query), not Streamlit's "Page not found"."""
    import asyncio

    from core.app.serving import BackendBaseUrl

    async def streamlit(scope, receive, send):  # never reached for the alias
        raise AssertionError(scope["path"])

    for base, path, query, target in (("", "/train", b"run=r1", b"/?run=r1"),
                                      ("", "/train/", b"", b"/"),
                                      ("lab", "/lab/train", b"", b"/lab/")):
        sent = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": path, "query_string": query,
                 "headers": []}
        asyncio.run(BackendBaseUrl(streamlit, base_path=base)(scope, None, send))
        assert sent[0]["status"] == 307 and dict(sent[0]["headers"])[b"location"] == target
