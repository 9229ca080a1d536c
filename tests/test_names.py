"""Names, tags and messages a user types or reads: length limits, one-word tags, articles, the
8x8 rule before the size mix, and a --data-dir that names a file."""
import subprocess
import sys

import pytest
from PIL import Image

from core.checks import NAME_MAX, a_kind, clean_name, clean_tag
from core.jobs.store import RunStore
from core.paths import InputError, data_dir

from conftest import ROOT


def test_a_name_over_the_limit_is_refused_before_a_run_row_exists(tmp_path):
    store = RunStore(tmp_path / "runs.db")
    with pytest.raises(InputError, match=f"at most {NAME_MAX} characters"):
        store.create_run("train", {}, name="x" * 5000)
    assert store.list_runs() == []
    run = store.create_run("train", {}, name="  a fine name  ")
    assert store.get(run).name == "a fine name"
    with pytest.raises(InputError, match="on one line"):
        store.rename(run, "two\nlines")
    assert clean_name("   ") is None and clean_name("x" * NAME_MAX) == "x" * NAME_MAX


def test_tags_are_single_words(tmp_path):
    store = RunStore(tmp_path / "runs.db")
    run = store.create_run("train", {})
    with pytest.raises(InputError, match="without spaces"):
        store.set_tags(run, ["a b"])
    assert store.set_tags(run, ["Baseline", "", "mnist-0.3", "baseline"]) == ["baseline",
                                                                             "mnist-0.3"]
    assert clean_tag(" IAT ") == "iat"


def test_messages_use_the_right_article():
    assert a_kind("evaluate") == "an evaluate run" and a_kind("audit") == "an audit run"
    assert a_kind("train") == "a train run" and a_kind("sweep") == "a sweep run"


def test_a_tiny_image_is_named_by_the_8x8_rule_not_as_a_size_mix(tmp_path):
    from core.catalog import check_images

    for name, size in (("a.png", (16, 16)), ("b.png", (1, 1))):
        Image.new("RGB", size).save(tmp_path / name)
    files = [(str(tmp_path / "a.png"), 0), (str(tmp_path / "b.png"), 0)]
    with pytest.raises(InputError, match=r"b.png is 1x1 pixels; the models need at least 8x8"):
        check_images(tmp_path, files)


def test_a_data_dir_that_is_a_file_is_said_plainly(tmp_path):
    afile = tmp_path / "mnist.zip"
    afile.write_bytes(b"PK")
    with pytest.raises(InputError, match="is a file; it must be the folder"):
        data_dir(afile)
    proc = subprocess.run([sys.executable, "-m", "core", "train", "--data-dir", str(afile)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "is a file" in proc.stderr
    assert "download" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["evaluate", "no-such-run"], "no run with id 'no-such-run'"),
    (["resume", "RUNNING"], "is running; only failed or cancelled runs"),
    (["attack", "EVALUATION", "--attack", "fgsm"], "is an evaluate run; pick a training or import run"),
    (["train", "--dataset", "imagefolder:/no/such/folder"], "has no train/ folder"),
])
def test_refusals_that_need_only_the_store_come_before_torch(tmp_path, args, message):
    """A bad run id, kind or state, or a missing data folder, is refused without importing
    torch (0.1 s instead of seconds: benchmarks/refusals.py)."""
    import os
    import subprocess
    import sys

    from core.jobs.store import RunStore

    store = RunStore(tmp_path / "runs.db")
    ids = {"RUNNING": store.create_run("train", {"dataset": "mnist"}),
           "EVALUATION": store.create_run("evaluate", {"model_run": "x"})}
    store.set_status(ids["RUNNING"], "running")
    store.heartbeat(ids["RUNNING"], "test")
    probe = ("import sys; from core.app.cli import main; rc = main(sys.argv[1:]); "
             "print('torch' in sys.modules); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", probe, *[ids.get(a, a) for a in args]],
                          cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, ROBUSTLAB_ARTIFACTS=str(tmp_path)), timeout=60)
    assert done.returncode == 2 and done.stdout.strip() == "False", done.stderr
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 1 and message in errors[0], errors
