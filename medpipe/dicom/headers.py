"""Read what assembly needs from one DICOM file's header, never its pixel data.

A file becomes one :class:`SliceHeader` per 2D image: one for a classic single-frame CT/MR file, one per
frame for an enhanced multi-frame object, whose per-frame geometry and rescale live in the
Per-frame / Shared Functional Groups. ``pydicom.dcmread(stop_before_pixels=True)`` stops at the Pixel
Data element; the file position there is kept so native (uncompressed) pixels can later be read with
one ``numpy.fromfile`` and so a truncated file is caught at scan time from its size alone.

Patient identity (name, ID, birth date, accession number) is never read into these records.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from medpipe.errors import Code

#: File suffixes that announce DICOM: a file with one of these that does not parse is reported, not ignored.
DICOM_SUFFIXES = {".dcm", ".dicom", ".dic", ".ima", ".dc3"}

#: SOP classes that carry Rows/Columns but are not image slices of a volume.
NON_VOLUME_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "DICOM SEG",
    "1.2.840.10008.5.1.4.1.1.481.2": "RT Dose",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF",
    "1.2.840.10008.1.3.10": "DICOMDIR",
}
#: The only elements parsed (``dcmread(specific_tags=...)`` skips the rest of the header unconverted).
HEADER_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "Modality", "ImageType", "InstanceNumber",
    "Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel",
    "NumberOfFrames", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
    "SpacingBetweenSlices", "RescaleSlope", "RescaleIntercept", "PixelPaddingValue",
    "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
]  # fmt: skip
NATIVE_TRANSFER_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


@dataclass(frozen=True)
class SliceHeader:
    """One 2D image (a single-frame file, or one frame of a multi-frame file) ready for stacking."""

    path: str
    frame: int | None  # 0-based frame index in a multi-frame file, None for a single-frame file
    sop_instance_uid: str
    series_uid: str
    sop_class_uid: str
    modality: str
    transfer_syntax: str
    rows: int
    columns: int
    position: tuple[float, float, float] | None  # ImagePositionPatient (LPS mm)
    orientation: tuple[float, ...] | None  # ImageOrientationPatient (6 cosines)
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns) mm
    slice_thickness: float | None
    spacing_between_slices: float | None
    slope: float
    intercept: float
    image_type: tuple[str, ...]
    instance_number: int | None
    stack_key: str  # separates frames of different stacks/files that share a SeriesInstanceUID
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    samples_per_pixel: int
    number_of_frames: int
    pixel_offset: int | None  # file offset of the Pixel Data element (None: no pixel data)
    padding_value: float | None  # PixelPaddingValue (stored units): the scanner's "outside the FOV" value
    problem: str | None = (
        None  # a code found without pixels: DICOM_NO_PIXEL_DATA, DICOM_CORRUPT_FILE (truncated)...
    )

    @property
    def is_native(self) -> bool:
        return self.transfer_syntax in NATIVE_TRANSFER_SYNTAXES

    @property
    def is_localizer(self) -> bool:
        return any(v in {"LOCALIZER", "SCOUT"} for v in self.image_type)


@dataclass(frozen=True)
class FileProblem:
    """A file that looked like DICOM but could not be used; the scan records it and goes on."""

    path: str
    code: str
    message: str


@dataclass
class FileResult:
    """What reading one file gave: slices, or a problem, or a reason it was skipped."""

    path: str
    slices: list[SliceHeader] = field(default_factory=list)
    problem: FileProblem | None = None
    skipped: str | None = None  # "not DICOM", "DICOMDIR", "DICOM SEG"... (not an image series)


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(out) != n or not all(np.isfinite(out)):
        return None
    return out


def _float(value: Any, default: float | None) -> float | None:
    if value is None or value == "":
        return default
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if np.isfinite(out) else default


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _first_item(ds: Dataset | None, keyword: str) -> Dataset | None:
    if ds is None:
        return None
    seq = ds.get(keyword)
    if seq is None or len(seq) == 0:
        return None
    return seq[0]


def _functional(frame_group: Dataset | None, shared: Dataset | None, keyword: str) -> Dataset | None:
    """A functional group macro item, per-frame first then shared (PS3.3 C.7.6.16)."""
    return _first_item(frame_group, keyword) or _first_item(shared, keyword)


def _expected_pixel_bytes(ds: Dataset) -> int:
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = _int(ds.get("NumberOfFrames", 1)) or 1
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 16) or 16)
    return (rows * cols * frames * spp * bits + 7) // 8


def _pixel_problem(ds: Dataset, offset: int | None, size: int, transfer_syntax: str) -> str | None:
    """Detect a missing or truncated Pixel Data element without reading it."""
    if offset is None or size - offset < 8:
        return Code.DICOM_NO_PIXEL_DATA
    if transfer_syntax in NATIVE_TRANSFER_SYNTAXES:
        header = 8 if transfer_syntax == "1.2.840.10008.1.2" else 12
        if size - offset - header < _expected_pixel_bytes(ds):
            return Code.DICOM_CORRUPT_FILE
    return None


def _read_dataset(path: str) -> tuple[Dataset, int | None, int]:
    """Parse the header; return it, the Pixel Data offset (None if absent) and the file size."""
    size = os.path.getsize(path)
    with open(path, "rb") as fp:
        try:
            ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=HEADER_TAGS)
        except InvalidDicomError:
            # No 128-byte preamble + "DICM": old ACR-NEMA style files still carry a valid dataset. Only tried
            # for names that may be DICOM (".dcm", no suffix, or UID-like "CT.1.2.840..." names).
            suffix = os.path.splitext(path)[1].lower()
            if not (suffix in DICOM_SUFFIXES or suffix == "" or suffix[1:].isdigit()):
                raise
            fp.seek(0)
            ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True, specific_tags=HEADER_TAGS)
        pos = fp.tell()
        tag_bytes = fp.read(4)
    offset = None
    if len(tag_bytes) == 4:
        little = ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2") != "1.2.840.10008.1.2.2"
        group, elem = np.frombuffer(tag_bytes, dtype="<u2" if little else ">u2")
        if (int(group), int(elem)) == (0x7FE0, 0x0010):
            offset = pos
    return ds, offset, size


def read_file(path: str) -> FileResult:
    """Read one file's header into slice records; never raises for bad input (recorded instead)."""
    name = os.path.basename(path)
    suffix = os.path.splitext(name)[1].lower()
    announced = suffix in DICOM_SUFFIXES
    result = FileResult(path)
    try:
        with warnings.catch_warnings():  # pydicom warns on every odd-but-readable header: noise at scale
            warnings.simplefilter("ignore")
            ds, offset, size = _read_dataset(path)
    except Exception as e:  # pydicom raises many types on garbage: all mean "unusable file"
        if announced:
            result.problem = FileProblem(path, Code.DICOM_CORRUPT_FILE, f"cannot parse ({type(e).__name__})")
        else:
            result.skipped = "not DICOM"
        return result
    sop_class = str(ds.get("SOPClassUID", ds.file_meta.get("MediaStorageSOPClassUID", "")))
    if name.upper() == "DICOMDIR" or sop_class in NON_VOLUME_SOP_CLASSES:
        result.skipped = NON_VOLUME_SOP_CLASSES.get(sop_class, "DICOMDIR")
        return result
    if "SeriesInstanceUID" not in ds or "SOPInstanceUID" not in ds:
        if announced or len(ds) > 3:
            result.problem = FileProblem(
                path, Code.DICOM_CORRUPT_FILE, "not a DICOM image (no Series/SOP Instance UID)"
            )
        else:
            result.skipped = "not DICOM"
        return result
    if "Rows" not in ds or "Columns" not in ds:
        result.skipped = "not an image (no Rows/Columns)"
        return result
    try:
        result.slices = _slices_of(ds, path, offset, size, sop_class)
    except Exception as e:  # malformed values deep in a sequence: this file is unusable, the scan goes on
        result.problem = FileProblem(
            path, Code.DICOM_CORRUPT_FILE, f"malformed header ({type(e).__name__}: {e})"
        )
    return result


