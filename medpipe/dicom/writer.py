"""Write a 3-D HU volume as a DICOM CT Image Storage series, one file per slice.

Used to ship the synthetic phantoms as real DICOM (so the DICOM path of the pipeline is exercised end to
end) and for tests that need a series with controlled UIDs. The output is deterministic: UIDs derive from
``series_seed``/``study_seed`` and a digest of the pixel data and geometry, and all dates and times are a
fixed synthetic timestamp, so the same inputs give byte-identical files.

Conventions: ``image_hu[i, j, k]`` with ``i`` the column (+x, patient left), ``j`` the row (+y,
posterior), ``k`` the slice (+z, head), axial slices with ImageOrientationPatient ``[1, 0, 0, 0, 1, 0]``;
``origin_lps`` is the centre of voxel ``(0, 0, 0)``. Pixels are stored as ``HU + 1024``
(RescaleIntercept -1024, RescaleSlope 1): unsigned (HU -1024 to 32767) when no voxel is below -1024 HU,
else signed (HU -31744 to 31743), as scanners do that pad outside the reconstruction circle with
-2048 HU; ``padding_hu`` then names that value (PixelPaddingValue).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from medpipe.errors import Code, DicomError

__all__ = ["CT_IMAGE_STORAGE", "write_ct_series"]

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
#: Identifies files written by medpipe (derived deterministically from the pydicom root).
IMPLEMENTATION_CLASS_UID = generate_uid(entropy_srcs=["medpipe/implementation-class"])
SYNTHETIC_DATE, SYNTHETIC_TIME = "20260101", "120000"
HU_RANGE = (-1024, 32767)
#: HU a signed 16-bit stored value + RescaleIntercept -1024 can hold
SIGNED_HU_RANGE = (-31744, 31743)
_INTERCEPT = -1024


def _invalid(message: str) -> DicomError:
    return Code.DICOM_WRITE_INVALID_INPUT(message)


def _ds(value: float) -> str:
    """Decimal String of at most 16 characters, without float noise (``0.8``, not ``0.800000001``)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    text = "0" if text in ("-0", "") else text
    return text if len(text) <= 16 else format_number_as_ds(float(value))


def _triple(value: Sequence[float], name: str, positive: bool) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise _invalid(f"{name}={value!r} must be 3 numbers") from None
    if len(out) != 3 or not all(math.isfinite(v) and (v > 0 or not positive) for v in out):
        raise _invalid(f"{name}={value!r} must be 3 finite numbers{' > 0' if positive else ''} (mm)")
    return out  # type: ignore[return-value]


def _stored_pixels(image_hu: np.ndarray) -> np.ndarray:
    """Validate the volume and return it as stored values ``HU + 1024``: uint16 when no voxel is below
    -1024 HU, else int16 (signed pixel representation)."""
    image = np.asarray(image_hu)
    if image.ndim != 3 or 0 in image.shape:
        raise _invalid(f"image_hu must be a non-empty 3-D array [i, j, k], got shape {image.shape}")
    if max(image.shape[:2]) > 65535:
        raise _invalid(f"image_hu shape {image.shape}: rows and columns must be at most 65535")
    if image.dtype.kind not in "iuf":
        raise _invalid(f"image_hu has dtype {image.dtype}; pass integer HU (e.g. int16)")
    if image.dtype.kind == "f":
        if not np.isfinite(image).all() or not np.array_equal(image, np.round(image)):
            raise _invalid("image_hu holds non-integer or non-finite values; round to integer HU first")
    lo, hi = image.min(), image.max()
    signed = lo < HU_RANGE[0]
    allowed = SIGNED_HU_RANGE if signed else HU_RANGE
    if lo < allowed[0] or hi > allowed[1]:
        raise _invalid(
            f"image_hu values span [{lo}, {hi}] HU; only {list(HU_RANGE)} (unsigned 16-bit) or "
            f"{list(SIGNED_HU_RANGE)} (signed) can be stored with RescaleIntercept -1024; clip the volume first"
        )
    return (image.astype(np.int32) - _INTERCEPT).astype(np.int16 if signed else np.uint16)


def _uid(*parts: str) -> UID:
    """Deterministic UID under the pydicom root from length-prefixed parts (no ambiguous joins)."""
    return generate_uid(entropy_srcs=["medpipe/" + "/".join(f"{len(p)}:{p}" for p in parts)])


def _encoding(*texts: str) -> str | None:
    return None if all(t.isascii() for t in texts) else "ISO_IR 192"


