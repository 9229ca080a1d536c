"""One path for every job: specs, the runner's lease and statuses, signals, progress lines,
bad data, threat models, CLI conventions and the layering of ``core``."""
import ast
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.jobs.store import RunBusy, RunStore

from conftest import ROOT, requires_mnist, wait_for

CORE = ROOT / "core"


def _cli(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ, **(env or {})), timeout=600, **kw)


# --- specs -----------------------------------------------------------------------------

def test_every_spec_round_trips_through_its_config_json():
    from core.jobs.specs import (AttackSpec, EvaluateSpec, GridSpec, ReproduceSpec, SweepSpec,
                            TrainSpec, spec_from_config)

    specs = [TrainSpec(defense="iat", defense_args={"eps": 0.3}), EvaluateSpec(model_run="r"),
             AttackSpec(model_run="r", attack="cw", strong=True), SweepSpec(model_run="r"),
             GridSpec(model_run="r", attack="fgsm"), ReproduceSpec(quick=True)]
    for spec in specs:
        assert spec_from_config(spec.kind, spec.to_dict()) == spec


def test_defaults_live_once_in_the_spec_and_the_cli_uses_them():
    from core.app.cli import attack_spec, build_parser, sweep_spec
    from core.attacks.cw import CWSettings
    from core.attacks.pgd import PGDSettings

    args = build_parser().parse_args(["attack", "r", "--attack", "cw"])
    assert attack_spec(args).params == CWSettings().params()
    strong = attack_spec(build_parser().parse_args(["attack", "r", "--attack", "cw", "--strong"]))
    assert strong.params["steps"] == 1000 and strong.params["search_steps"] == 9
    sweep = sweep_spec(build_parser().parse_args(["sweep", "r"]))
    pgd = next(a for a in sweep.attacks if a["name"] == "pgd")
    assert pgd["params"] == PGDSettings().params()  # same PGD as `attack` and the dashboard


