"""Header numbers checked before they are used: rescale, spacing, position, orientation.

A value that is absent takes its DICOM default (slope 1, intercept 0) or is refused as missing
(``DICOM_NO_GEOMETRY``); a value that is *there* but is not a usable number -- ``nan``, ``inf``, a
zero slope, a zero or negative spacing, an orientation that is not two orthogonal unit vectors -- is
refused with its own code, never replaced by a default: a ``RescaleSlope`` of ``nan`` silently read as 1
would give plausible-looking wrong HU. Archive exports and hand-edited headers hold such values.

Rules (PS3.3 C.7.6.2, C.11.1): RescaleSlope finite and non-zero (zero maps every pixel to the intercept);
RescaleIntercept finite; both small enough (|slope| <= 1e18, |intercept| <= 1e37) that any stored value, even
a 64-bit one, rescales to a finite float32 (a slope of 1e35 gave infinite voxels); PixelSpacing two finite positive numbers; ImagePositionPatient three finite
numbers; ImageOrientationPatient six finite numbers forming two unit vectors (within 1 %) that are
orthogonal (|dot| < 0.01, about 0.6 degrees; :mod:`medpipe.dicom.geometry` checks those two). SliceThickness
and SpacingBetweenSlices are only used for a single-slice volume (otherwise the spacing comes from the
positions), so only then are they checked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from medpipe.dicom.headers import SliceHeader
from medpipe.errors import Code


def _first_bad(
    slices: Sequence[SliceHeader], value: Callable[[SliceHeader], object], ok: Callable[[np.ndarray], bool]
) -> tuple[int, SliceHeader, object] | None:
    """(count of bad images, the first one, its value), or None when every present value is fine."""
    bad = []
    for s in slices:
        v = value(s)
        if v is not None and not ok(np.asarray(v, dtype=float)):
            bad.append((s, v))
    return (len(bad), *bad[0]) if bad else None


def _where(count: int, total: int, s: SliceHeader) -> str:
    where = f"instance {s.instance_number}" if s.instance_number is not None else "one image"
    return f"{count} of {total} images ({where}"


def _quote(v: object) -> str:
    return str([float(x) for x in v]) if isinstance(v, tuple) else f"{float(v)!r}"  # type: ignore[arg-type]


def check_values(slices: Sequence[SliceHeader]) -> None:
    """Raise the coded :class:`DicomError` for the first kind of unusable header number found."""
    n = len(slices)
    checks: list[tuple[Code, str, Callable[[SliceHeader], object], Callable[[np.ndarray], bool], str]] = [
        (Code.DICOM_INVALID_RESCALE, "RescaleSlope", lambda s: s.slope,
         lambda v: bool(np.isfinite(v) and v != 0 and abs(v) <= 1e18), "a non-zero number within ±1e18 (absent means 1)"),
        (Code.DICOM_INVALID_RESCALE, "RescaleIntercept", lambda s: s.intercept,
         lambda v: bool(np.isfinite(v) and abs(v) <= 1e37), "a number within ±1e37 (absent means 0)"),
        (Code.DICOM_INVALID_SPACING, "PixelSpacing", lambda s: s.pixel_spacing,
         lambda v: bool(np.isfinite(v).all() and (v > 0).all()), "two finite positive numbers (mm)"),
        (Code.DICOM_INVALID_POSITION, "ImagePositionPatient", lambda s: s.position,
         lambda v: bool(np.isfinite(v).all()), "three finite numbers (mm)"),
        (Code.DICOM_INVALID_ORIENTATION, "ImageOrientationPatient", lambda s: s.orientation,
         lambda v: bool(np.isfinite(v).all()), "six finite direction cosines"),
    ]  # fmt: skip
    if n == 1:  # only a single slice takes its spacing from these
        checks += [
            (Code.DICOM_INVALID_SPACING, keyword, getter, lambda v: bool(np.isfinite(v) and v > 0),
             "a finite positive number (mm)")
            for keyword, getter in (
                ("SpacingBetweenSlices", lambda s: s.spacing_between_slices),
                ("SliceThickness", lambda s: s.slice_thickness),
            )
        ]  # fmt: skip
    for code, keyword, value, ok, wanted in checks:
        found = _first_bad(slices, value, ok)
        if found is not None:
            count, s, v = found
            raise code(
                f"{keyword} {_quote(v)} in {_where(count, n, s)}) must be {wanted}; the header is damaged: "
                "re-export the series from the archive",
            )
