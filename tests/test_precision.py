"""Which arithmetic ``--precision auto`` picks (measured, cached, said), and the data path that
keeps a split on the training device."""
import pytest
import torch

from core import data, precision

from conftest import requires_mnist


def _model_and_batch():
    from core.models import build_model

    torch.manual_seed(0)
    model = build_model("seed-resnet", (1, 28, 28), 10, (0.1307,), (0.3081,))
    return model, torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))


def test_an_explicit_precision_is_taken_as_asked():
    model, x, y = _model_and_batch()
    for asked in ("fp32", "bf16"):
        choice = precision.choose(asked, model, x, y, "search")
        assert choice.name == asked and asked in choice.reason


@pytest.mark.parametrize("purpose", ["train", "search"])
def test_a_measured_choice_is_timed_once_then_read_from_its_cache(purpose, monkeypatch):
    """What auto does on a GPU (here on the CPU: the same code)."""
    model, x, y = _model_and_batch()
    before = [p.clone() for p in model.parameters()]
    first = precision.measured(model, x, y, purpose)
    assert "measured faster" in first.reason and first.name in first.reason
    monkeypatch.setattr(precision, "_time", lambda *a: pytest.fail("measured twice"))
    assert precision.measured(model, x, y, purpose) == first
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # a copy was timed


def test_auto_on_a_cpu_follows_its_rule_and_says_why(monkeypatch):
    from core.attacks import speed

    model, x, y = _model_and_batch()
    monkeypatch.setattr(precision, "_time", lambda *a: pytest.fail("no probe on a CPU"))
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(speed, "bf16_native", lambda device, native=native: native)
        choice = precision.choose("auto", model, x, y, "search")
        assert choice.name == expected and choice.reason.startswith("auto: ")


@requires_mnist
def test_training_on_a_cpu_stays_float32_with_auto_and_says_so():
    from core.jobs.specs import TrainSpec
    from core.training import loop

    setup = loop.prepare(TrainSpec(dataset="mnist", epochs=1, train_subset=200, test_subset=50),
                         torch.device("cpu"))
    choice = loop.choose_precision(setup)
    assert choice.name == "fp32" and "CPU" in choice.reason


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_a_split_on_the_device_gives_the_cpu_batches_bit_for_bit(device):
    """Cut, cropped, flipped and converted where the split lives, with the random numbers of
    the CPU generator: the same batches as the CPU path, so runs and resumes agree."""
    images = torch.randint(0, 256, (50, 3, 12, 12), dtype=torch.uint8)
    split = data.TensorData("t", "train", images, torch.arange(50) % 3, ["a", "b", "c"], "made",
                            (0.5,) * 3, (0.25,) * 3, augment=True)
    order = data.epoch_order(50, seed=1, epoch=0)
    here = list(data.batches(split, 16, order, True, torch.Generator().manual_seed(5)))
    there = list(data.batches(split.to(device), 16, order, True,
                              torch.Generator().manual_seed(5)))
    assert len(here) == len(there) == 4
    for (xa, ya, _), (xb, yb, _) in zip(here, there):
        assert xb.device.type == device
        assert torch.equal(xa, xb.cpu()) and torch.equal(ya, yb.cpu())
    assert data.resident(split, torch.device("cpu")) is split  # a CPU run keeps it in place