def test_spec_validation_needs_no_torch():
    code = ("import sys; from core.jobs.specs import TrainSpec, SweepSpec\n"
            "try:\n    TrainSpec(epochs=0)\nexcept ValueError as e:\n    print(e)\n"
            "SweepSpec(model_run='r', attacks=['pgd', 'cw'], budgets=[0.1])\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert out[0] == "epochs must be a positive whole number, got 0" and out[1] == "False"


@pytest.mark.parametrize("args", [["train", "--epochs", "0"], ["sweep", "r", "--eps", "0.1,,2"],
                                  ["attack", "r", "--attack", "pgd", "--eps", "3"]])
def test_bad_values_are_rejected_before_torch_loads(args):
    """The refusal needs no torch (so it comes at once): with torch made unimportable the
    command still answers with its one line."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from core.app.cli import main\n"
            f"sys.exit(main({args!r}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: "), proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1
    assert _cli(*args).stderr == proc.stderr  # the real command says the same


# --- the store's lease and the states of runs ------------------------------------------

def test_a_second_writer_is_refused(tmp_path):
    from core.jobs.runner import execute

    store = RunStore(tmp_path / "r.db")
    run_id = store.create_run("evaluate", {"model_run": "x"})
    store.acquire(run_id, "first-writer")  # a live process (this one) with a fresh heartbeat
    with pytest.raises(RunBusy, match="already being run by process"):
        store.acquire(run_id, "second-writer")
    with pytest.raises(RunBusy):
        execute(store, run_id)
    assert store.get(run_id).status == "queued"  # the refused writer changed nothing
    store.release(run_id, "first-writer")
    store.acquire(run_id, "second-writer")


def test_a_stale_lease_is_taken_over(tmp_path):
    store = RunStore(tmp_path / "r.db")
    run_id = store.create_run("evaluate", {"model_run": "x"})
    store.acquire(run_id, "dead-writer")
    store._conn.execute("UPDATE runs SET heartbeat=0 WHERE id=?", (run_id,))
    store.acquire(run_id, "new-writer")
    assert store.get(run_id).owner == "new-writer"


def test_cancel_of_a_finished_run_says_so_and_changes_nothing(tmp_path):
    env = {"ROBUSTLAB_ARTIFACTS": str(tmp_path)}
    store = RunStore(tmp_path / "runs.db")
    run_id = store.create_run("attack", {"model_run": "x"})
    store.set_status(run_id, "completed")
    proc = _cli("cancel", run_id, env=env)
    assert proc.returncode == 0 and "already finished (completed); nothing to cancel" in proc.stdout
    assert store.get(run_id).status == "completed" and not store.get(run_id).cancel_requested


def test_resume_rules_are_one_and_refuse_runs_without_a_checkpoint(tmp_path, monkeypatch):
    from core.app.cli import main
    from core.paths import run_dir
    from core.jobs.store import resume_refusal

    monkeypatch.setenv("ROBUSTLAB_ARTIFACTS", str(tmp_path))
    store = RunStore()
    run_id = store.create_run("train", {"epochs": 2})
    store.set_status(run_id, "failed", error="boom")
    assert "before its first checkpoint" in resume_refusal(store.get(run_id))
    assert main(["resume", run_id]) == 2
    (run_dir(run_id) / "checkpoint.safetensors").write_bytes(b"w")
    assert resume_refusal(store.get(run_id)) is None
    store.set_status(run_id, "completed")
    assert "only failed or cancelled" in resume_refusal(store.get(run_id))
    attack = store.create_run("attack", {})
    store.set_status(attack, "cancelled")
    assert "only train, audit, sweep, grid, curve, reproduce and study runs resume" in \
        resume_refusal(store.get(attack))


# --- signals: SIGINT and SIGTERM leave every job cancelled ------------------------------

SLOW = {"train": ["train", "--epochs", "30", "--train-subset", "2000", "--test-subset", "100"],
        "attack": ["attack", None, "--attack", "cw", "--strong", "-n", "300"],
        "sweep": ["sweep", None, "--attacks", "pgd", "--strong", "--eps", "0.1,0.2", "-n", "500"]}


@requires_mnist
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["train", "attack", "sweep"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_leave_the_job_cancelled(kind, sig, mnist_model):
    _, _, model_run = mnist_model
    store = RunStore()
    before = {r.id for r in store.list_runs()}
    args = [model_run if a is None else a for a in SLOW[kind]]
    proc = subprocess.Popen([sys.executable, "-m", "core", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))

    def started():
        new = [r for r in store.list_runs(kind=kind) if r.id not in before]
        return new and new[0].status == "running" and (kind != "train"
                                                        or store.metrics(new[0].id))

    assert wait_for(started, 120)
    run_id = next(r.id for r in store.list_runs(kind=kind) if r.id not in before)
    # a training that logged a step is inside its loop; an attack or a sweep marked running
    # may still be loading: give it a moment to be inside a batch
    time.sleep(0.3 if kind == "train" else 1.5)
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()  # a job that ignored the signal must not run on beside the other tests
    run = store.get(run_id)
    assert run.status == "cancelled", (run.status, run.error, err[-2000:])
    assert signal.Signals(sig).name in run.error and "Traceback" not in err
    assert proc.returncode == 130
    # a sweep keeps its finished batches; a training resumes once it has a checkpoint
    resumable = kind == "sweep" or (kind == "train" and _has_checkpoint(run_id))
    hint = "resume it" if resumable else "start it again"
    assert hint in run.error and run.owner is None


def _has_checkpoint(run_id: str) -> bool:
    from core.paths import run_dir

    return (run_dir(run_id) / "checkpoint.safetensors").exists()


@requires_mnist
def test_a_cancel_from_the_store_interrupts_a_long_attack_batch(mnist_model):
    from core.jobs.runner import submit
    from core.jobs.specs import AttackSpec

    _, _, model_run = mnist_model
    store = RunStore()
    run_id = submit(store, AttackSpec(model_run=model_run, attack="cw", strong=True, n=250))
    assert wait_for(lambda: store.get(run_id).status == "running", 60)
    time.sleep(2.0)  # inside its first (and only) batch of 250 images
    assert store.request_cancel(run_id)
    # the batch alone takes many minutes (CW 1000 x 9 on 250 images): cancelled means it was
    # interrupted inside it
    assert wait_for(lambda: store.get(run_id).status == "cancelled", 120), store.get(run_id).error
    assert "start it again" in store.get(run_id).error


# --- reproduce's children heartbeat ------------------------------------------------------

@requires_mnist
@pytest.mark.slow
def test_reproduce_children_stay_running_under_polling(tmp_path):
    env = dict(os.environ, ROBUSTLAB_ARTIFACTS=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "core", "reproduce", "--quick"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store = RunStore(tmp_path / "runs.db")
    seen_running: set[str] = set()
    while proc.poll() is None:
        # the dashboard's sidebar does this every 3 s; a strict threshold makes a missing
        # heartbeat show at once
        assert store.mark_stale(stale_after_s=6.0) == []
        seen_running |= {r.id for r in store.list_runs(status="running") if r.parent}
        time.sleep(0.5)
    out, err = proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    _check_report(Path(out.strip().split("report written to ")[1]))
    children = [r for r in store.list_runs() if r.parent]
    assert len(children) >= 10 and len(seen_running) >= 3
    assert all(r.status == "completed" for r in children)
    kinds = {r.kind for r in children}
    assert kinds == {"train", "evaluate", "sweep", "attack", "audit"}  # the CLI's jobs


def _check_report(report: Path) -> None:
    import json

    folder, text = report.parent, report.read_text()
    for heading in ("(a) seed-resnet on CIFAR-10", "(b) seed-resnet on MNIST", "(c) adversarial"):
        assert heading in text
    assert "micro-F1" in text and "seed FGSM-AT" in text and "| iat |" in text
    assert "per threat model" in text
    for name in ("cifar_confusion.png", "cifar_confusion.html", "cifar_mistakes.png",
                 "mnist_attacks.png", "mnist_attacks.html", "defenses.png", "defenses.html",
                 "mnist_attack_table.csv", "mnist_attack_table.md", "results.json"):
        assert (folder / name).stat().st_size > 0, name
    results = json.loads((folder / "results.json").read_text())
    assert {r["attack"] for r in results["mnist"]["rows"]} == {"noise", "fgsm", "pgd",
                                                               "semantic", "cw"}
    assert 0 <= results["cifar"]["accuracy"] <= 1
    for row in results["defenses"]:  # every defended model is audited beside its PGD figures
        assert 0 <= row["audit"] <= row["clean"] and row["n_audit"] == 30
        assert row["audit_verdict"] in ("trusted", "doubtful", "failed", "nothing left to check")
    assert "audit (at training eps)" in text


# --- progress in every log ----------------------------------------------------------------

@pytest.mark.slow
@requires_mnist
def test_progress_lines_appear_when_stderr_is_a_file(tmp_path, mnist_model):
    _, _, model_run = mnist_model
    log = tmp_path / "stderr.log"
    env = {"ROBUSTLAB_PROGRESS_EVERY": "1"}
    with open(log, "w") as fh:
        subprocess.run([sys.executable, "-m", "core", "train", "--epochs", "2", "--train-subset",
                        "600", "--test-subset", "100"], cwd=ROOT, stdout=subprocess.DEVNULL,
                       stderr=fh, env=dict(os.environ, **env), check=True, timeout=600)
        subprocess.run([sys.executable, "-m", "core", "attack", model_run, "--attack", "cw",
                        "-n", "250", "--steps", "12"], cwd=ROOT, stdout=subprocess.DEVNULL,
                       stderr=fh, env=dict(os.environ, **env), check=True, timeout=600)
    text = log.read_text()
    assert "\r" not in text  # no bar redraws in a log
    assert "estimated time: about" in text
    epochs = [ln for ln in text.splitlines() if ln.startswith("epoch ")]
    assert [ln[:10] for ln in epochs] == ["epoch 1/2:", "epoch 2/2:"]
    # every epoch says done/total, images per second and time left ("finishing" at the count's
    # end, never "0 s left")
    assert all("steps (" in ln and "img/s" in ln and (" left" in ln or "finishing" in ln)
               for ln in epochs), epochs
    assert not any("· 0 s left" in ln for ln in text.splitlines())
    # one CW batch of 250 images takes seconds: the heartbeat thread still prints lines
    assert sum(ln.startswith("attack: ") for ln in text.splitlines()) >= 2


# --- bad data is found before a run row exists ---------------------------------------------

def _imagefolder(root: Path, classes: dict, size: int = 8, bad: str | None = None) -> Path:
    from PIL import Image

    for split in ("train", "test"):
        for cls, count in classes.items():
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                Image.new("L", (size, size), k * 20).save(folder / f"{k}.png")
    if bad:
        (root / "train" / next(iter(classes)) / "broken.png").write_bytes(b"not a png")
    return root


@pytest.mark.parametrize("layout, message", [
    ({"classes": {"only": 12}}, "needs at least 2"),
    ({"classes": {"a": 2, "b": 2}}, "training needs at least 10"),
    ({"classes": {"a": 6, "b": 6}, "size": 4}, "need at least 8x8"),
    ({"classes": {"a": 6, "b": 6}, "bad": "yes"}, "cannot read image"),
    (None, "has no train/ folder"),
])
def test_bad_data_is_refused_before_any_run_row(tmp_path, monkeypatch, capsys, layout, message):
    from core.app.cli import main

    monkeypatch.setenv("ROBUSTLAB_ARTIFACTS", str(tmp_path / "artifacts"))
    root = tmp_path / "data"
    if layout is not None:
        _imagefolder(root, **layout)
    assert main(["train", "--dataset", f"imagefolder:{root}", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert RunStore().list_runs() == []


# --- threat models ------------------------------------------------------------------------

@requires_mnist
def test_worst_case_never_crosses_threat_models(mnist_model, mnist_test):
    from core.attacks import build_attack
    from core.evaluation import sweep

    model, _, _ = mnist_model
    data = mnist_test.subset(100, seed=5)
    result = sweep(model, data, [build_attack("pgd", norm="l2", steps=10),
                                 build_attack("fgsm"), build_attack("noise")], [0.3])
    worst = {(w["norm"], w["eps"]): w for w in result["worst_case"]}
    assert set(worst) == {("l2", 0.3), ("linf", 0.3)}
    acc = {r["attack"]: r["adv_acc"] for r in result["rows"]}
    assert worst[("l2", 0.3)]["worst_case_acc"] == acc["pgd"] > 0.8  # L2 0.3 is tiny
    assert worst[("linf", 0.3)]["worst_case_acc"] == acc["fgsm"] < 0.5
    assert not any("beats PGD" in w for w in result["warnings"])


# --- command-line conventions ---------------------------------------------------------------

def test_global_options_before_or_after_the_command(tmp_path, capsys, monkeypatch):
    from core.app.cli import main

    # --artifacts-dir sets ROBUSTLAB_ARTIFACTS for the process; restore it after the test
    monkeypatch.setenv("ROBUSTLAB_ARTIFACTS", os.environ["ROBUSTLAB_ARTIFACTS"])
    for argv in (["--artifacts-dir", str(tmp_path), "runs"], ["runs", "--artifacts-dir",
                                                              str(tmp_path)]):
        assert main(argv) == 0
        assert "no runs yet" in capsys.readouterr().out
    assert main(["evaluate", "no-such-run", "--data-dir", str(tmp_path)]) == 2
    assert "no run with id 'no-such-run'" in capsys.readouterr().err


def test_help_hides_nothing_odd():
    out = _cli("--help").stdout
    assert "SUPPRESS" not in out and "worker" not in out
    assert "--artifacts-dir" in out and "ROBUSTLAB_ARTIFACTS" in out


@pytest.mark.slow
def test_runs_survives_a_closed_pipe_and_shows_full_errors_on_demand(tmp_path):
    store = RunStore(tmp_path / "runs.db")
    long_error = "ValueError: " + "a very long explanation of what went wrong " * 5 + "THE END"
    failed = store.create_run("train", {})
    store.set_status(failed, "failed", error=long_error)
    for _ in range(1000):  # more output than a pipe buffer holds
        store.create_run("evaluate", {})
    env = dict(os.environ, ROBUSTLAB_ARTIFACTS=str(tmp_path))
    proc = subprocess.run(f"{sys.executable} -m core runs | head -2", shell=True, cwd=ROOT,
                          capture_output=True, text=True, env=env)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
    short = _cli("runs", "--kind", "train", env={"ROBUSTLAB_ARTIFACTS": str(tmp_path)}).stdout
    assert "THE END" not in short and "(show RUN)" in short
    full = _cli("runs", "--kind", "train", "--full",
                env={"ROBUSTLAB_ARTIFACTS": str(tmp_path)}).stdout
    assert "THE END" in full
    assert "THE END" in _cli("show", failed, env={"ROBUSTLAB_ARTIFACTS": str(tmp_path)}).stdout


# --- layering --------------------------------------------------------------------------------

def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in CORE.rglob("*.py") if p.name != "__main__.py"}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of ``core`` that a file imports, at any level (function-level included)."""
    found, tree = set(), ast.parse(path.read_text())
    hints = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
             and getattr(block.test, "id", "") == "TYPE_CHECKING" for n in ast.walk(block)}
    for node in ast.walk(tree):
        if id(node) in hints:  # type hints only: no import at run time
            continue
        if isinstance(node, ast.ImportFrom) and node.level:
            pytest.fail(f"{path}: core imports absolutely (from core.x import y)")
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [f"{node.module}.{a.name}" for a in node.names]
                 if isinstance(node, ast.ImportFrom) else [])
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != "core":
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(p, modules) - {m} for m, p in modules.items()}


