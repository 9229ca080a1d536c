import os
import signal
import time

import pytest
import torch

from core import checkpoint
from core.jobs.runner import execute, submit
from core.models import build_model
from core.paths import InputError, run_dir
from core.jobs.store import RunStore
from core.prediction import load_model, run_model_path
from core.jobs.specs import TrainSpec
from core.training.loop import NonFiniteLoss, fit, lr_at

from conftest import wait_for, requires_mnist

SMALL = dict(dataset="mnist", train_subset=1200, test_subset=300, batch_size=64, lr=0.05)


def _weights(run_id):
    tensors, _ = checkpoint.load(run_dir(run_id) / "model.safetensors")
    return tensors


@requires_mnist
@pytest.mark.slow
def test_same_seed_gives_identical_weights():
    store = RunStore()
    runs = []
    for _ in range(2):
        cfg = TrainSpec(epochs=1, seed=7, **SMALL)
        run_id = store.create_run("train", cfg.to_dict())
        fit(cfg, store, run_id)
        runs.append(_weights(run_id))
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    other = TrainSpec(epochs=1, seed=8, **SMALL)
    rid = store.create_run("train", other.to_dict())
    fit(other, store, rid)
    assert not torch.equal(_weights(rid)["model.fc.weight"], runs[0]["model.fc.weight"])


def test_checkpoint_round_trip_and_refusals(tmp_path):
    model = build_model("seed-resnet", (1, 28, 28), 10, mean=(0.1,), std=(0.3,))
    meta = {"model": "seed-resnet", "model_args": {}, "input_shape": [1, 28, 28],
            "num_classes": 10, "mean": [0.1], "std": [0.3], "train_config": {}}
    path = tmp_path / "m.safetensors"
    checkpoint.save(path, {f"model.{k}": v for k, v in model.state_dict().items()}, meta)
    loaded, meta2 = load_model(path)
    x = torch.rand(3, 1, 28, 28)
    model.eval()
    assert torch.allclose(loaded(x), model(x), atol=1e-6)
    assert meta2["versions"]["torch"] == torch.__version__ and not path.with_suffix(".tmp").exists()
    assert checkpoint.read_sidecar(path)["model"] == "seed-resnet"  # metadata, no tensors read
    assert checkpoint.read_sidecar(tmp_path / "absent.safetensors") is None
    # another architecture / input shape
    cifar = build_model("seed-resnet", (3, 32, 32), 10)
    tensors, _ = checkpoint.load(path)
    with pytest.raises(checkpoint.CheckpointError, match="does not fit this model"):
        checkpoint.load_into(cifar, tensors)
    # truncated file
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="truncated, corrupt"):
        checkpoint.load(path)
    # not safetensors at all (sidecar hash removed so the parser itself must refuse it)
    path.write_bytes(b"\x80\x04pickle-ish bytes")
    side = path.with_name(path.name + ".json")
    side.write_text(side.read_text().replace('"sha256"', '"sha256_was"'))
    with pytest.raises(checkpoint.CheckpointError, match="not a readable safetensors"):
        checkpoint.load(path)


def test_one_cycle_schedule_shape():
    cfg = TrainSpec(lr=0.1)
    lrs = [lr_at(cfg, s, 100) for s in range(101)]
    assert lrs[0] == pytest.approx(0.004) and max(lrs) == pytest.approx(0.1, rel=1e-3)
    assert lrs[-1] < 1e-3 and lrs.index(max(lrs)) == 25


@pytest.mark.parametrize("change, message", [
    ({"epochs": 0}, "epochs must be a positive whole number"),
    ({"batch_size": -4}, "batch size must be a positive whole number"),
    ({"lr": 0}, "learning rate must be a positive number"),
    ({"optimizer": "rmsprop"}, "valid: sgd, nesterov, adam"),
    ({"model": "vgg"}, "valid models: seed-resnet, resnet20"),
    ({"defense": "magic"}, "valid: none, fgsm-at, fast-at, pgd-at, trades, iat"),
    ({"dataset": "svhn"}, "valid datasets"),
])
def test_bad_training_options_are_refused(change, message):
    with pytest.raises(InputError, match=message):
        TrainSpec.from_dict(dict(SMALL, **change))


