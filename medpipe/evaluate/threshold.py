"""The decision threshold of a binary classifier: one policy, one ``threshold.json`` schema.

A binary classifier bundle decides ``P(class 1) >= threshold``. The threshold is chosen on the
validation split when training ends -- never on the test split -- by :func:`choose_threshold` with a
``criterion``:

* ``"accuracy"``: the highest validation accuracy (the middle of the best range of thresholds);
* ``"youden"``: Youden's J, sensitivity + specificity - 1 (scikit-learn's ROC thresholds);
* ``"sensitivity:0.9"``: the highest threshold whose validation sensitivity is at least 0.9 (so the
  best specificity at that sensitivity), for screening.

:class:`ValidationThreshold` is the trainer handler bundle configs attach: when training completes it
loads the best checkpoint, predicts the validation split with the bundle's inference ``inferer`` (the
one that will be used, e.g. with test-time augmentation) and writes ``threshold.json`` next to the
checkpoint. Its schema (:class:`ThresholdRecord`, read by :func:`read_threshold`)::

    {"threshold": 0.3958, "positive_class": 1, "criterion": "accuracy", "description": "...",
     "inferer": "CubeSymmetryInferer(n=8)", "epoch": 80, "validation": {<classification figures>}}
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ignite.engine import Events
from sklearn.metrics import roc_curve
from tqdm import tqdm

from medpipe.atomic import atomic_write_text
from medpipe.bundle.model import predict_probabilities
from medpipe.bundle.weights import load_weights
from medpipe.distributed import unwrap
from medpipe.errors import Code, look_up
from medpipe.evaluate.metrics import classification_figures

THRESHOLD_FILE = "threshold.json"
CRITERIA = {
    "accuracy": "highest accuracy on the validation split (middle of the best range)",
    "youden": "Youden's J (sensitivity + specificity - 1) on the validation split",
    "sensitivity": "highest threshold with validation sensitivity >= {target}",
}


def parse_criterion(criterion: str) -> tuple[str, float | None]:
    """``"accuracy"`` -> ("accuracy", None); ``"sensitivity:0.9"`` -> ("sensitivity", 0.9)."""
    name, _, target = str(criterion).partition(":")
    look_up(name, CRITERIA, what="threshold criterion", code=Code.CONFIG_INVALID)
    if name != "sensitivity":
        if target:
            raise Code.CONFIG_INVALID(f"threshold criterion {criterion!r}: only 'sensitivity' takes a target")
        return name, None
    try:
        value = float(target)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:
        raise Code.CONFIG_INVALID(
            f"threshold criterion {criterion!r}: write the target sensitivity in (0, 1], e.g. 'sensitivity:0.9'"
        )
    return name, value


def describe(criterion: str) -> str:
    name, target = parse_criterion(criterion)
    return CRITERIA[name].format(target=target)


def choose_threshold(prob: np.ndarray, label: np.ndarray, criterion: str = "accuracy") -> float:
    """Threshold on P(class 1) ``prob`` (N,) for labels ``label`` (N,) by ``criterion`` (module docstring).

    With one class only, no threshold can be chosen from the data: 0.5.
    """
    name, target = parse_criterion(criterion)
    prob, label = np.asarray(prob, dtype=np.float64), np.asarray(label).astype(int)
    if name == "accuracy":
        values = np.unique(prob)
        candidates = (
            np.concatenate([[0.0], (values[:-1] + values[1:]) / 2, [1.0]]) if values.size else np.array([0.5])
        )
        acc = np.array([((prob >= t).astype(int) == label).mean() for t in candidates])
        best = np.flatnonzero(acc == acc.max())
        return float(candidates[best[len(best) // 2]])
    if len(np.unique(label)) < 2:
        return 0.5
    # every distinct score is a candidate for a target sensitivity (scikit-learn drops collinear points)
    fpr, tpr, thr = roc_curve(label, prob, drop_intermediate=name == "youden")
    thr = np.clip(thr, 0.0, 1.0)
    if name == "youden":
        return float(thr[int(np.argmax(tpr - fpr))])
    return float(thr[int(np.flatnonzero(tpr >= target - 1e-12)[0])])


@dataclass
class ThresholdRecord:
    """What ``threshold.json`` holds (the module docstring shows an example)."""

    threshold: float
    positive_class: int = 1
    criterion: str = "accuracy"
    description: str = ""
    inferer: str = ""
    epoch: int | None = None
    validation: dict[str, Any] = field(default_factory=dict)

    def write(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(asdict(self), indent=1) + "\n")


def read_threshold(path: str | Path) -> ThresholdRecord | None:
    """The record in ``path`` (a ``threshold.json``), or None when there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
        threshold = float(content["threshold"])
    except (ValueError, KeyError, TypeError) as e:
        raise Code.BUNDLE_INVALID(f"{path} is not a threshold record ({type(e).__name__}: {e})") from None
    if not 0.0 <= threshold <= 1.0:
        raise Code.BUNDLE_INVALID(f"{path}: threshold {threshold} is not a probability")
    known = {k: content[k] for k in ThresholdRecord.__dataclass_fields__ if k in content}
    return ThresholdRecord(**{**known, "threshold": threshold})


