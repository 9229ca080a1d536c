"""A ledger of finished batches is read back only under the conditions it was computed in:
a changed search precision, device, data source or split size, weights or attack code sets it
aside with one line saying which, and a damaged one gives one line and a fresh start."""
from __future__ import annotations

import pytest
import torch

from conftest import requires_mnist
from core.jobs.ledger import Ledger

SPEC = {"kind": "audit", "eps": 0.1}
BASE = {"precision": "bf16", "device": "cpu", "source": "MNIST test, 10,000 images",
        "n": 1000, "weights": "ab" * 32}


def _saved(tmp_path) -> Ledger:
    ledger = Ledger(tmp_path, SPEC, conditions=BASE)
    ledger.save({"norm": torch.arange(4.0)}, {"batch": 1})
    return ledger


def test_the_same_conditions_read_the_batches_back(tmp_path):
    _saved(tmp_path)
    again = Ledger(tmp_path, SPEC, conditions=dict(BASE))
    tensors, state = again.load()
    assert state == {"batch": 1} and torch.equal(tensors["norm"], torch.arange(4.0))
    assert again.changed is None


def test_a_changed_precision_device_or_data_source_starts_again_and_says_which(tmp_path):
    _saved(tmp_path)
    for key, value, said in (("precision", "fp32", "search precision bf16 -> fp32"),
                             ("device", "cuda:0", "device cpu -> cuda:0"),
                             ("source", "CIFAR-10 test, 10,000 images",
                              "data source MNIST test, 10,000 images -> CIFAR-10"),
                             ("n", 2000, "images 1000 -> 2000")):
        ledger = Ledger(tmp_path, SPEC, conditions=dict(BASE, **{key: value}))
        assert ledger.load() is None
        assert said in ledger.changed and ledger.changed.endswith("so it starts again")
    other_spec = Ledger(tmp_path, dict(SPEC, eps=0.2), conditions=BASE)
    assert other_spec.load() is None and other_spec.changed is None  # another job's: unread


def test_a_damaged_ledger_gives_one_line_and_a_fresh_start(tmp_path):
    ledger = _saved(tmp_path)
    shard = next(ledger.path.glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:40])
    again = Ledger(tmp_path, SPEC, conditions=BASE)
    assert again.load() is None
    assert again.changed.startswith("its saved batches could not be read (")
    assert "\n" not in again.changed


@requires_mnist
@pytest.mark.slow
def test_a_resumed_audit_whose_precision_changed_says_so_and_starts_again(mnist_model,
                                                                          capsys):
    """A stopped audit's batches were searched in bf16; resumed where the search is fp32, it
    says which condition changed, starts again, and completes."""
    from core.jobs.runner import create, execute
    from core.jobs.specs import AuditSpec
    from core.jobs.store import RunStore
    from core.paths import run_dir

    _, meta, model_run = mnist_model
    store = RunStore()
    spec = AuditSpec(model_run=model_run, eps=0.1, version="fast", n=20, precision="fp32")
    audit = create(store, spec)
    stale = Ledger(run_dir(audit), spec.to_dict(), conditions=dict(
        BASE, precision="bf16", weights=meta["sha256"]))
    stale.save({"code": torch.zeros(20, dtype=torch.long)}, {"stage": 0, "batch": 1})
    store.set_status(audit, "failed", error="stopped")
    summary = execute(store, audit, resume=True)
    err = capsys.readouterr().err
    assert "resume: what its saved batches were computed under changed (search precision " \
        "bf16 -> fp32" in err
    assert summary["n"] == 20 and store.get(audit).status == "completed"
    assert any("resumed from the start" in w for w in store.get(audit).warnings)


def test_each_save_writes_only_what_grew_and_reads_back_the_whole(tmp_path):
    """Per-example rows are appended as shards (bytes grow with n, not n squared); a tensor
    rewritten in place is stored whole; the shards add up to the last state saved."""
    ledger = Ledger(tmp_path, SPEC, conditions=BASE)
    rows, written = torch.empty(0, 784), []
    for k in range(10):
        rows = torch.cat([rows, torch.full((100, 784), float(k))])
        codes = torch.full((1000,), k, dtype=torch.uint8)  # changed in place every batch
        ledger.save({"x_adv": rows, "code": codes}, {"batch": k + 1})
        written.append(sum(p.stat().st_size for p in ledger.path.glob("*.safetensors")))
    final = rows.numel() * 4 + codes.numel()
    assert written[-1] <= 1.2 * final  # the appended rows once, the small codes ten times
    tensors, state = Ledger(tmp_path, SPEC, conditions=BASE).load()
    assert state == {"batch": 10} and torch.equal(tensors["x_adv"], rows)
    assert torch.equal(tensors["code"], codes)


def test_a_resumed_ledger_appends_after_what_it_read(tmp_path):
    first = Ledger(tmp_path, SPEC, conditions=BASE)
    first.save({"norm": torch.arange(3.0)}, {"batch": 1})
    again = Ledger(tmp_path, SPEC, conditions=BASE)
    tensors, _ = again.load()
    again.save({"norm": torch.cat([tensors["norm"], torch.tensor([7.0])])}, {"batch": 2})
    assert len(list(again.path.glob("*.safetensors"))) == 2
    tensors, state = Ledger(tmp_path, SPEC, conditions=BASE).load()
    assert tensors["norm"].tolist() == [0.0, 1.0, 2.0, 7.0] and state == {"batch": 2}


def test_a_fresh_start_sets_aside_what_an_earlier_attempt_left(tmp_path):
    _saved(tmp_path)
    fresh = Ledger(tmp_path, SPEC, conditions=dict(BASE, precision="fp32"))
    assert fresh.load() is None
    fresh.save({"norm": torch.tensor([5.0])}, {"batch": 1})
    tensors, state = Ledger(tmp_path, SPEC, conditions=dict(BASE, precision="fp32")).load()
    assert tensors["norm"].tolist() == [5.0] and state == {"batch": 1}


@requires_mnist
@pytest.mark.slow
def test_a_curves_ledger_writes_at_most_its_final_files_bytes(mnist_model, monkeypatch):
    """Bytes written by a curve's ledger, batch by batch, stay within 1.2x its final files
    (each batch's rows are written once; before shards, every batch rewrote them all)."""
    from core.jobs import ledger as ledger_
    from core.jobs.runner import create, execute
    from core.jobs.specs import CurveSpec
    from core.jobs.store import RunStore
    from core.paths import run_dir

    written = []
    original = ledger_.Ledger.save

    def save(self, tensors, state):
        before = {p.name for p in self.path.glob("*.safetensors")} if self.path.exists() \
            else set()
        original(self, tensors, state)
        written.extend(p.stat().st_size for p in self.path.glob("*.safetensors")
                       if p.name not in before)

    monkeypatch.setattr(ledger_.Ledger, "save", save)
    _, _, model_run = mnist_model
    store = RunStore()
    run = create(store, CurveSpec(model_run=model_run, n=80, batch_size=10, steps=2,
                                  attacks=["fmn"], check=False))
    execute(store, run, echo=False)
    final = sum((run_dir(run) / name).stat().st_size for name in
                ("curve_examples.safetensors", "curve.json", "curve.csv"))
    assert len(written) == 8 and sum(written) <= 1.2 * final
    assert not (run_dir(run) / ledger_.FOLDER).exists()
