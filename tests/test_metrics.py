import pytest

from core.metrics import classification_report


def test_hand_checked_report():
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0]
    r = classification_report(y_true, y_pred, ["a", "b", "c"])
    assert r["accuracy"] == pytest.approx(4 / 6)
    # class a: tp 1, fp 1, fn 1 -> p=r=f=0.5; b: tp 2, fp 1 -> p 2/3, r 1, f 0.8; c: p 1, r .5
    per = {c["class"]: c for c in r["per_class"]}
    assert per["a"]["precision"] == pytest.approx(0.5) and per["a"]["recall"] == pytest.approx(0.5)
    assert per["b"]["f1"] == pytest.approx(0.8)
    assert per["c"]["precision"] == pytest.approx(1.0) and per["c"]["recall"] == pytest.approx(0.5)
    assert r["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert r["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_micro_f1_equals_accuracy_for_single_label():
    y_true = [0, 1, 2, 3, 0, 1, 2, 3, 3]
    y_pred = [0, 2, 2, 3, 1, 1, 0, 3, 2]
    r = classification_report(y_true, y_pred, list("wxyz"))
    assert r["micro_f1"] == pytest.approx(r["accuracy"])


def test_absent_class_has_zero_scores_not_errors():
    r = classification_report([0, 0], [0, 0], ["a", "b"])
    assert r["per_class"][1] == {"class": "b", "precision": 0.0, "recall": 0.0, "f1": 0.0,
                                 "support": 0}
