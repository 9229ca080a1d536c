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


# Each script runs as ``python SCRIPT --help`` would (runpy, as __main__), all in one child
# process: one import of torch for all of them instead of one each.
HELP_ALL = """
import contextlib, io, json, os, runpy, sys, traceback
answers, path0 = {}, list(sys.path[1:])
for path in sys.argv[1:]:
    out, err, code = io.StringIO(), io.StringIO(), 0
    sys.argv, sys.path[:] = [path, "--help"], [os.path.dirname(path), *path0]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(path, run_name="__main__")
        except SystemExit as stop:
            code = stop.code or 0
        except BaseException:
            code, _ = 1, traceback.print_exc()
    answers[path] = {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()[-2000:]}
print(json.dumps(answers))
"""


@pytest.fixture(scope="module")
def help_answers() -> dict:
    import json

    done = subprocess.run([sys.executable, "-c", HELP_ALL, *map(str, SCRIPTS)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_benchmark_imports_and_answers_help(script: Path, help_answers):
    answer = help_answers[str(script)]
    assert answer["code"] == 0, answer["stderr"]
    assert "usage:" in answer["stdout"]


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
