"""Hostile DICOM: any folder of files gives volumes or coded DicomErrors, within a memory bound.

Fuzzed (issue 16, point 5; the property and bounds are those of :mod:`tests.unit.data.fuzzing`):

* ``dicom-bytes``: a tiny CT series written by :func:`~medpipe.dicom.writer.write_ct_series` (3 slices of
  6x5), one or more of its files with bytes flipped, inserted, deleted, cut, or spliced from another file,
  named ``.dcm`` or without suffix (read without preamble/"DICM").
* ``dicom-fields``: the same series with header fields set through pydicom -- Rows, Columns,
  NumberOfFrames, BitsAllocated/Stored, HighBit, PixelRepresentation, SamplesPerPixel,
  PhotometricInterpretation, the transfer syntax (Big Endian, Deflated, JPEG, RLE, unknown), Pixel Data
  cut or grown, claims of 65535 rows, columns and frames, geometry and rescale values that are text,
  ``nan``, ``inf`` or ``1e999``, deeply nested functional-group sequences, and deflate bombs.

Each folder goes through what ``medpipe dicom ls`` and ``medpipe convert`` do: :func:`scan`, the listing
and table, then :func:`load_stack` on every stack, with :data:`MAX_DICOM_BYTES` lowered to 4 MiB; the peak
allocation must stay within a few times that. Volumes that load are 3-D with a finite, invertible affine
and finite voxels.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import shutil
import tempfile
import tracemalloc
import zlib
from io import BytesIO
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pydicom
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.tag import Tag

from medpipe.dicom.listing import listing, table
from medpipe.dicom.scan import scan
from medpipe.dicom.volume import Volume, load_dicom, load_stack
from medpipe.dicom.writer import write_ct_series
from medpipe.errors import Code, DicomError, MedpipeError
from tests.unit.data.fuzzing import LONG, SHORT, coded_or_result, mutated_bytes

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns on each odd value it reads
logging.getLogger("pydicom").setLevel(logging.ERROR)

BOUND = 4 * 2**20
#: stored pixels (<= BOUND per file, 3 files) + a rescaled copy + pydicom's decode buffers
PEAK = 16 * BOUND + 2**20

SYNTAXES = [
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90",
    "1.2.3.4", "",
]  # fmt: skip
FAILED = os.environ.get("MEDPIPE_FUZZ_KEEP")  # a folder: the last failing input is copied there
NUMBERS = ["nan", "inf", "-inf", "1e999", "x", "", "1e300", "0", "-1", "1\\2", "1e-320"]


@functools.cache
def seed_files() -> list[bytes]:
    folder = Path(tempfile.mkdtemp(prefix="fuzz_dicom_seed_"))
    image = np.random.default_rng(0).integers(-1000, 1500, (6, 5, 3)).astype(np.int16)
    paths = write_ct_series(image, folder, spacing=(0.7, 0.8, 2.0), origin_lps=(1, 2, 3), series_seed="fuzz")
    out = [p.read_bytes() for p in paths]
    shutil.rmtree(folder)
    return out


class Files(list):
    """The files of one input; shown by size and digest (hypothesis prints every failing draw)."""

    def __repr__(self) -> str:
        import hashlib

        return "Files(" + ", ".join(f"{len(b)}B:{hashlib.sha1(b).hexdigest()[:8]}" for b in self) + ")"


def _coded(e: MedpipeError) -> None:
    assert isinstance(e.code, Code), f"{type(e).__name__} with unregistered code {e.code!r}"
    assert isinstance(e, e.code.error)


def check(folder: Path, target: str) -> None:
    """scan + listing + load every stack; each refusal must be coded."""

    def run() -> list[Volume | MedpipeError]:
        with mock.patch("medpipe.dicom.headers.MAX_DICOM_BYTES", BOUND):
            result = scan(str(folder), workers=1)
            listing(result, show_paths=True)
            table(result)
            out: list[Volume | MedpipeError] = []
            for stack in result.stacks:
                try:
                    volume = load_stack(stack)
                except MedpipeError as e:
                    _coded(e)
                    out.append(e)
                    continue
                a = volume.array
                assert a.ndim == 3 and a.size > 0 and a.dtype.kind in "iuf"
                assert a.dtype.kind != "f" or np.isfinite(a).all()
                assert np.isfinite(volume.affine_lps).all() and abs(np.linalg.det(volume.affine_lps[:3, :3])) > 0
                out.append(volume)
            return out

    try:
        coded_or_result(target, run, max_peak=PEAK)
    except Exception:
        if FAILED:  # keep the failing folder to look at
            shutil.copytree(folder, FAILED, dirs_exist_ok=True)
        raise


def _write(folder: Path, files: list[bytes], suffix: str) -> None:
    for p in folder.iterdir():
        p.unlink()
    for i, raw in enumerate(files):
        (folder / f"IM{i:04d}{suffix}").write_bytes(raw)


# --- (a) byte-level mutation of real files


@st.composite
def mutated_series(draw: Any, seed: list[bytes]) -> tuple[list[bytes], str]:
    files = list(seed)
    for i in draw(st.lists(st.integers(0, len(files) - 1), min_size=1, max_size=3, unique=True)):
        raw = files[i]
        if draw(st.booleans()):  # splice: a piece of another file replaces a piece of this one
            other = files[draw(st.integers(0, len(files) - 1))]
            a, b = sorted(draw(st.lists(st.integers(0, len(raw)), min_size=2, max_size=2)))
            c = draw(st.integers(0, len(other)))
            raw = raw[:a] + other[c : c + draw(st.integers(0, 400))] + raw[b:]
        files[i] = draw(mutated_bytes(raw, max_edits=6))
    return Files(files), draw(st.sampled_from([".dcm", ""]))


def _fuzz_bytes(folder: Path, data: Any) -> None:
    files, suffix = data.draw(mutated_series(seed_files()))
    _write(folder, files, suffix)
    check(folder, "dicom-bytes")


@SHORT
@given(data=st.data())
def _short_bytes(folder: Path, data: Any) -> None:
    _fuzz_bytes(folder, data)


def test_fuzz_dicom_bytes() -> None:
    with tempfile.TemporaryDirectory() as d:
        _short_bytes(Path(d))


@pytest.mark.slow
def test_fuzz_dicom_bytes_long() -> None:
    with tempfile.TemporaryDirectory() as d:
        LONG(given(data=st.data())(_fuzz_bytes))(Path(d))


# --- (b) structured mutation of header fields

INT_FIELDS = {
    "Rows": [0, 1, 2, 5, 6, 7, 65535], "Columns": [0, 1, 4, 5, 6, 65535],
    "BitsAllocated": [0, 1, 7, 8, 12, 16, 24, 32, 64, 65535], "BitsStored": [0, 1, 8, 12, 16, 17, 32, 65535],
    "HighBit": [0, 7, 11, 15, 16, 65535], "PixelRepresentation": [0, 1, 2, 65535],
    "SamplesPerPixel": [0, 1, 2, 3, 4, 65535],
}  # fmt: skip
TEXT_FIELDS = {
    "NumberOfFrames": ("IS", ["0", "1", "2", "3", "-1", "65535", "2147483647", "x", ""]),
    "PhotometricInterpretation": ("CS", ["MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "PALETTE COLOR", "", "X"]),
    "ImagePositionPatient": ("DS", None), "ImageOrientationPatient": ("DS", None), "PixelSpacing": ("DS", None),
    "SliceThickness": ("DS", None), "SpacingBetweenSlices": ("DS", None), "RescaleSlope": ("DS", None),
    "RescaleIntercept": ("DS", None), "PixelPaddingValue": ("US", None), "InstanceNumber": ("IS", ["x", "1e9"]),
}  # fmt: skip


def _set_raw(ds: Dataset, keyword: str, vr: str, text: str) -> None:
    """Store ``text`` as the element's bytes, unchecked (pydicom would refuse "x" for a DS)."""
    value = text.encode("latin-1")
    value += b" " * (len(value) % 2)
    tag = Tag(keyword)
    ds._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)  # type: ignore[index]


