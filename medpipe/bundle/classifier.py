"""What classifier bundles need beyond MONAI: input-size check, class weights, a validation threshold.

* :func:`check_crop_size` -- a crop-classifier bundle declares ``crop_size`` (voxels) in common.json;
  a size the network cannot take (zero, too small for its downsampling) is refused up front as
  ``BUNDLE_CROP_SIZE_INVALID`` by ``medpipe check`` and ``medpipe train`` instead of failing mid-epoch.
* :func:`class_weights` -- inverse-frequency weights of the training split for ``CrossEntropyLoss``,
  so an imbalanced dataset (NoduleMNIST3D: 1 malignant in 4) trains unchanged.
* :class:`ValidationThreshold` -- attached to the validation evaluator: after each validation it picks
  the decision threshold on P(class 1) that maximises Youden's J (sensitivity + specificity - 1) and,
  when the key metric is the best so far, writes it with the validation figures to
  ``<ckpt_dir>/threshold.json`` (atomically) next to ``model.pt``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medpipe.atomic import atomic_write_text
from medpipe.errors import Code


def check_crop_size(network: torch.nn.Module, crop_size: Any, num_outputs: int | None = None) -> None:
    """Run one zero crop of ``crop_size`` through ``network``; raise ``BUNDLE_CROP_SIZE_INVALID`` if it fails."""
    try:
        size = [int(v) for v in crop_size]
        if len(size) != 3 or any(v < 1 for v in size) or any(float(v) != int(v) for v in crop_size):
            raise ValueError
    except (TypeError, ValueError):
        raise Code.BUNDLE_CROP_SIZE_INVALID(
            f"crop_size={crop_size!r} must be 3 positive integers (voxels), e.g. [32, 32, 32]",
        ) from None
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            param = next(network.parameters(), None)
            x = torch.zeros(1, 1, *size, device=param.device if param is not None else "cpu")
            out = network(x)
    except (RuntimeError, ValueError) as e:
        raise Code.BUNDLE_CROP_SIZE_INVALID(
            f"crop_size={size} cannot pass through the network ({type(network).__name__}): "
            f"{str(e).splitlines()[0]}; use a larger crop_size (or a network with less downsampling)",
        ) from None
    finally:
        network.train(was_training)
    if num_outputs is not None and tuple(out.shape) != (1, num_outputs):
        raise Code.BUNDLE_CROP_SIZE_INVALID(
            f"the network maps a crop of {size} to shape {tuple(out.shape)}, expected (1, {num_outputs}): one "
            "score per class",
        )


def class_weights(datalist: Sequence[dict[str, Any]], num_classes: int, device: Any = "cpu") -> torch.Tensor:
    """``n / (num_classes * count_c)`` per class from the ``label`` of each entry (1 for an absent class)."""
    counts = np.bincount([int(e["label"]) for e in datalist], minlength=num_classes)[:num_classes]
    weights = np.where(counts > 0, len(datalist) / (num_classes * np.maximum(counts, 1)), 1.0)
    return torch.tensor(weights, dtype=torch.float32, device=device)


def youden_threshold(prob: np.ndarray, label: np.ndarray) -> float:
    """Threshold on ``prob`` maximising sensitivity + specificity - 1 (0.5 when a class is absent)."""
    from sklearn.metrics import roc_curve

    if len(np.unique(label)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(label, prob)
    thr = np.clip(thr, 0.0, 1.0)
    return float(thr[int(np.argmax(tpr - fpr))])


def binary_figures(prob: np.ndarray, label: np.ndarray, threshold: float) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

    pred = (prob >= threshold).astype(int)
    return {
        "auc": float(roc_auc_score(label, prob)) if len(np.unique(label)) == 2 else float("nan"),
        "accuracy": float(accuracy_score(label, pred)),
        "f1": float(f1_score(label, pred, zero_division=0)),
        "precision": float(precision_score(label, pred, zero_division=0)),
        "recall": float(recall_score(label, pred, zero_division=0)),
    }


class ValidationThreshold:
    """Ignite handler for a classification evaluator (postprocessed ``pred`` = class probabilities)."""

    def __init__(
        self, output_dir: str | Path, filename: str = "threshold.json", positive_class: int = 1
    ) -> None:
        self.path = Path(output_dir) / filename
        self.positive = positive_class
        self._prob: list[float] = []
        self._label: list[int] = []

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._completed)

    def _reset(self, engine: Any) -> None:
        self._prob, self._label = [], []

    def _collect(self, engine: Any) -> None:
        for item in engine.state.output:
            pred, label = item["pred"], item["label"]
            self._prob.append(float(torch.as_tensor(pred).flatten()[self.positive]))
            lab = torch.as_tensor(label).flatten()
            self._label.append(int(lab.argmax()) if lab.numel() > 1 else int(lab.item()))

    def _completed(self, engine: Any) -> None:
        prob, label = np.array(self._prob), np.array(self._label)
        thr = youden_threshold(prob, label)
        figures = binary_figures(prob, label, thr)
        engine.state.metrics["val_threshold"] = thr
        engine.state.metrics["val_accuracy"] = figures["accuracy"]
        if getattr(engine.state, "best_metric_epoch", None) == engine.state.epoch:
            record = {
                "threshold": round(thr, 6),
                "positive_class": self.positive,
                "criterion": "Youden's J on the validation split",
                "epoch": int(engine.state.epoch),
                "validation": {k: round(v, 6) for k, v in figures.items()},
                "n_validation": len(label),
            }
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(record, indent=1))
