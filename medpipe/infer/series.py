"""One series through ``medpipe infer``: load, segment with the bundle, write every output of the series.

Into ``OUT/<id>/``, each file under a temporary name renamed into place:

- ``<id>_seg.nii.gz``: the label mask, on exactly the grid ``medpipe convert`` writes for the series;
- ``<id>_seg.dcm``: a DICOM Segmentation referencing the source instances (DICOM inputs only);
- ``<id>_lesions.csv``: the lesions, connected components scoring at least the operating point of the
  weights (``operating_point.json`` beside them; every component without one), with score, volume,
  diameter, centroid, mean intensity (+ ``--classifier`` probability); the mask and the SEG hold exactly
  these lesions;
- ``<id>_candidates.csv``: the components scoring below the operating point (not in the mask);
- ``<id>_preview.png``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.bundle.model import BundleModel
from medpipe.data.nifti import write_nifti
from medpipe.infer.classifier import CropClassifier
from medpipe.infer.lesions import mask_of, measure_lesions
from medpipe.infer.preview import write_preview
from medpipe.infer.records import LESION_FIELDS
from medpipe.infer.seg import write_seg
from medpipe.infer.sources import Source
from medpipe.operating_point import at_operating_point, read_operating_point
from medpipe.tables import write_csv

#: The display window of the preview when the bundle does not say (``hu_window``): a lung window.
DEFAULT_WINDOW = (-1000.0, 400.0)


def process_series(
    source: Source, model: BundleModel, clf: CropClassifier | None, formats: Sequence[str], folder: Path,
    pseudonym_key: bytes | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Outputs of one series in ``folder``; returns its results.csv row and its lesion rows. With a
    ``pseudonym_key`` the SEG names the patient by a pseudonym (:func:`medpipe.infer.seg.anonymize`)."""
    image = source.load()
    mask, scores = model.segment_with_scores(image, name=f"series {source.id}")
    names = model.class_names
    # every component is a candidate with a score; the lesions are those at the operating point, and
    # the mask, the SEG and the lesion table hold exactly them
    found, dropped = at_operating_point(
        measure_lesions(mask, image.affine_lps, image.array, names, scores), read_operating_point(model.weights.path)
    )
    if dropped:
        mask = mask_of(found, mask.shape)
    notes: list[str] = []
    sid = source.id
    result: dict[str, Any] = {
        "series": sid,
        "kind": source.kind,
        "modality": source.modality,
        "status": "ok",
        "shape": list(image.array.shape),
        "spacing_mm": image.spacing,
    }
    if "nifti" in formats:
        write_nifti(folder / f"{sid}_seg.nii.gz", mask, image.affine_ras, dtype=np.uint8)
        result["mask"] = f"{sid}_seg.nii.gz"
    if "dicom-seg" in formats:
        if source.kind != "dicom":
            notes.append("no DICOM SEG for a NIfTI input")
        elif image.resampled:
            notes.append(
                "no DICOM SEG: the series was resampled (tilt/gaps), so the mask does not follow its slices"
            )
        else:
            write_seg(
                folder / f"{sid}_seg.dcm", mask, source.stack,  # type: ignore[arg-type]
                names, bundle_name=model.name, bundle_version=model.version, pseudonym_key=pseudonym_key,
            )  # fmt: skip
            result["seg"] = f"{sid}_seg.dcm"
    unit = "HU" if source.modality == "CT" else ""
    pad = -1024.0 if source.modality == "CT" else float(np.min(image.array))
    rows = []
    for lesion in found:
        row: dict[str, Any] = {"series": sid, **lesion.row(), "intensity_unit": unit}
        if clf is not None:
            row["classifier_probability"] = clf.lesion_probability(image, lesion, pad)
        rows.append(row)
    result["lesions"] = len(rows)
    result["lesion_volume_mm3"] = float(sum(r["volume_mm3"] for r in rows))
    result["lesion_table"] = f"{sid}_lesions.csv"
    write_csv(folder / result["lesion_table"], rows, LESION_FIELDS)
    result["candidates"] = len(dropped)
    result["candidate_table"] = f"{sid}_candidates.csv"
    candidates = [{"series": sid, **c.row(), "intensity_unit": unit} for c in dropped]
    write_csv(folder / result["candidate_table"], candidates, LESION_FIELDS)
    window = model.get("hu_window", DEFAULT_WINDOW)
    write_preview(
        folder / f"{sid}_preview.png", image.array, mask, found,
        title=f"series {sid}: {len(found)} lesion(s), {model.layout.root.name} {model.version}",
        modality=source.modality, window=(float(window[0]), float(window[1])),
    )  # fmt: skip
    result["preview"] = f"{sid}_preview.png"
    if clf is not None:
        notes.append(f"classifier_probability = P({clf.positive}) from {clf.model.name} {clf.model.version}")
    result["note"] = "; ".join(notes)
    return result, rows + [{**c, "candidate": True} for c in candidates]