@requires_mnist
def test_nan_loss_stops_without_saving_weights():
    store = RunStore()
    cfg = TrainSpec(epochs=1, **dict(SMALL, lr=1e30, schedule="constant"))
    run_id = store.create_run("train", cfg.to_dict())
    with pytest.raises(NonFiniteLoss, match="stopped without saving"):
        execute(store, run_id, echo=False)
    assert store.get(run_id).status == "failed"
    assert "NonFiniteLoss" in store.get(run_id).error
    assert not (run_dir(run_id) / "model.safetensors").exists()




@pytest.mark.slow
@requires_mnist
def test_killed_worker_is_detected_and_resume_matches_uninterrupted_run():
    store = RunStore()
    cfg = TrainSpec(epochs=3, seed=3, **SMALL)
    reference = store.create_run("train", cfg.to_dict())
    execute(store, reference, echo=False)

    run_id = submit(store, cfg)
    ckpt = run_dir(run_id) / "checkpoint.safetensors"
    assert wait_for(lambda: ckpt.exists() and store.get(run_id).status == "running")
    # let it get into the second epoch, then kill it hard
    assert wait_for(lambda: any(m["epoch"] == 1 for m in store.metrics(run_id, ["train_loss_step"])))
    pid = store.get(run_id).pid
    os.kill(pid, signal.SIGKILL)
    started = time.time()
    assert wait_for(lambda: run_id in store.mark_stale() or store.get(run_id).status == "failed", 10)
    assert time.time() - started < 10
    assert "resume" in store.get(run_id).error

    execute(store, run_id, resume=True, echo=False)
    assert store.get(run_id).status == "completed"
    a, b = _weights(reference), _weights(run_id)
    assert all(torch.equal(a[k], b[k]) for k in a)
    epochs = sorted({m["epoch"] for m in store.metrics(run_id, ["test_acc"])})
    assert epochs == [0, 1, 2]


@requires_mnist
def test_cancel_flag_stops_a_worker_cooperatively():
    store = RunStore()
    run_id = submit(store, TrainSpec(epochs=20, **SMALL))
    assert wait_for(lambda: store.get(run_id).status == "running")
    store.request_cancel(run_id)
    assert wait_for(lambda: store.get(run_id).status == "cancelled", 60)


@pytest.mark.slow
@requires_mnist
def test_seed_resnet_on_real_mnist_one_epoch_reaches_95_percent():
    store = RunStore()
    cfg = TrainSpec(dataset="mnist", epochs=1, train_subset=10000, test_subset=2000,
                      batch_size=64, lr=0.05, seed=0)
    run_id = store.create_run("train", cfg.to_dict())
    summary = execute(store, run_id, echo=False)
    assert summary["n_train"] == 10000 and summary["n_test"] == 2000
    assert summary["final"]["test_acc"] >= 0.95


@requires_mnist
def test_bf16_training_keeps_attack_gradients_in_float32():
    from core.attacks.contract import attack_mode, input_grad

    store = RunStore()
    acc = {}
    for precision in ("fp32", "bf16"):
        cfg = TrainSpec(epochs=1, precision=precision, **SMALL)
        rid = store.create_run("train", cfg.to_dict())
        acc[precision] = execute(store, rid, echo=False)["final"]["test_acc"]
    assert abs(acc["bf16"] - acc["fp32"]) <= 0.03, acc
    cfg = TrainSpec(epochs=1, precision="bf16", defense="fast-at", defense_args={"eps": 0.1},
                      **SMALL)
    run_id = store.create_run("train", cfg.to_dict())
    summary = execute(store, run_id, echo=False)
    assert summary["final"]["test_acc"] > 0.5  # chance is 0.1
    model, _ = load_model(run_model_path(run_id))
    x = torch.rand(4, 1, 28, 28)
    with torch.autocast("cpu", dtype=torch.bfloat16), attack_mode(model):
        grad, logits = input_grad(model, x, torch.zeros(4, dtype=torch.long),
                                  lambda z, t: torch.nn.functional.cross_entropy(z, t))
    assert grad.dtype == torch.float32 and logits.dtype == torch.float32
    with pytest.raises(InputError, match="valid: auto, fp32, bf16"):
        TrainSpec.from_dict(dict(SMALL, precision="fp8"))