def test_core_has_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


# which subpackages each layer may import: the shared values at the top import no subpackage
# but attacks (the audit and evaluation need them); attacks import only the shared values
ALLOWED = {"core": {"attacks"}, "core.attacks": set(), "core.audit": {"attacks"},
           "core.training": {"attacks"}, "core.jobs": {"attacks", "audit", "training"},
           "core.app": {"attacks", "audit", "training", "jobs"}}


def _layer(module: str) -> str:
    parts = module.split(".")
    return "core" if len(parts) == 2 and module not in ALLOWED else ".".join(parts[:2])


def test_layering_rules():
    graph = _graph()
    assert not any(m.startswith("core.training") for m in graph["core.evaluation"])
    assert not any(m.startswith("core.training") for m in graph["core.prediction"])
    assert {"core.evaluation", "core.attacks"}.isdisjoint(graph["core.distributed"])
    for module, imported in graph.items():
        layer = _layer(module)
        for other in imported:
            target = _layer(other)
            assert target == "core" or target == layer or target.split(".")[1] in ALLOWED[layer], \
                f"{module} imports {other}"
    for page in list((ROOT / "pages").glob("*.py")) + [ROOT / "dashboard.py"]:
        text = page.read_text()
        assert "core.app.cli" not in text and "core.app.console" not in text, page
        assert "import torch" not in text and "torch." not in text, f"{page} holds torch code"
    for module, path in _modules().items():  # core never imports streamlit
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                 for a in n.names}
        names |= {(n.module or "").split(".")[0] for n in ast.walk(tree)
                  if isinstance(n, ast.ImportFrom) and n.level == 0}
        assert "streamlit" not in names, module


def test_the_dashboards_warm_up_is_light_to_import_and_loads_the_heavy_libraries():
    """The warm-up's own module imports nothing heavy (pages may import it early); running it
    leaves the libraries the pages import lazily loaded."""
    probe = ("import sys, core.app.preload\n"
             "assert 'torch' not in sys.modules, 'core.app.preload imported torch'\n"
             "core.app.preload.import_libraries()\n"
             "assert {'torch', 'torchvision', 'sklearn.metrics', 'plotly.graph_objects'} <= set(sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