def _nested(depth: int) -> bytes:
    """A SharedFunctionalGroupsSequence nested ``depth`` levels deep (undefined lengths, explicit VR LE)."""
    seq = b"\x00\x52\x29\x92SQ\x00\x00\xff\xff\xff\xff"
    item, item_end, seq_end = b"\xfe\xff\x00\xe0\xff\xff\xff\xff", b"\xfe\xff\x0d\xe0\0\0\0\0", b"\xfe\xff\xdd\xe0\0\0\0\0"
    return seq + item + (_nested(depth - 1) if depth > 1 else b"") + item_end + seq_end if depth < 50 else (
        (seq + item) * depth + (item_end + seq_end) * depth
    )


def dataset_bytes(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=False)
    return buffer.getvalue()


def deflated_file(ds: Dataset, pixel_bytes: int) -> bytes:
    """A deflated-syntax file whose tiny stream inflates to ``pixel_bytes`` of Pixel Data (a bomb)."""
    ds = copy.deepcopy(ds)
    del ds.PixelData
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    head = _meta_bytes(ds, "1.2.840.10008.1.2.1.99")
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    plain = body.getvalue()
    plain += b"\xe0\x7f\x10\x00OW\0\0" + pixel_bytes.to_bytes(4, "little")
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = packer.compress(plain)
    zeros = b"\0" * 2**20
    for _ in range(pixel_bytes // len(zeros)):
        stream += packer.compress(zeros)
    stream += packer.compress(b"\0" * (pixel_bytes % len(zeros))) + packer.flush()
    return head + stream


def _meta_bytes(ds: Dataset, syntax: str) -> bytes:
    meta = pydicom.dataset.FileMetaDataset(ds.file_meta)
    meta.TransferSyntaxUID = syntax
    buffer = BytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue()


@st.composite
def hostile_series(draw: Any, seed: list[bytes]) -> list[bytes]:
    files = list(seed)
    which = draw(st.lists(st.integers(0, len(files) - 1), min_size=1, max_size=3, unique=True))
    edits = draw(st.lists(st.sampled_from([*INT_FIELDS, *TEXT_FIELDS, "syntax", "pixels", "huge", "nested", "bomb"]),
                          min_size=1, max_size=4, unique=True))  # fmt: skip
    values: dict[str, Any] = {}
    for edit in edits:
        if edit in INT_FIELDS:
            values[edit] = draw(st.sampled_from(INT_FIELDS[edit]) | st.integers(0, 65535))
        elif edit in TEXT_FIELDS:
            vr, choices = TEXT_FIELDS[edit]
            n = {"ImagePositionPatient": 3, "ImageOrientationPatient": 6, "PixelSpacing": 2}.get(edit, 1)
            parts = draw(st.lists(st.sampled_from(NUMBERS) | st.floats().map(repr), min_size=n, max_size=n))
            values[edit] = (vr, draw(st.sampled_from(choices)) if choices else "\\".join(parts))
        elif edit == "syntax":
            values[edit] = draw(st.sampled_from(SYNTAXES))
        elif edit == "pixels":
            values[edit] = draw(st.integers(-60, 60))
        elif edit == "huge":
            values[edit] = draw(st.sampled_from(["rows", "frames", "all"]))
        elif edit == "nested":
            values[edit] = draw(st.sampled_from([3, 60, 3000]))
        else:
            values[edit] = draw(st.sampled_from([2**20, 64 * 2**20]))
    for i in which:
        ds = pydicom.dcmread(BytesIO(files[i]))
        for edit, value in values.items():
            if edit in INT_FIELDS:
                ds[edit].value = value
            elif edit in TEXT_FIELDS:
                _set_raw(ds, edit, *value)
            elif edit == "syntax":
                ds.file_meta.TransferSyntaxUID = value
            elif edit == "pixels":
                ds.PixelData = ds.PixelData[:value] if value < 0 else ds.PixelData + b"\1" * value
            elif edit == "huge":
                if value in ("rows", "all"):
                    ds.Rows = ds.Columns = 65535
                if value in ("frames", "all"):
                    ds.NumberOfFrames = 65535
        try:
            if "bomb" in values:
                raw = deflated_file(ds, values["bomb"])
            else:
                raw = dataset_bytes(ds)
        except Exception:  # noqa: BLE001 - pydicom will not write this combination: write it natively
            ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
            raw = dataset_bytes(ds)
        if "nested" in values:  # before Pixel Data, where a functional group would be
            at = raw.rfind(b"\xe0\x7f\x10\x00")
            at = at if at > 0 else len(raw)
            raw = raw[:at] + _nested(values["nested"]) + raw[at:]
        files[i] = raw
    return Files(files)


def _fuzz_fields(folder: Path, data: Any) -> None:
    files = data.draw(hostile_series(seed_files()))
    _write(folder, files, ".dcm")
    check(folder, "dicom-fields")


@SHORT
@given(data=st.data())
def _short_fields(folder: Path, data: Any) -> None:
    _fuzz_fields(folder, data)


def test_fuzz_dicom_fields() -> None:
    with tempfile.TemporaryDirectory() as d:
        _short_fields(Path(d))


@pytest.mark.slow
def test_fuzz_dicom_fields_long() -> None:
    with tempfile.TemporaryDirectory() as d:
        LONG(given(data=st.data())(_fuzz_fields))(Path(d))


# --- claims refused before allocation; regressions the fuzzing found (each on its minimal input)


def _seed_dataset() -> Dataset:
    return pydicom.dcmread(BytesIO(seed_files()[0]))


def _scan_one(folder: Path, raw: bytes, name: str = "IM0001.dcm") -> tuple[Any, int]:
    (folder / name).write_bytes(raw)
    tracemalloc.start()
    try:
        return scan(str(folder), workers=1), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5"], ids=["native", "rle"])
def test_header_claiming_65535_cubed_is_refused_before_allocation(tmp_path: Path, syntax: str) -> None:
    ds = _seed_dataset()
    ds.Rows = ds.Columns = ds.NumberOfFrames = 65535
    ds.file_meta.TransferSyntaxUID = syntax
    if syntax != "1.2.840.10008.1.2.1":
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([b"\0" * 64])
    result, peak = _scan_one(tmp_path, dataset_bytes(ds))
    assert [p.code for p in result.problems] == ["DICOM_TOO_LARGE"] and "65535 x 65535 x 65535" in result.problems[0].message
    assert peak < 2**20
    with pytest.raises(DicomError) as e:
        load_dicom(str(tmp_path))
    assert e.value.code == "DICOM_NO_SERIES" and "DICOM_TOO_LARGE" in str(e.value)


def test_frame_count_beyond_the_limit_is_refused_before_a_record_per_frame(tmp_path: Path) -> None:
    """An enhanced header (shared functional groups) claiming 2**31-1 frames of 1 x 1 pixels: one
    SliceHeader was made per claimed frame -- a loop of two billion (the 65535-frame claim took 2 s and 60 MB)."""
    ds = _seed_dataset()
    ds.Rows = ds.Columns = 1
    ds.PixelData = b"\0\0"
    ds.SharedFunctionalGroupsSequence = [Dataset()]
    _set_raw(ds, "NumberOfFrames", "IS", "2147483647")
    result, peak = _scan_one(tmp_path, dataset_bytes(ds))
    assert [p.code for p in result.problems] == ["DICOM_TOO_LARGE"]
    assert peak < 2**20


def test_more_frames_than_the_file_holds_is_truncated_not_a_record_each(tmp_path: Path) -> None:
    ds = _seed_dataset()
    ds.SharedFunctionalGroupsSequence = [Dataset()]
    ds.NumberOfFrames = 30000  # under the limit; the file holds one frame of 5 x 6
    result, peak = _scan_one(tmp_path, dataset_bytes(ds))
    assert [p.code for p in result.problems] == ["DICOM_CORRUPT_FILE"] and "truncated" in result.problems[0].message
    assert peak < 2**20


def test_length_field_beyond_the_file_is_not_allocated(tmp_path: Path) -> None:
    """Found by the fuzzing: one flipped bit made the 2-byte (0002,0001) OB value claim 0x36000002 bytes in a
    1.6 kB file; CPython's read(n) allocates n bytes first, so pydicom's fp.read(length) took 900 MB."""
    raw = bytearray(seed_files()[0])
    at = raw.index(b"\x02\x00\x01\x00OB\x00\x00") + 8
    raw[at : at + 4] = (0x36000002).to_bytes(4, "little")
    for name in ("IM0001.dcm", "IM0001"):  # with the suffix: reported; without: the preamble-less fallback too
        result, peak = _scan_one(tmp_path, bytes(raw), name)
        assert peak < 2**20 and not result.stacks
        (tmp_path / name).unlink()


def test_deflate_bomb_is_refused_before_pydicom_inflates_it(tmp_path: Path) -> None:
    """A 66 kB deflated file whose Pixel Data inflates to 64 MiB: pydicom inflates the whole dataset at once
    (64 MB held at scan, again at load); it is now refused while streaming, past MAX_DICOM_BYTES."""
    raw = deflated_file(_seed_dataset(), 64 * 2**20)
    assert len(raw) < 100_000
    with mock.patch("medpipe.dicom.headers.MAX_DICOM_BYTES", 4 * 2**20):
        result, peak = _scan_one(tmp_path, raw)
    assert [p.code for p in result.problems] == ["DICOM_TOO_LARGE"] and "deflated" in result.problems[0].message
    assert peak < 6 * 2**20


def test_deflated_series_of_a_real_size_still_loads(tmp_path: Path) -> None:
    for i, raw in enumerate(seed_files()):
        ds = pydicom.dcmread(BytesIO(raw))
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
        (tmp_path / f"IM{i}.dcm").write_bytes(dataset_bytes(ds))
    volume = load_dicom(str(tmp_path))
    assert volume.array.shape == (6, 5, 3)


def test_empty_image_is_corrupt(tmp_path: Path) -> None:
    """Found by the fuzzing: Rows 0 gave a (3, 0, 6) buffer and TypeError from memoryview.cast at load."""
    for i, raw in enumerate(seed_files()):
        ds = pydicom.dcmread(BytesIO(raw))
        ds.Rows = 0
        (tmp_path / f"IM{i}.dcm").write_bytes(dataset_bytes(ds))
    result = scan(str(tmp_path), workers=1)
    assert {p.code for p in result.problems} == {"DICOM_CORRUPT_FILE"} and "empty image" in result.problems[0].message


def test_bad_vr_in_file_meta_is_corrupt(tmp_path: Path) -> None:
    """Found by the fuzzing: a damaged VR in (0002,0002) parsed (file meta values convert lazily), then
    NotImplementedError escaped read_file when it asked for MediaStorageSOPClassUID."""
    raw = bytearray(seed_files()[0])
    at = raw.index(b"\x02\x00\x02\x00UI") + 4
    raw[at : at + 2] = b"I\x1a"
    (tmp_path / "IM0001.dcm").write_bytes(bytes(raw))
    (tmp_path / "IM0002").write_bytes(bytes(raw))  # no suffix: read without preamble too, then skipped
    result = scan(str(tmp_path), workers=1)
    assert [p.code for p in result.problems] == ["DICOM_CORRUPT_FILE"] and result.skipped["not DICOM"] == 1


def test_rescale_slope_overflowing_float32_is_invalid(tmp_path: Path) -> None:
    """Found by the fuzzing: RescaleSlope 1e35 is finite, but stored x slope overflowed float32 to inf voxels."""
    for i, raw in enumerate(seed_files()):
        ds = pydicom.dcmread(BytesIO(raw))
        _set_raw(ds, "RescaleSlope", "DS", "1e35")
        (tmp_path / f"IM{i}.dcm").write_bytes(dataset_bytes(ds))
    with pytest.raises(DicomError) as e:
        load_dicom(str(tmp_path))
    assert e.value.code == "DICOM_INVALID_RESCALE" and "1e+35" in str(e.value)
