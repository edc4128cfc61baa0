"""Checks of labelled cases before any training or scoring: one pass, every offending case listed.

* DATA_GEOMETRY_MISMATCH: image and label do not share a grid (shape, or affine beyond 1e-3 mm).
* DATA_UNEXPECTED_LABELS: a label holds values other than the classes 0..num_classes-1.

Headers are read for the geometry (NIfTI images; other inputs, such as DICOM folders, are checked when
loaded); label voxels are read for the values. Files are opened with :func:`medpipe.data.nifti.open_nifti`,
so a hostile header is a coded NiftiError before anything is allocated.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.data.nifti import open_nifti, read_voxels
from medpipe.errors import Code

MAX_LISTED = 10


def _case(entry: dict[str, Any]) -> str:
    return Path(entry["image"]).name.split(".nii")[0]


def _listing(items: list[str]) -> str:
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return "; ".join(items[:MAX_LISTED]) + more


def check_labelled_cases(entries: Sequence[dict[str, Any]], num_classes: int, *, split: str) -> None:
    """Raise a coded :class:`ManifestError` naming every case whose label is unusable."""
    geometry: list[str] = []
    values: list[str] = []
    for entry in entries:
        if "label" not in entry:
            continue
        if not isinstance(entry["label"], str):  # classification: the label is a class index
            if isinstance(entry["label"], bool) or entry["label"] not in range(num_classes):
                values.append(f"{_case(entry)} (class {entry['label']!r})")
            continue
        label = open_nifti(entry["label"])  # a coded NiftiError, before allocation, for a hostile header
        if str(entry["image"]).endswith((".nii", ".nii.gz")):
            image = open_nifti(entry["image"])
            if image.shape[:3] != label.shape[:3]:
                geometry.append(f"{_case(entry)} (image {image.shape[:3]}, label {label.shape[:3]})")
                continue
            if not np.allclose(image.affine, label.affine, atol=1e-3):
                shift = float(np.abs(image.affine - label.affine).max())
                geometry.append(f"{_case(entry)} (affines differ by up to {shift:.3g} mm)")
                continue
        found = np.unique(read_voxels(label, Path(entry["label"]).name))
        unexpected = [v for v in found.tolist() if v not in range(num_classes)]
        if unexpected:
            values.append(f"{_case(entry)} (values {unexpected[:5]})")
    if geometry:
        raise Code.DATA_GEOMETRY_MISMATCH(
            f"{len(geometry)} case(s) of split '{split}' have image and label on different grids: "
            f"{_listing(geometry)}",
        )
    if values:
        raise Code.DATA_UNEXPECTED_LABELS(
            f"{len(values)} case(s) of split '{split}' have label values outside 0..{num_classes - 1}: "
            f"{_listing(values)}",
        )