def threshold_beside(weights: str | Path) -> ThresholdRecord | None:
    """The threshold stored next to a checkpoint (``models/threshold.json`` next to ``models/model.pt``)."""
    return read_threshold(Path(weights).parent / THRESHOLD_FILE)


def inferer_name(inferer: Any) -> str:
    return type(inferer).__name__ + (f"(n={inferer.n})" if hasattr(inferer, "n") else "")


class ValidationThreshold:
    """Trainer handler: at the end of training, choose the threshold on the validation split and store it.

    Loads the best checkpoint (``checkpoint``, default ``<output_dir>/model.pt``), predicts
    ``datalist`` with ``preprocessing`` and ``inferer`` (the bundle's inference inferer) and writes
    :class:`ThresholdRecord` to ``<output_dir>/threshold.json``; ``validator`` (the validation
    evaluator) gives the epoch of the best checkpoint. Multi-class networks get none (argmax).
    """

    def __init__(
        self,
        network: Any,
        datalist: Sequence[Mapping[str, Any]],
        preprocessing: Callable[[dict[str, Any]], dict[str, Any]],
        inferer: Any,
        output_dir: str | Path,
        checkpoint: str | Path | None = None,
        device: Any = "cpu",
        criterion: str = "accuracy",
        validator: Any = None,
    ) -> None:
        # a multi-process run gives the DDP wrapper; it runs on rank 0 only, so not through DDP's forward
        self.network, self.datalist, self.preprocessing = unwrap(network), datalist, preprocessing
        self.inferer, self.device = inferer, device
        self.output_dir = Path(output_dir)
        self.checkpoint = Path(checkpoint) if checkpoint else self.output_dir / "model.pt"
        describe(criterion)  # a bad criterion fails when the config is built, not after training
        self.criterion = criterion
        self.validator = validator

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Any = None) -> ThresholdRecord | None:
        if self.checkpoint.is_file():
            load_weights(self.network, self.checkpoint)
        label = np.array([int(e["label"]) for e in self.datalist])
        prob = predict_probabilities(
            self.datalist, self.preprocessing, self.network, self.inferer, self.device
        )
        if prob.shape[1] != 2:
            return None
        thr = choose_threshold(prob[:, 1], label, self.criterion)
        record = ThresholdRecord(
            threshold=round(thr, 6),
            criterion=self.criterion,
            description=describe(self.criterion),
            inferer=inferer_name(self.inferer),
            epoch=_best_epoch(self.validator),
            validation=classification_figures(prob, label, thr),
        )
        record.write(self.output_dir / THRESHOLD_FILE)
        v = record.validation
        tqdm.write(
            f"threshold {thr:.3f} ({self.criterion}) chosen on validation: AUC {v['auc']:.4f}, accuracy "
            f"{v['accuracy']:.4f} -> {self.output_dir / THRESHOLD_FILE}"
        )
        return record


def _best_epoch(validator: Any) -> int | None:
    """The epoch of the best checkpoint, when the validation evaluator is known."""
    state = getattr(validator, "state", None)
    best = getattr(state, "best_metric_epoch", None)
    return int(best) if isinstance(best, int) and best > 0 else None
