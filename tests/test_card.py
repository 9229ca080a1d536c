"""Claims anyone can check: a model card in RobustBench's format, ``verify`` re-running it
(reproduced, a raised figure failing by its gap, other weights refused on the hash, another
cascade not comparable), and the TensorBoard export read back with tensorboard's reader."""
from __future__ import annotations

import json
import re

import pytest

from conftest import requires_mnist
from core.jobs.store import RunStore

pytestmark = [requires_mnist, pytest.mark.slow]  # real audits and re-runs


@pytest.fixture(scope="module")
def carded(mnist_model, tmp_path_factory):
    """A fast audit (20 steps) of the shared MNIST model at L-inf 0.1 on 60 images, and its
    card."""
    from core.app.cli import main
    from core.jobs.runner import create, execute
    from core.jobs.specs import AuditSpec, EvaluateSpec

    _, _, run_id = mnist_model
    store = RunStore()
    audit = create(store, AuditSpec(model_run=run_id, eps=0.1, version="fast", n=60, seed=4,
                                    steps=20))
    execute(store, audit, echo=False)
    execute(store, create(store, EvaluateSpec(model_run=run_id, n=200)), echo=False)
    folder = tmp_path_factory.mktemp("card")
    assert main(["card", run_id, "--audit", audit, "--reported", "61.5", "--link",
                 "https://example.org/paper", "--out", str(folder)]) == 0
    return run_id, audit, folder


def test_a_card_has_robustbenchs_fields_and_types(carded):
    from core.jobs.card import FIELDS

    run_id, audit, folder = carded
    card = json.loads((folder / "card.json").read_text())
    for key in ("link", "name", "authors", "additional_data", "number_forward_passes",
                "dataset", "venue", "architecture", "eps", "clean_acc", "reported",
                "autoattack_acc", "unreliable"):
        assert isinstance(card[key], FIELDS[key][0]), key
    assert card["eps"] == "0.1" and card["dataset"] == "mnist" and card["reported"] == "61.5"
    assert re.fullmatch(r"\d{1,3}\.\d\d", card["clean_acc"])
    lab = card["robustlab"]
    assert lab["audit_run"] == audit and lab["images"]["n_examples"] == 60
    assert float(card["autoattack_acc"]) == pytest.approx(lab["robust_acc"]["value"] * 100,
                                                          abs=0.005)
    low, high = lab["robust_acc"]["interval"]
    assert low <= lab["robust_acc"]["value"] <= high
    assert [s["attack"] for s in lab["cascade"]["stages"]] == ["apgd-ce", "apgd-t"]
    assert len(lab["indicators"]) >= 9 and len(lab["weights_sha256"]) == 64
    assert card["unreliable"] == any(i["status"] == "fail" for i in lab["indicators"])
    assert {"torch", "python"} <= set(lab["software"]) and lab["date"].startswith("20")
    assert (folder / "card.md").read_text().startswith("# Model card:")
    from core.jobs.card import eps_text

    assert eps_text(8 / 255) == "8/255" and eps_text(0.3) == "0.3"


def _verify(*args: str, capsys) -> tuple[int, str]:
    from core.app.cli import main

    status = main(["verify", *args])
    out = capsys.readouterr()
    return status, out.out + out.err


def test_verify_reproduces_a_fresh_card_and_fails_a_raised_one(carded, tmp_path, capsys):
    run_id, _, folder = carded
    status, text = _verify(str(folder / "card.json"), "--run", run_id, capsys=capsys)
    assert status == 0, text
    assert "autoattack_acc: reproduced" in text and "the claim holds" in text
    card = json.loads((folder / "card.json").read_text())
    raised = float(card["autoattack_acc"]) + 5
    card["autoattack_acc"] = f"{raised:.2f}"
    (tmp_path / "raised.json").write_text(json.dumps(card))
    status, text = _verify(str(tmp_path / "raised.json"), "--run", run_id, capsys=capsys)
    assert status == 1, text
    assert "autoattack_acc: lower: the card's robust accuracy" in text
    assert "3 image(s) (5.00%) above its own per-image record" in text  # 5 pp of 60 images
    assert "the claim does not hold" in text


def test_verify_refuses_other_weights_and_other_cascades(carded, tmp_path, capsys):
    run_id, _, folder = carded
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"not the same weights")
    status, text = _verify(str(folder / "card.json"), "--weights", str(other), capsys=capsys)
    assert status == 2 and "these are other weights" in text
    card = json.loads((folder / "card.json").read_text())
    card["robustlab"]["cascade"]["code"] = "robustlab-cascade-0"
    (tmp_path / "old.json").write_text(json.dumps(card))
    before = len(RunStore().list_runs(kind="audit"))
    status, text = _verify(str(tmp_path / "old.json"), "--run", run_id, capsys=capsys)
    assert status == 1 and "autoattack_acc: not comparable: the card's cascade" in text
    assert len(RunStore().list_runs(kind="audit")) == before  # nothing re-run
    del card["clean_acc"]
    (tmp_path / "broken.json").write_text(json.dumps(card))
    status, text = _verify(str(tmp_path / "broken.json"), "--run", run_id, capsys=capsys)
    assert status == 2 and "lacks RobustBench's field 'clean_acc'" in text


def test_verify_on_a_seeded_part_of_the_images_says_so(carded, capsys):
    run_id, _, folder = carded
    status, text = _verify(str(folder / "card.json"), "--run", run_id, "-n", "20",
                           capsys=capsys)
    assert status == 0, text
    assert "a seeded part: 20 of the card's 60 images" in text and "on 20 images" in text


def test_export_writes_event_files_tensorboard_reads_back(carded, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from core.app.cli import main
    from core.paths import run_dir

    run_id, _, _ = carded
    assert main(["export", run_id, "--tensorboard", str(tmp_path)]) == 0
    events = EventAccumulator(str(tmp_path / run_id), size_guidance={"scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"epoch/test_acc", "eval/accuracy", "audit/linf_0.1_fast/robust_acc",
            "audit/linf_0.1_fast/Attack Failure Indicator 1 - Silent Success",
            "audit/linf_0.1_fast/indicator/gradients"} <= scalars
    assert any(t.startswith("train/") for t in scalars)
    assert "eval/confusion_matrix" in events.Tags()["images"]
    latest = [a for a in RunStore().list_runs(kind="audit", model_run=run_id, status="completed")
              if a.config["version"] == "fast" and a.config["eps"] == 0.1][0]  # newest first
    report = json.loads((run_dir(latest.id) / "audit.json").read_text())
    stages = [e.value for e in events.Scalars("audit/linf_0.1_fast/robust_acc")]
    assert stages == pytest.approx([report["clean_acc"]] +
                                   [s["robust_acc"] for s in report["stages"]])


def test_export_without_tensorboard_says_how_to_install_it(monkeypatch, carded):
    import sys

    from core.jobs.export import writer_class
    from core.paths import InputError

    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(InputError, match="pip install tensorboard"):
        writer_class()
