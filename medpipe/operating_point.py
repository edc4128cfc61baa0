"""A lesion bundle's operating point: the score below which a candidate is not reported as a lesion.

A lesion segmenter's **candidates** are the connected components of its mask (26-connectivity, per
label), each scored by its highest foreground probability in 1/255 steps. The operating point,
``operating_point.json`` beside the weights, is chosen on a validation split (``medpipe evaluate
--choose-operating-point``, :mod:`medpipe.evaluate.detection`); without one every candidate is a lesion.

Two paths apply it with one rule (:func:`at_operating_point`: a score at or above the threshold is
kept):

- ``medpipe infer`` and ``medpipe evaluate``, on the lesions measured from the mask and score map of
  :meth:`medpipe.bundle.model.BundleModel.segment_with_scores` (with the weights they were given);
- :class:`KeepLesionsd`, the step of the bundle's inference post-processing right after ``Invertd``,
  so that ``python -m monai.bundle run`` writes the same lesions into its mask.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform
from scipy import ndimage

from medpipe.atomic import atomic_write_text

OPERATING_POINT_FILE = "operating_point.json"
#: 26-connectivity: the components of the lesion table (medpipe.infer.lesions)
STRUCTURE = np.ones((3, 3, 3), dtype=bool)


def _folder(weights: str | Path) -> Path:
    path = Path(weights)
    return path if path.is_dir() else path.parent


def read_operating_point(weights: str | Path) -> float:
    """The score threshold stored beside ``weights`` (a model.pt or its folder; 0: every candidate is a lesion)."""
    path = _folder(weights) / OPERATING_POINT_FILE
    if not path.is_file():
        return 0.0
    return float(json.loads(path.read_text(encoding="utf-8"))["score_threshold"])


def write_operating_point(weights: str | Path, threshold: float, **record: Any) -> Path:
    path = Path(weights).parent / OPERATING_POINT_FILE
    atomic_write_text(path, json.dumps({"score_threshold": round(threshold, 6), **record}, indent=1) + "\n")
    return path


def at_operating_point(lesions: Sequence[Any], threshold: float) -> tuple[list[Any], list[Any]]:
    """(reported, candidates): lesions scoring ``threshold`` or more, and the others (NaN scores are reported)."""
    reported = [les for les in lesions if not les.score < threshold]
    return reported, [les for les in lesions if les.score < threshold]


def lesion_scores(probs: torch.Tensor) -> np.ndarray:
    """Each voxel's highest foreground probability of class probabilities (C, ...), in 1/255 steps
    (uint8): the one rule for the scores ``medpipe infer`` measures and ``KeepLesionsd`` applies."""
    return np.rint(255 * probs[1:].amax(dim=0).clamp(0, 1).cpu().numpy()).astype(np.uint8)


def labels_present(mask: np.ndarray) -> list[int]:
    """The nonzero label values of ``mask``, ascending. For 8-bit masks one pass per value up to the
    maximum (a binary mask: one ``max``, 0.01 s on 36 M voxels, where ``np.unique`` sorts them in 0.4 s
    and ``np.bincount`` first widens them to 64-bit integers)."""
    mask = np.asarray(mask)
    if mask.dtype not in (np.uint8, np.bool_):
        return [int(v) for v in np.unique(mask) if v != 0]
    if mask.size == 0:
        return []
    top = int(mask.max())
    return [v for v in range(1, top + 1) if v == top or bool((mask == v).any())]


def below_operating_point(mask: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean map of the components of ``mask`` (each label's, 26-connected) whose highest score
    (uint8 ``scores``, 1/255 steps) is below ``threshold``."""
    drop = np.zeros(mask.shape, dtype=bool)
    if threshold <= 0:
        return drop
    for value in labels_present(mask):
        labels, _ = ndimage.label(mask == value, structure=STRUCTURE)
        for idx, box in enumerate(ndimage.find_objects(labels), start=1):
            if box is None:
                continue
            comp = labels[box] == idx
            if float(scores[box][comp].max()) / 255.0 < threshold:
                drop[box] |= comp
    return drop


class KeepLesionsd(MapTransform):
    """On class probabilities on the input grid (after ``Invertd``): make background every component
    of the argmax whose score is below the operating point stored in ``weights_dir`` (the bundle's
    ``ckpt_dir``), so the discrete mask after it holds exactly the lesions ``medpipe infer`` reports.
    The score is :func:`lesion_scores`, as :func:`medpipe.bundle.inversion.invert_in_slabs` records it."""

    def __init__(self, keys: Any, weights_dir: str | Path, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.weights_dir = Path(weights_dir)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        threshold = read_operating_point(self.weights_dir)
        for key in self.key_iterator(d):
            probs = d[key]
            if threshold <= 0 or probs.shape[0] < 2:
                continue
            p = torch.as_tensor(probs).detach().float()
            mask = p.argmax(dim=0).cpu().numpy().astype(np.uint8)
            drop = torch.as_tensor(below_operating_point(mask, lesion_scores(p), threshold))
            if bool(drop.any()):
                out = probs.clone()
                out[0][drop] = 1.0
                out[1:][:, drop] = 0.0
                d[key] = out
        return d