def write_ct_series(
    image_hu: np.ndarray,
    out_dir: str | Path,
    *,
    spacing: Sequence[float],
    origin_lps: Sequence[float],
    series_seed: str,
    study_seed: str | None = None,
    patient_id: str = "PHANTOM",
    patient_name: str = "Phantom^Synthetic",
    series_description: str = "Synthetic chest CT phantom (medpipe)",
    series_number: int = 1,
    manufacturer: str = "medpipe (synthetic phantom)",
    padding_hu: int | None = None,
) -> list[Path]:
    """Write ``image_hu`` as ``IM000001.dcm``... (one CT Image Storage file per slice, slice order).

    ``spacing`` is ``(sx, sy, sz)`` mm; PixelSpacing is written as ``[sy, sx]`` (row, column spacing).
    Study UID derives from ``study_seed`` (default ``series_seed``): series written with the same
    ``study_seed`` share a study. Series, instance and frame-of-reference UIDs derive from ``series_seed``
    and a digest of the pixels and geometry, so different content never shares UIDs. Returns the paths.

    Raises :class:`~medpipe.errors.DicomError` with code ``DICOM_WRITE_INVALID_INPUT`` for a volume that
    is not 3-D, holds non-integer HU or values outside [-31744, 32767] (or both below -1024 and above
    31743), for a ``padding_hu`` the storage cannot hold, for bad geometry or an empty seed,
    and ``DICOM_WRITE_FAILED`` when a file cannot be written.
    """
    stored = _stored_pixels(image_hu)
    signed = stored.dtype == np.int16
    if padding_hu is not None:
        low, high = SIGNED_HU_RANGE if signed else HU_RANGE
        if isinstance(padding_hu, bool) or not isinstance(padding_hu, (int, np.integer)) or not low <= padding_hu <= high:
            raise _invalid(f"padding_hu={padding_hu!r} must be an integer HU from {low} to {high} for this volume")
    sx, sy, sz = _triple(spacing, "spacing", positive=True)
    origin = _triple(origin_lps, "origin_lps", positive=False)
    if not isinstance(series_seed, str) or not series_seed:
        raise _invalid(f"series_seed={series_seed!r} must be a non-empty string")
    if study_seed is not None and (not isinstance(study_seed, str) or not study_seed):
        raise _invalid(f"study_seed={study_seed!r} must be None or a non-empty string")
    study_seed = series_seed if study_seed is None else study_seed

    digest = hashlib.sha256(stored.tobytes())
    digest.update(repr((stored.shape, (sx, sy, sz), origin)).encode())
    content = digest.hexdigest()
    study_uid = _uid("study", study_seed)
    series_uid = _uid("series", series_seed, content)
    frame_uid = _uid("frame-of-reference", series_seed, content)
    charset = _encoding(patient_id, patient_name, series_description, manufacturer)
    n_cols, n_rows, n_slices = stored.shape

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Code.DICOM_WRITE_FAILED(f"cannot create {out}: {exc}") from exc
    paths = []
    for k in range(n_slices):
        sop_uid = _uid("instance", series_seed, content, str(k))
        z = origin[2] + k * sz
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
        meta.ImplementationVersionName = "MEDPIPE"

        ds = Dataset()
        ds.file_meta = meta
        # SOP Common
        if charset:
            ds.SpecificCharacterSet = charset
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.InstanceCreationDate, ds.InstanceCreationTime = SYNTHETIC_DATE, SYNTHETIC_TIME
        # Patient
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.PatientIdentityRemoved = "YES"  # synthetic: there never was a patient
        ds.DeidentificationMethod = "Synthetic phantom; no patient data"
        # General Study
        ds.StudyInstanceUID = study_uid
        ds.StudyDate, ds.StudyTime = SYNTHETIC_DATE, SYNTHETIC_TIME
        ds.ReferringPhysicianName = ""
        ds.StudyID = "1"
        ds.AccessionNumber = ""
        ds.StudyDescription = "Synthetic chest CT"
        # General Series
        ds.Modality = "CT"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = int(series_number)
        ds.SeriesDate, ds.SeriesTime = SYNTHETIC_DATE, SYNTHETIC_TIME
        ds.SeriesDescription = series_description
        ds.BodyPartExamined = "CHEST"
        ds.PatientPosition = "HFS"
        # Frame of Reference
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        # General Equipment
        ds.Manufacturer = manufacturer
        ds.ManufacturerModelName = "synthetic phantom"
        # General Image / General Acquisition
        ds.InstanceNumber = k + 1
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.DerivationDescription = "Synthetic phantom generated by software; not acquired from a patient"
        ds.ContentDate, ds.ContentTime = SYNTHETIC_DATE, SYNTHETIC_TIME
        ds.AcquisitionNumber = 1
        ds.BurnedInAnnotation = "NO"
        ds.LossyImageCompression = "00"
        # Image Plane
        ds.PixelSpacing = [_ds(sy), _ds(sx)]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.ImagePositionPatient = [_ds(origin[0]), _ds(origin[1]), _ds(z)]
        ds.SliceThickness = _ds(sz)
        ds.SpacingBetweenSlices = _ds(sz)
        ds.SliceLocation = _ds(z)
        # Image Pixel
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = n_rows, n_cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1 if signed else 0
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype("<i2" if signed else "<u2").tobytes()
        if padding_hu is not None:  # the value outside the reconstruction circle, as stored
            ds.add_new(0x00280120, "SS" if signed else "US", int(padding_hu) - _INTERCEPT)
        # CT Image
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = str(_INTERCEPT), "1", "HU"
        ds.KVP = "120"
        # VOI LUT (lung window)
        ds.WindowCenter, ds.WindowWidth = "-600", "1500"
        ds.WindowCenterWidthExplanation = "LUNG"

        path = out / f"IM{k + 1:06d}.dcm"
        try:
            dcmwrite(path, ds, enforce_file_format=True)
        except OSError as exc:
            raise Code.DICOM_WRITE_FAILED(f"cannot write {path}: {exc}") from exc
        paths.append(path)
    return paths
