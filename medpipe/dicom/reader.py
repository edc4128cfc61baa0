"""medpipe's DICOM series loader as a MONAI ``ImageReader``.

Use it wherever MONAI takes a reader; in a bundle config::

    {"_target_": "LoadImaged", "keys": "image",
     "reader": {"_target_": "medpipe.dicom.reader.DicomSeriesReader", "correct_tilt": true}}

The file name given to ``LoadImage`` is a series folder, a multi-frame DICOM file, or
``folder#<series id>`` to pick one series (ids as printed by ``medpipe dicom ls``). Unlike MONAI's own
readers it never merges two series of one folder, never guesses spacing across a gap, and refuses
bad geometry with a coded :class:`~medpipe.errors.DicomError`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from monai.data.image_reader import ImageReader
from monai.utils import ensure_tuple

from medpipe.dicom.geometry import AssemblyOptions
from medpipe.dicom.headers import DICOM_SUFFIXES
from medpipe.dicom.volume import Volume, load_dicom, split_series_ref
from medpipe.errors import MedpipeError


@dataclass(frozen=True)
class _Refused:
    error: MedpipeError


def _looks_like_dicom(path: str) -> bool:
    root, _ = split_series_ref(path)
    if os.path.isdir(root):
        return True
    if os.path.splitext(root)[1].lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(root, "rb") as fp:
            fp.seek(128)
            return fp.read(4) == b"DICM"
    except OSError:
        return False


class DicomSeriesReader(ImageReader):
    """Load one DICOM series (folder, ``folder#id`` or multi-frame file) as a [x, y, z] array + RAS affine.

    Args:
        series: id of the series to load when a folder holds several (else the folder must hold one).
        resample_gaps: interpolate across missing slices / uneven spacing instead of refusing.
        correct_tilt: resample a gantry-tilted series onto a rectilinear grid instead of refusing.
        min_slices: refuse stacks with fewer slices (DICOM_TOO_FEW_SLICES).
        affine_lps_to_ras: report the affine in RAS (MONAI's convention, default) or DICOM's LPS.
    """

    def __init__(
        self,
        series: str | None = None,
        *,
        resample_gaps: bool = False,
        correct_tilt: bool = False,
        min_slices: int = 3,
        affine_lps_to_ras: bool = True,
    ) -> None:
        super().__init__()
        self.series = series
        self.options = AssemblyOptions(
            min_slices=min_slices, resample_gaps=resample_gaps, correct_tilt=correct_tilt
        )
        self.affine_lps_to_ras = affine_lps_to_ras

    def verify_suffix(self, filename: Sequence[os.PathLike[str] | str] | os.PathLike[str] | str) -> bool:
        return all(_looks_like_dicom(os.fspath(f)) for f in ensure_tuple(filename))

    def read(self, data: Sequence[os.PathLike[str] | str] | os.PathLike[str] | str, **kwargs: Any) -> Any:
        if not self.verify_suffix(data):
            # Not DICOM (a NIfTI in the same list, say): a plain error lets LoadImage try its next reader.
            raise ValueError(f"{self.__class__.__name__} reads DICOM folders and files, not {data}")
        try:
            volumes = [load_dicom(os.fspath(f), self.series, self.options) for f in ensure_tuple(data)]
        except MedpipeError as e:
            # LoadImage falls back to its other readers when read() raises, and ITK or pydicom would then
            # load the very series we refused (merged, gap-blind). Defer the refusal to get_data(), which
            # LoadImage calls without fallback, so the coded error reaches the caller.
            return _Refused(e)
        return volumes[0] if len(volumes) == 1 else volumes

    def get_data(self, img: Volume | Sequence[Volume] | _Refused) -> tuple[np.ndarray, dict[str, Any]]:
        if isinstance(img, _Refused):
            raise img.error
        volumes = list(ensure_tuple(img))
        arrays, meta = [], {}
        for vol in volumes:
            vol_meta = vol.monai_meta(ras=self.affine_lps_to_ras)
            if meta and not np.allclose(vol_meta["affine"], meta["affine"], atol=1e-4):
                raise ValueError("series stacked as channels must share one affine")
            meta = meta or vol_meta
            arrays.append(vol.array)
        if len(arrays) == 1:
            return arrays[0], meta
        meta["original_channel_dim"] = 0
        return np.stack(arrays, axis=0), meta
