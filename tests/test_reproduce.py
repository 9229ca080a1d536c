"""Reproduce's pieces; the whole quick run is tested in test_one_path (its children
heartbeat under polling, and the report is complete)."""


def test_a_defense_whose_guard_kept_an_earlier_epoch_is_reported_with_both_weights(tmp_path):
    from core.paths import run_dir
    from core.jobs.reproduce import _label, _weights_to_report
    from core.jobs.store import RunStore

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


def test_a_report_of_some_parts_holds_only_those_parts():
    from dataclasses import asdict

    from core.jobs.reproduce import QUICK, render

    row = {"defense": "pgd-at", "weights": "final", "epoch": 1, "settings": "eps 0.2",
           "clean": 0.99, "pgd@0.1": 0.9, "pgd@0.2": 0.8, "audit": 0.75, "audit_eps": 0.2,
           "n_audit": 30, "audit_verdict": "trusted", "audit_failing": [], "cw_success": 0.5,
           "cw_median_l2": 1.5, "train_s": 12.0, "warnings": []}
    text = render({"quick": True, "plan": asdict(QUICK), "defenses": [row]})
    assert "(c) adversarial" in text and "| 75.00% | trusted (failing: none) |" in text
    assert "(a) seed-resnet" not in text and "(b) seed-resnet" not in text
