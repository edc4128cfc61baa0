"""``medpipe evaluate`` for classifier bundles: class probabilities on a labelled split, scored.

A bundle is a classifier when its ``metadata.json`` declares the output ``pred`` as
``"type": "probabilities"``. :class:`~medpipe.bundle.model.BundleModel` predicts with the bundle's own
inference components (``preprocessing``, ``network``, ``inferer`` -- e.g. the cube-symmetry TTA of
:mod:`medpipe.tta`); a binary decision is ``P(class 1) >= threshold`` with the threshold stored next
to the weights (``threshold.json``, chosen on the validation split at the end of training,
:mod:`medpipe.evaluate.threshold`; 0.5 without it); multi-class decisions are argmax. The figures are
:func:`medpipe.evaluate.metrics.classification_figures`. Writes ``predictions.csv`` (case, label,
probabilities, prediction) and ``summary.json`` to ``<bundle>/eval/<split>/`` and prints a table.

A binary bundle that names a ``rating_key`` (common.json; e.g. LIDC's malignancy 1-5) is also scored
against the entries' ratings where they carry them: Spearman's rank correlation of P(class 1) with the
rating and, for a bundle trained on the rating (``target: rating``, :class:`~medpipe.bundle.classifier.
RatingTargetd`), the mean absolute error of the predicted rating ``low + (high - low) * P(class 1)``
(column ``predicted_rating``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.atomic import atomic_write_text
from medpipe.bundle.model import BundleModel
from medpipe.data.checks import check_labelled_cases
from medpipe.data.manifest import load_manifest
from medpipe.evaluate.metrics import classification_figures, predicted_classes
from medpipe.evaluate.threshold import THRESHOLD_FILE, inferer_name, threshold_beside
from medpipe.privacy import case_id, shown_path
from medpipe.tables import write_csv


def labelled_entries(model: BundleModel, split: str) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The entries of ``split`` of the model's manifest, checked, and their class labels."""
    entries = load_manifest(model.get("manifest")).split(split, required_keys=("image", "label"))
    check_labelled_cases(entries, int(model.get("num_classes")), split=split)
    return entries, np.array([int(e["label"]) for e in entries])


def evaluate_classifier(
    model: BundleModel,
    *,
    split: str = "test",
    output: str | Path | None = None,
    show_paths: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score classifier ``model`` on ``split``; see the module docstring. Returns summary.json."""
    entries, label = labelled_entries(model, split)
    record = threshold_beside(model.weights.path)
    threshold = None if record is None else record.threshold
    echo(f"evaluating {model.layout.root.name} on split '{split}' ({len(entries)} cases) on {model.device}")
    echo(f"weights {model.describe_weights()}")
    start = time.perf_counter()
    prob = model.probabilities(entries)
    seconds = time.perf_counter() - start
    result = classification_figures(prob, label, threshold)
    pred = predicted_classes(prob, threshold)
    out_dir = Path(output) if output else model.layout.root / "eval" / split
    k = prob.shape[1]
    fields = ["case", "label", *(f"prob_{c}" for c in range(k)), "prediction"] + (
        ["image"] if show_paths else []
    )
    rows = [
        {"case": case_id(e), "label": y, **{f"prob_{c}": float(p[c]) for c in range(k)}, "prediction": d,
         "image": shown_path(e["image"], show_paths)}
        for e, y, p, d in zip(entries, label, prob, pred, strict=True)
    ]  # fmt: skip
    rating = rating_figures(model, entries, prob)
    if rating is not None and "predicted" in rating:
        fields.insert(fields.index("prediction") + 1, "predicted_rating")
        for row, value in zip(rows, rating.pop("predicted"), strict=True):
            row["predicted_rating"] = round(float(value), 3)
    write_csv(out_dir / "predictions.csv", rows, fields)
    manifest = Path(str(model.get("manifest")))
    summary = {
        "bundle": model.layout.root.name,
        "bundle_version": model.version,
        "weights_sha256": model.weights.sha256,
        "split": split,
        "manifest": str(manifest) if show_paths else manifest.name,
        "cases": len(entries),
        "inferer": inferer_name(model.inferer),
        "threshold_source": THRESHOLD_FILE if threshold is not None else "default 0.5 / argmax",
        "seconds": round(seconds, 1),
        "metrics": result,
    }
    if rating is not None:
        summary["rating"] = rating
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
    decision = "argmax" if result["threshold"] is None else f"P(1) >= {result['threshold']:.3f}"
    echo(f"{'AUC':>7} {'acc':>7} {'F1':>7} {'prec':>7} {'recall':>7}  decision")
    echo(
        f"{result['auc']:7.4f} {result['accuracy']:7.4f} {result['f1']:7.4f} {result['precision']:7.4f} "
        f"{result['recall']:7.4f}  {decision}"
    )
    echo("confusion matrix (rows = label, columns = prediction): " + json.dumps(result["confusion_matrix"]))
    if rating is not None:
        mae = f", predicted rating MAE {rating['mae']:.3f}" if "mae" in rating else ""
        echo(f"against {rating['key']} ({rating['cases']} cases): Spearman {rating['spearman']:.3f}{mae}")
    echo(f"{len(entries)} cases in {seconds:.0f} s; predictions and summary in {out_dir}")
    return summary


def rating_figures(model: BundleModel, entries: list[dict[str, Any]], prob: np.ndarray) -> dict[str, Any] | None:
    """Spearman of P(class 1) with the entries' ``rating_key`` (and the predicted rating's MAE for a
    ``target: rating`` bundle); ``None`` for a multi-class bundle or when no entry carries a rating."""
    key = model.get("rating_key")
    if not key or prob.shape[1] != 2:
        return None
    values = np.array([float(e[key]) if _finite(e.get(key)) else np.nan for e in entries])
    known = np.isfinite(values)
    if known.sum() < 3:
        return None
    from scipy.stats import spearmanr

    out: dict[str, Any] = {"key": str(key), "cases": int(known.sum()),
                           "spearman": float(spearmanr(prob[known, 1], values[known]).statistic)}  # fmt: skip
    if model.get("target", "label") == "rating":
        low, high = (float(v) for v in model.get("rating_range", (1.0, 5.0)))
        predicted = low + (high - low) * prob[:, 1]
        out["mae"] = float(np.abs(predicted[known] - values[known]).mean())
        out["predicted"] = predicted.tolist()
    return out


def _finite(value: Any) -> bool:
    try:
        return bool(np.isfinite(float(value)))
    except (TypeError, ValueError):
        return False