def _slices_of(ds: Dataset, path: str, offset: int | None, size: int, sop_class: str) -> list[SliceHeader]:
    transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2"))
    n_frames = _int(ds.get("NumberOfFrames", 1)) or 1
    common = dict(
        path=path,
        series_uid=str(ds.SeriesInstanceUID),
        sop_class_uid=sop_class,
        modality=str(ds.get("Modality", "OT") or "OT"),
        transfer_syntax=transfer_syntax,
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        image_type=tuple(str(v).upper() for v in (ds.get("ImageType") or ())),
        instance_number=_int(ds.get("InstanceNumber")),
        bits_allocated=int(ds.get("BitsAllocated", 16) or 16),
        bits_stored=int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16),
        pixel_representation=int(ds.get("PixelRepresentation", 0) or 0),
        samples_per_pixel=int(ds.get("SamplesPerPixel", 1) or 1),
        number_of_frames=n_frames,
        pixel_offset=offset,
        padding_value=_float(ds.get("PixelPaddingValue"), None),
        problem=_pixel_problem(ds, offset, size, transfer_syntax),
    )
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if shared is None and per_frame is None:
        if n_frames > 1:
            # Legacy multi-frame (NM, US, old MR): one geometry for all frames, no per-frame positions.
            common["problem"] = common["problem"] or Code.DICOM_NO_GEOMETRY
        return [
            SliceHeader(
                frame=None if n_frames == 1 else 0,
                sop_instance_uid=str(ds.SOPInstanceUID),
                position=_floats(ds.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
                orientation=_floats(ds.get("ImageOrientationPatient"), 6),
                pixel_spacing=_floats(ds.get("PixelSpacing"), 2),  # type: ignore[arg-type]
                slice_thickness=_float(ds.get("SliceThickness"), None),
                spacing_between_slices=_float(ds.get("SpacingBetweenSlices"), None),
                slope=_float(ds.get("RescaleSlope"), 1.0) or 1.0,
                intercept=_float(ds.get("RescaleIntercept"), 0.0) or 0.0,
                stack_key="",
                **common,
            )
        ]
    # Enhanced multi-frame: each frame's geometry from its functional groups.
    out = []
    for i in range(n_frames):
        group = per_frame[i] if per_frame is not None and i < len(per_frame) else None
        pos = _functional(group, shared, "PlanePositionSequence")
        ori = _functional(group, shared, "PlaneOrientationSequence")
        meas = _functional(group, shared, "PixelMeasuresSequence")
        pvt = _functional(group, shared, "PixelValueTransformationSequence")
        content = _first_item(group, "FrameContentSequence")
        stack_id = str(content.get("StackID", "")) if content is not None else ""
        out.append(
            SliceHeader(
                frame=i,
                sop_instance_uid=f"{ds.SOPInstanceUID}#{i}",
                position=_floats(pos.get("ImagePositionPatient"), 3) if pos else None,  # type: ignore[arg-type]
                orientation=_floats(ori.get("ImageOrientationPatient"), 6) if ori else None,
                pixel_spacing=_floats(meas.get("PixelSpacing"), 2) if meas else None,  # type: ignore[arg-type]
                slice_thickness=_float(meas.get("SliceThickness"), None) if meas else None,
                spacing_between_slices=_float(meas.get("SpacingBetweenSlices"), None) if meas else None,
                slope=(_float(pvt.get("RescaleSlope"), 1.0) if pvt else _float(ds.get("RescaleSlope"), 1.0))
                or 1.0,
                intercept=(
                    _float(pvt.get("RescaleIntercept"), 0.0)
                    if pvt
                    else _float(ds.get("RescaleIntercept"), 0.0)
                )
                or 0.0,
                stack_key=f"{ds.SOPInstanceUID}/{stack_id}",
                **common,
            )
        )
    return out


def transfer_syntax_problem(transfer_syntax: str) -> str | None:
    """Why pydicom cannot decode this transfer syntax here (None when it can)."""
    if transfer_syntax in NATIVE_TRANSFER_SYNTAXES or transfer_syntax == "1.2.840.10008.1.2.1.99":
        return None
    from pydicom.pixels.decoders.base import get_decoder

    try:
        decoder = get_decoder(UID(transfer_syntax))
    except NotImplementedError:
        return f"{UID(transfer_syntax).name} ({transfer_syntax}) has no pixel decoder in pydicom"
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "none installed"
        return f"{UID(transfer_syntax).name} needs a decoder plugin ({missing})"
    return None
