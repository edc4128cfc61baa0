"""Read what assembly needs from one DICOM file's header, never its pixel data.

A file becomes one :class:`SliceHeader` per 2D image: one for a classic single-frame CT/MR file, one per
frame for an enhanced multi-frame object, whose per-frame geometry and rescale live in the
Per-frame / Shared Functional Groups. ``pydicom.dcmread(stop_before_pixels=True)`` stops at the Pixel
Data element; the file position there is kept so native (uncompressed) pixels can later be read with
one ``numpy.fromfile`` and so a truncated file is caught at scan time from its size alone.

Patient identity (name, ID, birth date, accession number) is never read into these records.
"""

from __future__ import annotations

import io
import os
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.multival import MultiValue
from pydicom.uid import UID

from medpipe.errors import Code, MedpipeError

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
#: The most pixel bytes one file may claim (Rows x Columns x NumberOfFrames x SamplesPerPixel x BitsAllocated),
#: and the most a deflated file may inflate to: checked before anything is allocated (DICOM_TOO_LARGE).
MAX_DICOM_BYTES = 4 * 2**30
#: The most frames one file may claim (one header record each): 0.1 mm slices over 3 m are 30000.
MAX_DICOM_FRAMES = 32768
NATIVE_TRANSFER_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
#: Explicit VR Little Endian, zlib-deflated after the file meta: pixels are native once inflated.
DEFLATED = "1.2.840.10008.1.2.1.99"
#: A file without file meta (ACR-NEMA style): (implicit VR, little endian) pydicom detected -> its syntax
_DETECTED_SYNTAX = {(True, True): "1.2.840.10008.1.2", (False, True): "1.2.840.10008.1.2.1", (False, False): "1.2.840.10008.1.2.2"}


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
    pixel_offset: int | None  # file offset of the Pixel Data element (None: none; 0 in a deflated file)
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


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    """``n`` numbers, or None when the element is absent or empty. A value that is there but is not ``n``
    numbers becomes ``n`` NaNs, so validation refuses it (never mistaken for "absent")."""
    if _blank(value):
        return None
    try:
        out = tuple(float(v) for v in (value if isinstance(value, (list, tuple, MultiValue)) else [value]))
    except (TypeError, ValueError):
        return (float("nan"),) * n
    return out if len(out) == n else (float("nan"),) * n


def _float(value: Any, default: float | None) -> float | None:
    """The number, ``default`` when absent or empty, NaN when present but not a number (refused later)."""
    if _blank(value):
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _finite_or_none(value: Any) -> float | None:  # optional hints (PixelPaddingValue): else ignored
    out = _float(value, None)
    return out if out is not None and np.isfinite(out) else None


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


def _claim_problem(
    ds: Dataset, path: str, offset: int | None, size: int, transfer_syntax: str
) -> FileProblem | None:
    """A claim refused before any record or pixel is made: too large, empty, or more frames than the file
    holds (native pixels, or an encapsulated frame's 8-byte item header each)."""
    frames = _int(ds.get("NumberOfFrames", 1)) or 1
    claim = _expected_pixel_bytes(ds)
    shape = f"{ds.get('Rows')} x {ds.get('Columns')} x {frames} frames x {ds.get('BitsAllocated')} bits"
    if claim > MAX_DICOM_BYTES or frames > MAX_DICOM_FRAMES:
        return FileProblem(path, Code.DICOM_TOO_LARGE, f"the header claims {shape} ({claim} bytes): refused unread")
    if not (int(ds.Rows or 0) > 0 and int(ds.Columns or 0) > 0):
        return FileProblem(path, Code.DICOM_CORRUPT_FILE, f"the header claims an empty image ({shape})")
    if frames > 1 and offset is not None:
        held = size - offset
        if transfer_syntax == DEFLATED:
            return None  # inflated size bounded by dcmread
        if transfer_syntax in NATIVE_TRANSFER_SYNTAXES and claim > held or frames * 8 > held:
            return FileProblem(path, Code.DICOM_CORRUPT_FILE, f"{shape} do not fit in the file: truncated")
    return None


