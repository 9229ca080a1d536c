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
    for name in ("cifar_confusion.png", "cifar_confusion.html", "cifar_misclassified.png",
                 "mnist_attacks.png", "mnist_attacks.html", "defenses.png", "defenses.html",
                 "mnist_attack_table.csv", "mnist_attack_table.md", "results.json"):
        assert (folder / name).stat().st_size > 0, name
    results = json.loads((folder / "results.json").read_text())
    attacks = {r["attack"] for r in results["mnist"]["rows"]}
    assert attacks == {"noise", "fgsm", "pgd", "semantic", "cw"}
    assert 0 <= results["cifar"]["accuracy"] <= 1
