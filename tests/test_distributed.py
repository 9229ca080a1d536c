"""Two processes with gloo on CPU, through torchrun as a user starts them: DDP training
matches one process, and a cancelled DDP run resumes to the same weights as an unbroken one;
sharded evaluate, attack and sweep return exactly the single-process results; bad input stops
every rank with one message."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from core.paths import run_dir
from core.jobs.store import RunStore

from conftest import ROOT, requires_mnist, wait_for

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(args, nproc=None) -> list[str]:
    if not nproc:
        return [sys.executable, "-m", "core", *args]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "core", *args]


def _core(args, nproc=None, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(_command(args, nproc), cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _in_process(args, capsys) -> str:
    """The single process runs here, through the CLI's entry point, on one thread like each
    rank; its standard output."""
    from core.app.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        capsys.readouterr()
        assert main(args) == 0
        return capsys.readouterr().out
    finally:
        torch.set_num_threads(threads)


def _accuracy(stdout: str) -> float:
    line = next(l for l in stdout.splitlines() if "completed: test accuracy" in l)
    return float(line.split("test accuracy ")[1].split("%")[0])


def _train(args, nproc=None):
    proc = _core(["train", *args], nproc)
    line = next(l for l in proc.stdout.splitlines() if "completed: test accuracy" in l)
    return _accuracy(proc.stdout), line.split()[1].rstrip(":")


SMALL = ["--dataset", "mnist", "--epochs", "3", "--train-subset", "1500", "--test-subset",
         "1000", "--batch-size", "64", "--seed", "1"]


def _weights(run_id: str) -> dict:
    return load_file(str(run_dir(run_id) / "model.safetensors"))


@requires_mnist
@pytest.mark.slow
def test_ddp_training_matches_one_process_and_a_cancelled_run_resumes_to_the_same_weights(
        capsys):
    """Two ranks (32 images each per step) reach one process's accuracy (64 per step) with
    rank 0 alone logging; a DDP run cancelled after its first epoch resumes under torchrun to
    exactly the weights of the unbroken DDP run."""
    single = _accuracy(_in_process(["train", *SMALL], capsys))
    double, straight = _train([*SMALL, "--name", "ddp straight"], nproc=2)
    assert abs(single - double) <= 2.0, (single, double)
    store = RunStore()
    run = store.get(straight)
    assert run.status == "completed" and run.summary["world_size"] == 2
    steps = list(store.metrics(straight, ["train_loss_step"]))
    assert len(steps) == 3 * -(-1500 // 2 // 32)  # one row per step, not one per rank

    proc = subprocess.Popen(_command(["train", *SMALL, "--name", "ddp broken"], 2), cwd=ROOT,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: any(r.name == "ddp broken" for r in store.list_runs()), 120)
        run_id = next(r.id for r in store.list_runs() if r.name == "ddp broken")
        checkpoint = run_dir(run_id) / "checkpoint.safetensors"
        assert wait_for(checkpoint.exists, 240)
        store.request_cancel(run_id)
        # The cancel reaches rank 0 alone; both ranks must stop (none left in an all-reduce).
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode != 0 and "cancelled" in err, err[-2000:]
    run = store.get(run_id)
    assert run.status == "cancelled"
    stopped_at = json.loads((run_dir(run_id) / "checkpoint.safetensors.json").read_text())["epoch"]
    assert 1 <= stopped_at < 3 and not (run_dir(run_id) / "model.safetensors").exists()

    proc = _core(["train", "--resume", run_id], nproc=2)
    assert f"resuming {run_id}" in proc.stdout and "completed" in proc.stdout
    run = store.get(run_id)
    assert run.status == "completed" and run.summary["world_size"] == 2
    a, b = _weights(straight), _weights(run_id)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed DDP run differs from the unbroken one"
    epochs = [m for m in store.metrics(run_id, ["test_acc"])]
    assert len(epochs) == 3  # the interrupted epoch is logged once, not twice


@pytest.mark.slow  # torchrun: real process groups
@requires_mnist
@pytest.mark.parametrize("command", [
    ["evaluate", "-n", "300"],
    ["attack", "--attack", "pgd", "--eps", "0.1", "--steps", "3", "-n", "300"],
    # a sweep shards through the same runner as attack (sharded_attack): attack covers it
    # a batch per rank; FAB's sharding is the audit's (FAB-T), tested below
    ["curve", "--attacks", "fmn", "--steps", "5", "-n", "60", "--batch-size", "30"],
])
def test_torchrun_evaluation_commands_equal_one_process(mnist_model, command, capsys):
    _, _, model_run = mnist_model
    args = [command[0], model_run, *command[1:]]
    double = _core(args, nproc=2)
    single = _in_process(args, capsys)
    ids = [out.split()[1].rstrip(":") for out in (single, double.stdout)]
    store = RunStore()
    summaries = [store.get(i).summary for i in ids]
    assert all(store.get(i).status == "completed" for i in ids)
    # the second curve starts from the first's kept examples (they lower no norm: the same
    # search found them); only that list differs
    for s in summaries:
        s.pop("started_from", None)
    assert summaries[0] == summaries[1]
    files = {"evaluate": "evaluation.json", "attack": "records.csv", "sweep": "sweep.csv",
             "curve": "curve.csv"}
    one, two = ((run_dir(i) / files[command[0]]).read_text() for i in ids)
    assert one == two  # per-example records included
    # the tables printed to the user match too (only the run ids differ)
    def shown(text: str, run_id: str) -> str:
        return "\n".join(line for line in text.replace(run_id, "RUN").replace(
            " on 2 processes", "").splitlines() if "started from the adversarial" not in line)

    assert shown(single, ids[0]) == shown(double.stdout, ids[1])


@pytest.mark.slow  # torchrun: real process groups
@requires_mnist
@pytest.mark.parametrize("args, message", [
    (["train", "--resume", "no-such-run"], "no run with id 'no-such-run'"),
])
def test_torchrun_bad_input_stops_every_rank_with_one_message(args, message):
    before = len(RunStore().list_runs())
    proc = _core(args, nproc=2, check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert len(RunStore().list_runs()) == before


@pytest.mark.slow  # torchrun: real process groups
@requires_mnist
def test_torchrun_audit_equals_one_process(mnist_model, capsys):
    """The cascade runs on fixed batches, whole batches per rank: every example's verdict, the
    stages' robust accuracies and the indicators match one process (only seconds differ)."""
    _, _, model_run = mnist_model
    args = ["audit", model_run, "--eps", "0.1", "--version", "standard", "-n", "60",
            "--batch-size", "30", "--steps", "5", "--queries", "40"]  # two batches, a rank each
    double = _core(args, nproc=2)
    ids = [_in_process(args, capsys).split()[1].rstrip(":"),
           double.stdout.split()[1].rstrip(":")]
    store = RunStore()
    summaries = [store.get(i).summary for i in ids]
    for s in summaries:
        for stage in s["stages"]:
            stage.pop("seconds")
    assert summaries[0] == summaries[1]
    assert [st["attack"] for st in summaries[0]["stages"]] == ["apgd-ce", "apgd-t", "fab-t",
                                                               "square"]
    one, two = ((run_dir(i) / "audit.csv").read_text() for i in ids)
    assert one == two and len(one.splitlines()) == 61
