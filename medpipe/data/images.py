"""One image in memory, read from what a manifest or a command names: a NIfTI file or a DICOM series.

:class:`Image` is what every prediction starts from (``medpipe infer``, ``medpipe evaluate``,
``medpipe explain``): the voxels ``[i, j, k]`` in their stored units (HU for CT), the LPS affine and
the modality. DICOM series are assembled by :mod:`medpipe.dicom` (the volume ``medpipe convert``
writes); NIfTI files are validated first (:func:`medpipe.data.nifti.validate_nifti`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medpipe.data.nifti import validate_nifti
from medpipe.dicom.geometry import DEFAULT_OPTIONS, AssemblyOptions
from medpipe.dicom.volume import LPS_TO_RAS, Volume, load_dicom, split_series_ref
from medpipe.errors import Code

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: str | Path) -> bool:
    """A file whose name ends in ``.nii`` or ``.nii.gz`` (any case): the one NIfTI-suffix rule."""
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


@dataclass
class Image:
    """One volume: ``array`` [i, j, k] in its stored units, its LPS affine, and its modality."""

    array: np.ndarray
    affine_lps: np.ndarray
    modality: str | None = None
    #: DICOM slices were interpolated (tilt/gaps): a DICOM SEG cannot follow them
    resampled: bool = False
    #: the series' hashed id for DICOM (``medpipe dicom ls``); None for NIfTI
    series_id: str | None = None

    @property
    def affine_ras(self) -> np.ndarray:
        return LPS_TO_RAS @ self.affine_lps

    @property
    def spacing(self) -> list[float]:
        return [float(v) for v in np.linalg.norm(self.affine_lps[:3, :3], axis=0)]


def nifti_image(path: str | Path) -> Image:
    """A validated NIfTI file (no modality: NIfTI does not record one)."""
    image = validate_nifti(path)
    return Image(np.asanyarray(image.dataobj), LPS_TO_RAS @ np.asarray(image.affine, dtype=np.float64))


def dicom_image(volume: Volume) -> Image:
    """A volume assembled by :mod:`medpipe.dicom`."""
    meta = volume.meta
    return Image(volume.array, volume.affine_lps, meta.get("modality"), bool(meta.get("resampled")), volume.stack_id)


def read_image(path: str | Path, options: AssemblyOptions = DEFAULT_OPTIONS) -> Image:
    """A NIfTI file, or a DICOM series (a folder, ``folder#id`` for one series of several, a multi-frame file)."""
    folder, _ = split_series_ref(str(path))
    p = Path(folder).expanduser()
    if not p.exists():
        raise Code.INPUT_NOT_FOUND(f"input {p} does not exist; pass a NIfTI file or a DICOM series folder")
    if p.is_file() and is_nifti(p):
        return nifti_image(p)
    return dicom_image(load_dicom(str(path), options=options))
