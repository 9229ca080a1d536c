import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, requires_mnist


@requires_mnist
def test_quick_reproduce_writes_the_whole_report():
    proc = subprocess.run([sys.executable, "-m", "core", "reproduce", "--quick"], cwd=ROOT,
                          capture_output=True, text=True, env=dict(os.environ), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = Path(proc.stdout.strip().split("report written to ")[1])
    folder = report.parent
    text = report.read_text()
    for heading in ("(a) seed-resnet on CIFAR-10", "(b) seed-resnet on MNIST", "(c) adversarial"):
        assert heading in text
    assert "micro-F1" in text and "seed FGSM-AT" in text and "| iat |" in text
    for name in ("cifar_confusion.png", "cifar_confusion.html", "cifar_mistakes.png",
                 "mnist_attacks.png", "mnist_attacks.html", "defenses.png", "defenses.html",
                 "mnist_attack_table.csv", "mnist_attack_table.md", "results.json"):
        assert (folder / name).stat().st_size > 0, name
    results = json.loads((folder / "results.json").read_text())
    attacks = {r["attack"] for r in results["mnist"]["rows"]}
    assert attacks == {"noise", "fgsm", "pgd", "semantic", "cw"}
    assert 0 <= results["cifar"]["accuracy"] <= 1


def test_a_defense_whose_guard_kept_an_earlier_epoch_is_reported_with_both_weights(tmp_path):
    from core.paths import run_dir
    from core.reproduce import _label, _weights_to_report
    from core.store import RunStore

    store = RunStore()
    run = store.create_run("train", {"epochs": 5})
    store.set_summary(run, {"best": {"epoch": 2}})
    assert _weights_to_report(store, run) == ["final"]  # no collapse seen
    store.add_warning(run, "catastrophic overfitting suspected at epoch 3")
    assert _weights_to_report(store, run) == ["final"]  # no best checkpoint written
    run_dir(run).mkdir(parents=True, exist_ok=True)
    (run_dir(run) / "best.safetensors").write_bytes(b"weights")
    assert _weights_to_report(store, run) == ["final", "best"]
    store.set_summary(run, {"best": {"epoch": 5}})
    assert _weights_to_report(store, run) == ["final"]  # the best epoch is the last one
    assert _label({"defense": "iat", "weights": "best", "epoch": 2}) == "iat (best epoch, 2)"
    assert _label({"defense": "iat", "weights": "final", "epoch": 5}) == "iat"
