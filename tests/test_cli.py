"""The command line as a user runs it: real subprocesses, real (small) MNIST."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT, requires_mnist


def cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ), timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_help_lists_the_commands():
    out = cli("--help").stdout
    for cmd in ("train", "evaluate", "attack", "sweep", "runs", "reproduce"):
        assert cmd in out


@pytest.mark.parametrize("args, message", [
    (["train", "--dataset", "svhn"], "valid datasets: mnist, cifar10, imagefolder:PATH"),
    (["train", "--model", "vgg"], "valid models: seed-resnet, resnet20"),
    (["train", "--defense", "magic"], "valid: none, fgsm-at, fast-at, pgd-at, trades, iat"),
    (["train", "--epochs", "0"], "epochs must be a positive whole number"),
    (["train", "--batch-size", "0"], "batch size must be a positive whole number"),
    (["train", "--lr", "-1"], "learning rate must be a positive number"),
    (["train", "--defense", "pgd-at", "--eps", "1.5"], r"eps must be in [0, 1]"),
    (["evaluate", "no-such-run"], "no run with id 'no-such-run'"),
    (["evaluate", "../../etc/passwd"], "invalid run id"),
    (["reproduce", "--parts", "cd"], "parts must be some of the letters a, b, c"),
])
def test_bad_input_gets_one_clear_error_and_creates_no_run(args, message, capsys):
    # In-process through the CLI's own entry point (a Python start costs seconds here); the
    # test below runs one case as a real process.
    from core.app.cli import main

    before = _run_ids()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.strip().count("\n") == 0, "one line"
    assert _run_ids() == before


def test_bad_input_in_a_real_process_exits_2_with_one_line():
    before = _run_ids()
    proc = cli("train", "--dataset", "svhn", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("error: unknown dataset 'svhn'; valid datasets: mnist, "
                                   "cifar10, imagefolder:PATH")
    assert _run_ids() == before


def _run_ids() -> list[str]:
    from core.jobs.store import RunStore

    return [r.id for r in RunStore().list_runs()]


@requires_mnist
@pytest.mark.slow
def test_train_evaluate_attack_sweep_from_the_command_line():
    out = cli("train", "--dataset", "mnist", "--epochs", "1", "--train-subset", "1000",
              "--test-subset", "300", "--name", "cli").stdout
    assert "completed: test accuracy" in out and "300 test images" in out
    run_id = out.split()[1].rstrip(":")
    ev = cli("evaluate", run_id, "-n", "300").stdout
    assert "micro-F1" in ev and "confusion matrix" in ev and "misclassified" in ev
    at = cli("attack", run_id, "--attack", "pgd", "--eps", "0.1", "--steps", "5", "-n", "100").stdout
    assert "robust accuracy" in at and "success rate" in at and "95% intervals" in at
    bad = cli("attack", run_id, "--attack", "fgsm", "--eps", "-0.1", check=False)
    assert bad.returncode == 2 and "eps must be a number in [0.0, 1.0]" in bad.stderr
    sw = cli("sweep", run_id, "--attacks", "noise,fgsm,pgd", "--eps", "0,0.1", "--steps", "3",
             "-n", "50").stdout
    assert "| pgd" in sw and "worst case" in sw and "sweep.csv" in sw
    table = cli("runs").stdout
    for kind in ("train", "evaluate", "attack", "sweep"):
        assert kind in table


def test_refusals_of_the_new_user_come_before_torch_and_leave_no_row(tmp_path, monkeypatch,
                                                                      capsys):
    """Each refusal the fresh-clone walk found, refused in one line with exit status 2 and no
    run row or folder: a run name with a line break, -n beyond the split, epsilons as
    fractions and -0 taken, a negative one refused, a truncated PNG in either split, and
    deleting a running run; a run-id fragment lists the runs it matches."""
    from core.app.cli import main
    from core.jobs.store import RunStore
    from PIL import Image

    monkeypatch.setenv("ROBUSTLAB_ARTIFACTS", str(tmp_path / "artifacts"))
    store = RunStore()
    model = store.create_run("train", {"dataset": "mnist"})
    store.set_status(model, "completed")
    (tmp_path / "artifacts" / "runs" / model).mkdir(parents=True)
    (tmp_path / "artifacts" / "runs" / model / "model.safetensors").write_bytes(b"x")
    running = store.create_run("attack", {"model_run": model})
    store.set_status(running, "running")
    import time

    store._conn.execute("UPDATE runs SET pid=?, heartbeat=? WHERE id=?",
                        (os.getpid(), time.time() + 3600, running))
    root = tmp_path / "imgs"
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(6):
                Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / split / c / f"{i}.png")
    broken = root / "test" / "b" / "3.png"
    broken.write_bytes(broken.read_bytes()[:-20])
    cases = [
        (["train", "--name", "two\nlines"], "on one line"),
        (["audit", model, "--eps", "0.1", "-n", "1000000000000"],
         "is more than the 10,000 images of mnist's test split"),
        (["attack", model, "--attack", "pgd", "--eps", "-0.1"],
         "eps must be a number in [0.0, 1.0]"),
        (["train", "--dataset", f"imagefolder:{root}"], "cannot read image"),
        (["delete", running], "cancel it before deleting it"),
        (["show", model[:-3]], f"did you mean {model}"),
    ]
    for args, message in cases:
        before = len(store.list_runs())
        try:
            status = main(args)
        except SystemExit as stop:  # argparse's own refusals
            status = stop.code
        assert status == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (args, err)
        assert len(store.list_runs()) == before
    from core.app.cli import build_parser

    assert build_parser().parse_args(["attack", "r", "--attack", "pgd", "--eps", "8/255"]
                                     ).eps == pytest.approx(8 / 255)
    assert str(build_parser().parse_args(["audit", "r", "--eps", "-0"]).eps) == "0.0"
    assert not (tmp_path / "artifacts" / "runs" / running).exists()
