"""``medpipe evaluate``: a bundle's shipped prediction path on a labelled split, scored.

* :mod:`~medpipe.evaluate.segmentation` -- Dice, HD95, surface Dice per class, in each case's own grid;
* :mod:`~medpipe.evaluate.classification` -- AUC, accuracy, F1... at the stored decision threshold;
* :mod:`~medpipe.evaluate.detection` -- lesion bundles as detectors: sensitivity, false positives per scan, FROC;
* :mod:`~medpipe.evaluate.threshold` -- the one threshold policy and ``threshold.json`` schema;
* :mod:`~medpipe.evaluate.robustness` -- a classifier re-scored under graded perturbations;
* :mod:`~medpipe.evaluate.metrics` -- the figures themselves.

Every score comes from :class:`~medpipe.bundle.model.BundleModel`, the predictor ``medpipe infer``
uses, so what is scored is what ships.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from medpipe.bundle.model import CLASSIFICATION, BundleModel
from medpipe.evaluate.classification import evaluate_classifier
from medpipe.evaluate.segmentation import evaluate_segmentation

__all__ = ["evaluate"]


def evaluate(
    bundle: str | Path,
    *,
    manifest: str | Path | None = None,
    split: str = "test",
    output: str | Path | None = None,
    device: str | None = None,
    weights: str | Path | None = None,
    nsd_tolerance_mm: float = 1.0,
    show_paths: bool = False,
    min_readers: int = 2,
    choose_fp_per_scan: float | None = None,
    classifier: str | Path | None = None,
    backend: str | None = None,
    precision: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score ``bundle`` (its shipped weights, or ``weights``) on ``split`` with its network on ``backend``
    in ``precision`` (:mod:`medpipe.backends`); returns summary.json."""
    model = BundleModel.open(bundle, weights=weights, manifest=manifest, device=device, backend=backend,
                             precision=precision)  # fmt: skip
    if model.kind == CLASSIFICATION:
        return evaluate_classifier(model, split=split, output=output, show_paths=show_paths, echo=echo)
    return evaluate_segmentation(
        model, split=split, output=output, nsd_tolerance_mm=nsd_tolerance_mm, show_paths=show_paths,
        min_readers=min_readers, choose_fp_per_scan=choose_fp_per_scan, classifier=classifier, echo=echo,
    )  # fmt: skip
