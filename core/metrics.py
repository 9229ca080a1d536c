"""Classification metrics, computed with scikit-learn.

For single-label classification micro-averaged F1 equals accuracy (every error is one false
positive and one false negative). The seed report quotes 65.18% accuracy beside 68.0% micro-F1,
which cannot both hold; RobustLab reports both, computed, and says so where it compares.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from core import confidence
from core.lazy import sklearn_metrics


def classification_report(y_true: Sequence[int], y_pred: Sequence[int],
                          classes: Sequence[str]) -> dict:
    """Accuracy, micro/macro F1, per-class precision/recall/F1/support and confusion matrix."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = list(range(len(classes)))
    precision, recall, f1, support = sklearn_metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    return {
        "n": int(len(y_true)),
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "accuracy_ci": confidence.interval(int((y_true == y_pred).sum()), len(y_true)),
        "micro_f1": float(sklearn_metrics.f1_score(y_true, y_pred, labels=labels, average="micro",
                                   zero_division=0)),
        "macro_f1": float(sklearn_metrics.f1_score(y_true, y_pred, labels=labels, average="macro",
                                   zero_division=0)),
        "per_class": [
            {"class": str(c), "precision": float(p), "recall": float(r), "f1": float(f),
             "support": int(s)}
            for c, p, r, f, s in zip(classes, precision, recall, f1, support)
        ],
        "confusion": sklearn_metrics.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "classes": [str(c) for c in classes],
    }
