"""Each reader-marked nodule next to what the lesion bundle found there: ``lesions_vs_readers.csv``.

Written by ``medpipe evaluate`` for a lesion bundle on a manifest with reader records (``medpipe
manifest lidc``). One row per target nodule (those of ``--min-readers`` readers or more):

- the readers' side: how many marked it, the median of their malignancy ratings, the consensus volume
  and its longest diameter (measured on the consensus mask as a lesion's is, by
  :func:`medpipe.infer.lesions.measure_lesions`);
- the model's side, at the operating point: whether it was found, the overlapping lesion with the
  highest score (score, volume, longest diameter), the Dice of all overlapping lesions with the
  consensus, and with ``--classifier BUNDLE`` the classifier's probability for that lesion, computed
  exactly as ``medpipe infer --classifier`` computes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medpipe.data.images import Image
from medpipe.evaluate.detection import Target, target_map
from medpipe.infer.classifier import CropClassifier
from medpipe.infer.lesions import Lesion, measure_lesions

READER_FIELDS = (
    "case", "nodule", "n_readers", "readers_malignancy_median", "consensus_volume_mm3", "consensus_diameter_mm",
    "found", "lesion", "score", "volume_mm3", "diameter_mm", "dice", "classifier_probability",
)  # fmt: skip


def reader_rows(
    case: str,
    targets: Sequence[Target],
    lesions: Sequence[Lesion],
    truth: np.ndarray,
    image: Image,
    record: Mapping[str, Any] | None,
    threshold: float,
    classifier: CropClassifier | None = None,
    pad: float = -1024.0,
) -> list[dict[str, Any]]:
    """Rows of ``lesions_vs_readers.csv`` for one case (``lesions``: those at the operating point)."""
    nodules = {int(n["nodule"]): n for n in (record or {}).get("nodules", [])}
    truth = target_map(truth, record)
    rows = []
    for target in targets:
        reader = nodules.get(target.nodule, {})
        consensus = measure_lesions((truth == target.nodule).astype(np.uint8), image.affine_lps)
        row: dict[str, Any] = {
            "case": case,
            "nodule": target.nodule,
            "n_readers": target.n_readers,
            "readers_malignancy_median": reader.get("malignancy_median"),
            "consensus_volume_mm3": round(sum(c.volume_mm3 for c in consensus), 2),
            "consensus_diameter_mm": round(max((c.diameter_mm for c in consensus), default=0.0), 2),
        }
        overlapping = [les for les in lesions if _overlaps(les, truth, target.nodule)]
        best = max(overlapping, key=lambda les: les.score, default=None)
        row["found"] = best is not None
        if best is not None:
            row.update(lesion=best.lesion, score=round(best.score, 4), volume_mm3=round(best.volume_mm3, 2),
                       diameter_mm=round(best.diameter_mm, 2), dice=target.dice_at(threshold))  # fmt: skip
            if classifier is not None:
                row["classifier_probability"] = round(classifier.lesion_probability(image, best, pad), 4)
        rows.append(row)
    return rows


def _overlaps(lesion: Lesion, truth: np.ndarray, nodule: int) -> bool:
    box, comp = lesion.region  # type: ignore[misc]
    return bool((np.asarray(truth)[box][comp] == nodule).any())
