"""Models the lab did not train: a plain PyTorch loop's CNN (state_dict with a ``module.``
prefix, normalization outside the model), its TorchScript and torch.export forms, torchvision
and RobustBench architectures, and every refusal (wrong class count, mismatched keys, a pickle
that would run code, probabilities, a randomized model, a file that is no model)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import requires_mnist
from core.jobs.store import RunStore

MEAN, STD = 0.1307, 0.3081
NET_CODE = textwrap.dedent("""
    import torch.nn as nn
    import torch.nn.functional as F

    def build(num_classes=10):
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(16 * 7 * 7, num_classes))

    def softmax():
        return nn.Sequential(*build(), nn.Softmax(dim=1))

    class AlwaysDropout(nn.Module):
        def forward(self, x):  # dropout left on whatever the mode: a randomized model
            return F.dropout(x, 0.5, training=True)

    def noisy():
        return nn.Sequential(*build(), AlwaysDropout())
""")


def _plain_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(16 * 7 * 7, 10))


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A CNN trained by a plain PyTorch loop on 6,000 real MNIST images with the
    normalization outside the model, saved as a nested state_dict with a ``module.`` prefix
    (as DataParallel leaves it), beside the code that builds it."""
    from core import data

    folder = tmp_path_factory.mktemp("plain")
    train = data.load("mnist", "train").subset(6000, seed=0)
    x, y = train.floats(), train.labels
    torch.manual_seed(0)
    net = _plain_net()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(2):
        for i in range(0, len(x), 100):
            loss = F.cross_entropy(net((x[i:i + 100] - MEAN) / STD), y[i:i + 100])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    (folder / "net.py").write_text(NET_CODE)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()},
                "epoch": 2, "note": "trained elsewhere"}, folder / "cnn.pt")
    return net, folder


def _import(*args: str) -> tuple[int, str | None]:
    """Run ``python -m core import`` in-process; the exit status and the new run's id."""
    from core.app.cli import main

    store = RunStore()
    before = {r.id for r in store.list_runs()}
    status = main(["import", *args])
    new = [r.id for r in store.list_runs() if r.id not in before]
    return status, (new[0] if new else None)


