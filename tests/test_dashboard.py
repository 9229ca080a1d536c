"""streamlit.testing AppTest: every page renders; the train form creates a run; the epsilon
slider changes the accuracy shown; the gallery filters by class."""
import pytest
from streamlit.testing.v1 import AppTest

from core.service import grid_run
from core.store import RunStore

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




@pytest.mark.parametrize("page", ["train", "evaluate", "attack", "robustness", "compare"])
def test_every_page_renders_with_an_empty_store(page, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLAB_ARTIFACTS", str(tmp_path))
    at = _app(page).run()
    _no_exceptions(at)
    assert at.title[0].value


@requires_mnist
def test_train_form_creates_a_run(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLAB_ARTIFACTS", str(tmp_path))
    at = _app("train").run()
    at.number_input(key="epochs").set_value(1)
    at.number_input(key="subset").set_value(500)
    at.text_input[0].input("apptest run")
    at.button[0].click().run()
    _no_exceptions(at)
    store = RunStore()
    runs = store.list_runs(kind="train")
    assert len(runs) == 1 and runs[0].name == "apptest run"
    assert runs[0].config["epochs"] == 1 and runs[0].config["train_subset"] == 500
    assert wait_for(lambda: store.get(runs[0].id).status == "completed")


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


def _gallery_count(at) -> int:
    text = next(c.value for c in at.caption if "misclassified examples match" in c.value)
    return int(text.split()[0])


@requires_mnist
def test_epsilon_slider_changes_the_accuracy_shown(mnist_model):
    _, _, run_id = mnist_model
    store = RunStore()
    at = _app("attack", model=run_id).run()
    _no_exceptions(at)
    grid = grid_run(store, run_id, "pgd", {"steps": 40, "norm": "linf", "restarts": 1}, 200)
    assert wait_for(lambda: store.get(grid.id).status == "completed", 300), store.get(grid.id).error
    values = {}
    for eps in (0.0, 0.1, 0.3):
        at.select_slider(key="eps").set_value(eps).run()
        _no_exceptions(at)
        metric = next(m for m in at.metric if m.label == "Accuracy under attack")
        values[eps] = float(metric.value.rstrip("%"))
    assert values[0.0] > values[0.1] > values[0.3]


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
