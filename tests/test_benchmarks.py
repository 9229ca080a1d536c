"""Every benchmark script imports what exists and answers --help, and every page imports
names that exist: a rename in core cannot silently break the scripts that RESULTS.md cites or
a page."""
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

SCRIPTS = sorted(p for p in (ROOT / "benchmarks").glob("*.py")
                 if p.name not in ("common.py", "small_model.py"))


def test_every_benchmark_is_checked():
    assert {p.name for p in SCRIPTS} >= {"gpu_speed.py", "train_throughput.py",
                                          "cifar10_accuracy.py", "mnist_accuracy.py"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_benchmark_imports_and_answers_help(script: Path):
    done = subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def test_every_name_a_benchmark_or_page_imports_from_core_exists():
    """Imports inside functions run only when a benchmark does, and a page's only when it is
    drawn: check each one here."""
    import ast
    import importlib

    pages = sorted((ROOT / "pages").glob("*.py")) + [ROOT / "dashboard.py"]
    for script in SCRIPTS + [ROOT / "benchmarks" / "small_model.py"] + pages:
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("core"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name) or importlib.util.find_spec(
                        f"{node.module}.{alias.name}"), f"{script.name}: {node.module}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("core"):
                        importlib.import_module(alias.name)