def _normalized(net: nn.Module) -> nn.Module:
    class Normalized(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net((x - MEAN) / STD)

    return Normalized().eval()


@requires_mnist
def test_an_imported_cnn_predicts_as_its_own_loop(plain):
    from core import data
    from core.prediction import load_model, run_model_path

    net, folder = plain
    status, run_id = _import(str(folder / "cnn.pt"), "--dataset", "mnist", "--module",
                             f"{folder / 'net.py'}:build", "--mean", str(MEAN), "--std",
                             str(STD), "-n", "300")
    assert status == 0 and run_id
    run = RunStore().get(run_id)
    assert run.kind == "import" and run.status == "completed"
    assert run.summary["clean_acc"] > 0.8 and run.summary["n"] == 300
    assert (Path(run_model_path(run_id)).parent / "model_code.py").read_text() == NET_CODE
    model, meta = load_model(run_model_path(run_id))
    x = data.load("mnist", "test").subset(200, seed=1).floats()
    with torch.no_grad():
        ours, theirs = model(x), _normalized(net)(x)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert meta["import"]["file_sha256"] == run.summary["file_sha256"]


@requires_mnist
def test_its_torchscript_and_exported_forms_give_identical_logits(plain, tmp_path):
    from core import data
    from core.prediction import load_model, run_model_path

    net, _ = plain
    x = data.load("mnist", "test").subset(100, seed=2).floats()
    scripted = tmp_path / "cnn.ts"
    torch.jit.script(net).save(str(scripted))
    exported = tmp_path / "cnn.pt2"
    batch = torch.export.Dim("batch", min=1)
    torch.export.save(torch.export.export(net, (x[:4],), dynamic_shapes=({0: batch},)),
                      str(exported))
    with torch.no_grad():
        theirs = _normalized(net)(x)
    for path in (scripted, exported):
        status, run_id = _import(str(path), "--dataset", "mnist", "--mean", str(MEAN), "--std",
                                 str(STD), "-n", "100")
        assert status == 0, path
        model, meta = load_model(run_model_path(run_id))
        assert meta["import"]["format"] == ("torchscript" if path == scripted else "export")
        with torch.no_grad():
            assert (model(x) - theirs).abs().max().item() < 1e-5, path


@requires_mnist
@pytest.mark.slow
def test_the_fast_audit_of_an_import_matches_torchattacks(plain):
    """Fast audit (APGD-CE then APGD-T, 100 steps) at L-inf 0.1 on 200 images, against
    torchattacks' APGD-CE then APGD-T (100 steps) on the same normalized model and images."""
    torchattacks = pytest.importorskip("torchattacks")
    from core import data
    from core.jobs.runner import execute
    from core.jobs.specs import AuditSpec

    net, folder = plain
    _, run_id = _import(str(folder / "cnn.pt"), "--dataset", "mnist", "--module",
                        f"{folder / 'net.py'}:build", "--mean", str(MEAN), "--std", str(STD),
                        "-n", "100")
    store = RunStore()
    spec = AuditSpec(model_run=run_id, norm="linf", eps=0.1, version="fast", n=200, seed=0)
    audit = store.create_run("audit", spec.to_dict(), parent=run_id)
    ours = execute(store, audit, echo=False)["robust_acc"]
    split = data.load("mnist", "test").subset(200, seed=0)
    x, y = split.floats(), split.labels
    model = _normalized(net)
    with torch.no_grad():
        robust = model(x).argmax(1) == y
    for attack in (torchattacks.APGD(model, eps=0.1, steps=100, loss="ce", seed=0),
                   torchattacks.APGDT(model, eps=0.1, steps=100, n_classes=10, seed=0)):
        keep = robust.nonzero().flatten()
        adv = attack(x[keep], y[keep])
        with torch.no_grad():
            robust[keep] = model(adv).argmax(1) == y[keep]
    reference = robust.float().mean().item()
    assert abs(ours - reference) <= 0.005 + 1e-9, (ours, reference)


@pytest.mark.slow
def test_torchvision_and_robustbench_architectures_import(tmp_path):
    import torchvision

    net = torchvision.models.resnet18(num_classes=10)
    torch.save(net.state_dict(), tmp_path / "resnet18.pth")
    status, run_id = _import(str(tmp_path / "resnet18.pth"), "--dataset", "cifar10", "--arch",
                             "resnet18", "-n", "20")
    assert status == 0 and RunStore().get(run_id).summary["arch"] == "resnet18"
    from core.zoo import build_zoo

    small = build_zoo("wrn-10-1", 10, 3)
    torch.save({"model": {f"module.{k}": v for k, v in small.state_dict().items()}},
               tmp_path / "wrn.pt")
    status, run_id = _import(str(tmp_path / "wrn.pt"), "--dataset", "cifar10", "--arch",
                             "wrn-10-1", "--mean", "0.4914,0.4822,0.4465", "--std",
                             "0.2471,0.2435,0.2616", "-n", "20")
    assert status == 0
    dm = build_zoo("dm-wrn-10-1", 10, 3).state_dict()
    del dm["mean"], dm["std"]  # some of the zoo's files lack the normalization buffers
    torch.save(dm, tmp_path / "dm.pt")
    status, run_id = _import(str(tmp_path / "dm.pt"), "--dataset", "cifar10", "--arch",
                             "dm-wrn-10-1", "-n", "20")
    assert status == 0 and RunStore().get(run_id).summary["filled"] == ["mean", "std"]


def test_the_zoo_uses_robustbench_parameter_names():
    """The names of RobustBench's model_zoo/architectures: wide_resnet.py (WideResNet,
    TRADES' names), dm_wide_resnet.py (DMWideResNet) and resnet.py (PreActResNet-18)."""
    from core.zoo import build_zoo

    with torch.device("meta"):
        wrn = build_zoo("wrn-28-10", 10, 3).state_dict()
        wrn34 = build_zoo("wrn-34-10", 10, 3).state_dict()
        dm = build_zoo("dm-wrn-70-16", 10, 3).state_dict()
        pre = build_zoo("rb-preact-resnet18", 10, 3).state_dict()
    # 1 stem + 12 blocks x 12 (two BatchNorms of 5, two convs) + 3 shortcuts + 5 + 2
    assert len(wrn) == 155 and {
        "conv1.weight", "block1.layer.0.bn1.running_var", "block1.layer.0.convShortcut.weight",
        "block2.layer.3.conv2.weight", "block3.layer.0.convShortcut.weight", "bn1.weight",
        "fc.weight", "fc.bias"} <= wrn.keys()
    assert "block3.layer.4.conv1.weight" in wrn34 and wrn["fc.weight"].shape == (10, 640)
    assert {"mean", "std", "init_conv.weight", "layer.0.block.0.batchnorm_0.weight",
            "layer.0.block.0.shortcut.weight", "layer.2.block.10.conv_1.weight",
            "batchnorm.running_mean", "logits.weight"} <= dm.keys()
    assert dm["logits.weight"].shape == (10, 1024) and "layer.2.block.11.conv_0.weight" not in dm
    assert {"conv1.weight", "layer1.0.bn1.weight", "layer2.0.shortcut.0.weight",
            "layer4.1.conv2.weight", "linear.weight"} <= pre.keys()


def _refused(capsys, *args: str) -> str:
    status, run_id = _import(*args)
    err = capsys.readouterr().err
    assert status == 2 and run_id is None, err
    assert len(err.strip().splitlines()) == 1, err
    return err


@requires_mnist
def test_refusals_name_what_is_wrong_before_any_run_exists(plain, tmp_path, capsys):
    net, folder = plain
    code = str(folder / "net.py")
    ckpt = str(folder / "cnn.pt")
    five = torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(784, 5)))
    five.save(str(tmp_path / "five.ts"))
    assert "output has shape (8, 5); expected (8, 10)" in _refused(
        capsys, str(tmp_path / "five.ts"), "--dataset", "mnist")
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "imagenet.pth")
    assert "fc.weight (1000, 512) (the architecture has (10, 512))" in _refused(
        capsys, str(tmp_path / "imagenet.pth"), "--dataset", "cifar10", "--arch", "resnet18")
    assert "--classes names 3 classes but the dataset has 10" in _refused(
        capsys, ckpt, "--dataset", "mnist", "--module", f"{code}:build", "--classes", "a,b,c")
    state = {k: v for k, v in net.state_dict().items() if k != "7.bias"}
    state["head.extra"] = torch.zeros(3)
    torch.save(state, tmp_path / "keys.pt")
    err = _refused(capsys, str(tmp_path / "keys.pt"), "--dataset", "mnist", "--module",
                   f"{code}:build")
    assert "1 missing: 7.bias" in err and "1 unexpected: head.extra" in err
    (tmp_path / "notes.pt").write_text("these are not weights\n")
    assert "is not a model file" in _refused(capsys, str(tmp_path / "notes.pt"), "--dataset",
                                             "mnist", "--arch", "seed-resnet")
    assert "holds weights only" in _refused(capsys, ckpt, "--dataset", "mnist")
    assert "randomized" in _refused(capsys, ckpt, "--dataset", "mnist", "--module",
                                    f"{code}:noisy")