def _pixel_problem(ds: Dataset, offset: int | None, size: int, transfer_syntax: str) -> str | None:
    """Detect a missing or truncated Pixel Data element without reading it."""
    if transfer_syntax == DEFLATED:
        # The file position says nothing inside the inflated stream: presence was checked on the dataset.
        return None if offset is not None else Code.DICOM_NO_PIXEL_DATA
    if offset is None or size - offset < 8:
        return Code.DICOM_NO_PIXEL_DATA
    if transfer_syntax in NATIVE_TRANSFER_SYNTAXES:
        header = 8 if transfer_syntax == "1.2.840.10008.1.2" else 12
        if size - offset - header < _expected_pixel_bytes(ds):
            return Code.DICOM_CORRUPT_FILE
    return None


def may_lack_preamble(path: str) -> bool:
    """Names under which a file without preamble + "DICM" is still read as DICOM: ".dcm" and the like,
    no suffix, or UID-like "CT.1.2.840..." names (a ``notes.txt`` is never forced through the parser)."""
    suffix = os.path.splitext(path)[1].lower()
    return suffix in DICOM_SUFFIXES or suffix == "" or suffix[1:].isdigit()


class _SizeBoundedFile(io.BufferedReader):
    """``read(n)`` never asks for more than is left: pydicom's ``fp.read(length)`` allocates ``length`` first
    (a flipped length bit of a 1.6 kB file allocated 900 MB; found by the fuzzing)."""

    def __init__(self, path: Any) -> None:
        super().__init__(io.FileIO(path, "rb"))
        self._size = os.fstat(self.fileno()).st_size

    def read(self, n: int | None = -1) -> bytes:
        if n is not None and n > _SMALL_READ:
            n = min(n, max(0, self._size - self.tell()))
        return super().read(n)


_SMALL_READ, _DEFLATED_UID = 1 << 16, DEFLATED.encode()  # unclamped reads (tell() cost 15 % of a scan)


def _refuse_inflation_bomb(fp: Any) -> None:
    """Raise DICOM_TOO_LARGE for a deflated file that inflates past :data:`MAX_DICOM_BYTES`, streaming the
    check (pydicom inflates the whole dataset into memory at once: a 64 kB file made 64 MB)."""
    start = fp.tell()
    if hasattr(fp, "peek") and _DEFLATED_UID not in fp.peek(4096)[:4096]:  # no 2nd file-meta parse
        return
    try:
        read_preamble(fp, True)
        deflated = _read_file_meta_info(fp).get("TransferSyntaxUID") == DEFLATED
    except Exception:  # noqa: BLE001 - not for this check to judge: pydicom's parse reports it
        deflated = False
    if deflated:
        inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
        try:
            while chunk := fp.read(2**16):
                while chunk:
                    total += len(inflater.decompress(chunk, 2**20))
                    if total > MAX_DICOM_BYTES:
                        raise Code.DICOM_TOO_LARGE(f"deflated data inflates past {MAX_DICOM_BYTES} bytes: refused")
                    chunk = inflater.unconsumed_tail
        except zlib.error:
            pass  # a damaged stream: pydicom's inflate reports it
    fp.seek(start)


