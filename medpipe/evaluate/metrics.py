"""The figures medpipe reports: one function for classifiers, one summary for per-case segmentation metrics.

:func:`classification_figures` is scikit-learn's ROC AUC, accuracy, F1, precision, recall
(sensitivity), specificity and confusion matrix, at a decision threshold on P(class 1) for a binary
classifier (argmax for more classes). Training handlers, ``medpipe evaluate`` and the robustness
report all call it, so a figure means the same everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)


def predicted_classes(prob: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Classes of probabilities (N, K): ``P(1) >= threshold`` (0.5 by default) when K = 2, else argmax."""
    if prob.shape[1] == 2:
        return (prob[:, 1] >= (0.5 if threshold is None else float(threshold))).astype(int)
    return prob.argmax(1)


def classification_figures(
    prob: np.ndarray, label: np.ndarray, threshold: float | None = None
) -> dict[str, Any]:
    """Figures for probabilities ``prob`` (N, K) against class labels ``label`` (N,)."""
    prob, label = np.asarray(prob, dtype=np.float64), np.asarray(label).astype(int)
    k = prob.shape[1]
    pred = predicted_classes(prob, threshold)
    present = np.unique(label)
    if k == 2:
        auc = roc_auc_score(label, prob[:, 1]) if len(present) == 2 else float("nan")
        average = "binary"
    else:
        auc = (
            roc_auc_score(label, prob, multi_class="ovr", labels=list(range(k)))
            if len(present) == k
            else float("nan")
        )
        average = "macro"
    cm = confusion_matrix(label, pred, labels=list(range(k)))
    out: dict[str, Any] = {
        "auc": float(auc),
        "accuracy": float(accuracy_score(label, pred)),
        "f1": float(f1_score(label, pred, average=average, zero_division=0)),
        "precision": float(precision_score(label, pred, average=average, zero_division=0)),
        "recall": float(recall_score(label, pred, average=average, zero_division=0)),
        "threshold": (0.5 if threshold is None else float(threshold)) if k == 2 else None,
        "confusion_matrix": cm.tolist(),
        "n": int(len(label)),
    }
    if k == 2:
        tn, fp = cm[0]
        out["specificity"] = float(tn / (tn + fp)) if tn + fp else float("nan")
    return out


def summarise(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Mean, median, std, min, max and counts of each column over ``rows``; undefined (NaN) values counted apart."""
    out: dict[str, dict[str, Any]] = {}
    for column in columns:
        values = np.array([r[column] for r in rows], dtype=float)
        finite = values[np.isfinite(values)]
        stats = {k: None for k in ("mean", "median", "std", "min", "max")}
        if finite.size:
            stats = {
                "mean": float(finite.mean()),
                "median": float(np.median(finite)),
                "std": float(finite.std()),
                "min": float(finite.min()),
                "max": float(finite.max()),
            }
        out[column] = {**stats, "n": int(finite.size), "n_undefined": int(values.size - finite.size)}
    return out