class _Payload:
    """A pickle that would create a file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_that_would_run_code_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Payload(marker)},
               tmp_path / "evil.pt")
    assert not marker.exists()
    err = _refused(capsys, str(tmp_path / "evil.pt"), "--dataset", "cifar10", "--arch",
                   "resnet18")
    assert "would run code" in err and not marker.exists()


@requires_mnist
def test_probabilities_and_randomness_are_flagged(plain, capsys):
    net, folder = plain
    code, ckpt = str(folder / "net.py"), str(folder / "cnn.pt")
    status, run_id = _import(ckpt, "--dataset", "mnist", "--module", f"{code}:softmax",
                             "--mean", str(MEAN), "--std", str(STD), "-n", "50")
    out = capsys.readouterr()
    assert status == 0 and "the outputs are probabilities" in out.err
    run = RunStore().get(run_id)
    assert run.summary["flags"] == ["probabilities"] and "flagged: probabilities" in run.warnings
    status, run_id = _import(ckpt, "--dataset", "mnist", "--module", f"{code}:noisy", "-n",
                             "50", "--allow-random")
    assert status == 0 and RunStore().get(run_id).summary["flags"] == ["randomized"]


@requires_mnist
def test_an_import_cannot_be_trained_or_resumed_and_is_deleted_like_a_run(plain, capsys):
    from core.app.cli import main
    from core.paths import run_dir

    _, folder = plain
    _, run_id = _import(str(folder / "cnn.pt"), "--dataset", "mnist", "--module",
                        f"{folder / 'net.py'}:build", "-n", "50")
    capsys.readouterr()
    assert main(["resume", run_id]) == 2
    assert "imported model: it cannot be trained or resumed" in capsys.readouterr().err
    assert main(["delete", run_id]) == 0
    assert not run_dir(run_id).exists() or not any(run_dir(run_id).iterdir())
