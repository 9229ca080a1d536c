"""Two processes with gloo on CPU: DDP training matches one process; sharded evaluation returns
exactly the single-process per-example records."""
import os
import socket
import subprocess
import sys

import torch
import torch.multiprocessing as mp

from core.attacks import PGD
from core.evaluation import run_attack

from conftest import ROOT, requires_mnist


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(args, nproc=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "core", "train", *args]
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "core", "train",
               *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if "completed: test accuracy" in l)
    return float(line.split("test accuracy ")[1].split("%")[0]), line.split()[1].rstrip(":")


@requires_mnist
def test_two_process_training_matches_one_process():
    args = ["--dataset", "mnist", "--epochs", "1", "--train-subset", "6000", "--test-subset",
            "2000", "--batch-size", "64", "--seed", "0"]
    single, _ = _train(args)
    double, run_id = _train(args, nproc=2)
    assert abs(single - double) <= 1.0, (single, double)
    from core.store import RunStore

    run = RunStore().get(run_id)
    assert run.status == "completed" and run.summary["world_size"] == 2
    # rank 0 alone logged: one row per step, not two
    steps = [m for m in RunStore().metrics(run_id, ["train_loss_step"])]
    assert len(steps) == -(-6000 // 2 // 32)  # ceil: the last partial batch is a step too


def _sharded_worker(rank, world, port, model_path, n, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from core import data, distributed
    from core.training import load_model

    ctx = distributed.init("cpu")
    model, _ = load_model(model_path)
    split = data.load("mnist", "test").subset(n, seed=3)
    outcome = distributed.sharded_attack(ctx, batch_size=64)(model, split, PGD(eps=0.1, steps=5))
    if ctx.is_main:
        torch.save({"records": outcome.records(), "summary": outcome.summary()}, out)
    distributed.shutdown()


@requires_mnist
def test_sharded_evaluation_equals_single_process(mnist_model, tmp_path):
    from core import data
    from core.training import run_model_path

    _, _, run_id = mnist_model
    path = str(run_model_path(run_id))
    out = tmp_path / "sharded.pt"
    mp.get_context("spawn")
    mp.start_processes(_sharded_worker, args=(2, _free_port(), path, 300, str(out)), nprocs=2,
                       start_method="spawn")
    sharded = torch.load(out, weights_only=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from core.training import load_model

        model, _ = load_model(path)
        single = run_attack(model, data.load("mnist", "test").subset(300, seed=3),
                            PGD(eps=0.1, steps=5), batch_size=64)
    finally:
        torch.set_num_threads(threads)
    assert sharded["records"] == single.records()
    assert sharded["summary"] == single.summary()