def dcmread(path: Any, *, force_ok: bool = True, **kwargs: Any) -> Dataset:
    """``pydicom.dcmread`` that also reads files without the 128-byte preamble and "DICM" prefix.

    Archive exports and old ACR-NEMA style files omit them but carry a valid dataset; dcm2niix, GDCM and
    pydicom (``force=True``) read them. Without file meta the transfer syntax is the encoding pydicom
    detected, written into ``file_meta`` so the pixel decoders (and :class:`SliceHeader`) know it.
    A path is read through a file that bounds each read by what is left in it, and a deflated file is
    refused (DICOM_TOO_LARGE) before pydicom inflates more than :data:`MAX_DICOM_BYTES`.
    """
    if isinstance(path, (str, os.PathLike)):
        with _SizeBoundedFile(path) as fp:
            return dcmread(fp, force_ok=force_ok, **kwargs)
    _refuse_inflation_bomb(path)
    try:
        ds = pydicom.dcmread(path, **kwargs)
    except InvalidDicomError:
        if not force_ok:
            raise
        if hasattr(path, "seek"):
            path.seek(0)
        ds = pydicom.dcmread(path, force=True, **kwargs)
    if "TransferSyntaxUID" not in ds.file_meta:
        encoding = ds.original_encoding if ds.original_encoding[0] is not None else (True, True)
        ds.file_meta.TransferSyntaxUID = UID(_DETECTED_SYNTAX[encoding])  # type: ignore[index]
    return ds


def _read_dataset(path: str) -> tuple[Dataset, int | None, int]:
    """Parse the header; return it, the Pixel Data offset (None if absent) and the file size."""
    size = os.path.getsize(path)
    with _SizeBoundedFile(path) as fp:
        ds = dcmread(fp, force_ok=may_lack_preamble(path), stop_before_pixels=True, specific_tags=HEADER_TAGS)
        pos = fp.tell()
        tag_bytes = fp.read(4)
    offset = None
    syntax = str(ds.file_meta.TransferSyntaxUID)
    if syntax == DEFLATED:
        # pydicom inflated the rest of the file into memory, so ``fp`` is at its end: look for Pixel Data
        # in the inflated dataset instead (deflated files are rare; the second parse is the price).
        inflated = dcmread(path, force_ok=may_lack_preamble(path), specific_tags=["PixelData"])
        return ds, (0 if "PixelData" in inflated else None), size
    if len(tag_bytes) == 4:
        little = syntax != "1.2.840.10008.1.2.2"
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
            # file meta values are converted on first access, so a bad VR there raises here
            sop_class = str(ds.get("SOPClassUID", ds.file_meta.get("MediaStorageSOPClassUID", "")))
    except MedpipeError as e:  # refused before pydicom read it (DICOM_TOO_LARGE)
        result.problem = FileProblem(path, e.code, e.message)
        return result
    except Exception as e:  # pydicom raises many types on garbage: all mean "unusable file"
        if announced:
            result.problem = FileProblem(path, Code.DICOM_CORRUPT_FILE, f"cannot parse ({type(e).__name__})")
        else:
            result.skipped = "not DICOM"
        return result
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
        result.problem = _claim_problem(ds, path, offset, size, str(ds.file_meta.TransferSyntaxUID))
        if result.problem is None:
            result.slices = _slices_of(ds, path, offset, size, sop_class)
    except Exception as e:  # malformed values deep in a sequence: this file is unusable, the scan goes on
        result.problem = FileProblem(
            path, Code.DICOM_CORRUPT_FILE, f"malformed header ({type(e).__name__}: {e})"
        )
    return result


def _slices_of(ds: Dataset, path: str, offset: int | None, size: int, sop_class: str) -> list[SliceHeader]:
    transfer_syntax = str(ds.file_meta.TransferSyntaxUID)  # set by dcmread() when the file has no meta
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
        padding_value=_finite_or_none(ds.get("PixelPaddingValue")),
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
                # Absent means identity; a value that is there is kept as read (NaN, 0...) and refused by
                # medpipe.dicom.values before any pixel is scaled by it.
                slope=_float(ds.get("RescaleSlope"), 1.0),  # type: ignore[arg-type]
                intercept=_float(ds.get("RescaleIntercept"), 0.0),  # type: ignore[arg-type]
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
                slope=_float((pvt or ds).get("RescaleSlope"), 1.0),  # type: ignore[arg-type]
                intercept=_float((pvt or ds).get("RescaleIntercept"), 0.0),  # type: ignore[arg-type]
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
