"""Hostile NIfTI files: any bytes give a usable 3-D volume or a coded NiftiError, within a memory bound.

Fuzzed: tiny nibabel-written images (NIfTI-1 and -2, .nii and .nii.gz, several voxel types) with
header fields set to arbitrary values (dim, pixdim, datatype, bitpix, vox_offset, qform/sform codes and
parameters, scl_slope/inter, sizeof_hdr, magic), then bytes flipped, inserted, deleted or cut — for gzip
both before and after compression. Each goes through the path ``medpipe convert`` / ``medpipe infer``
take (:func:`medpipe.data.images.read_image` -> :func:`medpipe.data.nifti.validate_nifti`) with
``max_bytes`` lowered to 4 MiB, and the peak allocation must stay within a few times that bound: a
header claiming more is refused before any voxel is read. Volumes that pass are 3-D, with a finite,
invertible affine and finite voxels.
"""

from __future__ import annotations

import gzip
import io
import logging
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any
from unittest import mock

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from medpipe.data.checks import check_labelled_cases
from medpipe.data.images import Image, read_image
from medpipe.data.nifti import validate_nifti
from medpipe.errors import NiftiError
from tests.unit.data.fuzzing import LONG, SHORT, coded_or_result, mutated_bytes

logging.getLogger("nibabel").setLevel(logging.ERROR)  # it logs each header repair it makes

BOUND = 4 * 2**20
#: data (<= BOUND) + a scaled float64 copy (8x for int8) + isfinite's mask + nibabel's buffers
PEAK = 12 * BOUND + 2**20

HEADER_FIELDS = ["dim", "pixdim", "datatype", "bitpix", "vox_offset", "qform_code", "sform_code", "quatern_b",
                 "quatern_c", "quatern_d", "qoffset_x", "srow_x", "srow_y", "srow_z", "scl_slope", "scl_inter",
                 "sizeof_hdr", "magic", "dim_info", "intent_code", "xyzt_units"]  # fmt: skip
DTYPES = [np.uint8, np.int16, np.int32, np.float32, np.float64]


@pytest.fixture(scope="module")
def folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="fuzz_nifti_"))


def nifti_bytes(header: Any, data: np.ndarray) -> bytes:
    """The single-file NIfTI of ``header`` and ``data`` as nibabel writes it, or, for a header nibabel will
    not write (a datatype code it does not know...), the header's bytes followed by the voxels."""
    try:
        image = (nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image)(data, None, header)
        buffer = io.BytesIO()
        image.to_stream(buffer)
        return buffer.getvalue()
    except Exception:  # noqa: BLE001 - any refusal: write the raw bytes instead
        return raw_bytes(header, data)


def raw_bytes(header: Any, data: np.ndarray) -> bytes:
    return header.binaryblock + b"\0" * 4 + data.tobytes()


def field_value(draw: Any, header: Any, name: str) -> Any:
    current = np.asarray(header[name])
    kind, shape = current.dtype.kind, current.shape
    if kind == "f":
        values = st.floats(width=8 * current.dtype.itemsize) | st.sampled_from([0.0, -1.0, 1e30, float("nan")])
    elif kind in "iu":
        info = np.iinfo(current.dtype)
        values = st.integers(int(info.min), int(info.max)) | st.sampled_from([0, 1, 3, 7, 8, 65535 % (int(info.max) + 1)])
    else:
        return draw(st.binary(min_size=current.dtype.itemsize, max_size=current.dtype.itemsize))
    if shape:
        return np.array(draw(st.lists(values, min_size=shape[0], max_size=shape[0])), dtype=current.dtype)
    return np.array(draw(values), dtype=current.dtype)


@st.composite
def hostile_nifti(draw: Any) -> tuple[str, bytes]:
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=2, max_size=5)))
    dtype = draw(st.sampled_from(DTYPES))
    data = np.asarray(np.random.default_rng(draw(st.integers(0, 9))).normal(0, 100, shape)).astype(dtype)
    header = draw(st.sampled_from([nib.Nifti1Header, nib.Nifti2Header]))()
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    affine = np.diag([*draw(st.lists(st.floats(0.1, 5), min_size=3, max_size=3)), 1.0])
    header.set_qform(affine, code=draw(st.integers(0, 2)))
    header.set_sform(affine, code=draw(st.integers(0, 2)))
    for name in draw(st.lists(st.sampled_from(HEADER_FIELDS), max_size=4, unique=True)):
        if name in header:
            header[name] = field_value(draw, header, name)
    raw = nifti_bytes(header, data) if draw(st.booleans()) else raw_bytes(header, data)
    raw = draw(mutated_bytes(raw, max_edits=4)) if draw(st.booleans()) else raw
    if draw(st.booleans()):
        return ".nii", raw
    packed = gzip.compress(raw, compresslevel=1)
    return ".nii.gz", draw(mutated_bytes(packed, max_edits=3)) if draw(st.booleans()) else packed


def check(path: Path) -> None:
    def read() -> Image:
        with mock.patch("medpipe.data.nifti.MAX_NIFTI_BYTES", BOUND):
            image = read_image(path)
        assert image.array.ndim == 3 and image.array.size > 0
        assert np.isfinite(image.affine_lps).all() and abs(np.linalg.det(image.affine_lps[:3, :3])) > 0
        assert image.array.dtype.kind in "iuf"
        assert image.array.dtype.kind != "f" or np.isfinite(image.array).all()
        return image

    coded_or_result("nifti", read, max_peak=PEAK)


def _fuzz(folder: Path, case: tuple[str, bytes]) -> None:
    suffix, raw = case
    path = folder / f"fuzz{suffix}"
    path.write_bytes(raw)
    check(path)


test_fuzz_nifti = SHORT(given(case=hostile_nifti())(_fuzz))
test_fuzz_nifti_long = pytest.mark.slow(LONG(given(case=hostile_nifti())(_fuzz)))


# --- the header that claims the impossible is refused before allocation; regressions the fuzzing found


def claiming(shape: tuple[int, ...], *, nifti2: bool = False, gz: bool = False, dtype: Any = np.int16) -> bytes:
    header = (nib.Nifti2Header if nifti2 else nib.Nifti1Header)()
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    header.set_qform(np.eye(4), code=1)
    raw = header.binaryblock + b"\0" * 4 + b"\0" * 1000  # the file holds 1000 bytes of the claimed voxels
    return gzip.compress(raw) if gz else raw


def refused(tmp_path: Path, raw: bytes, suffix: str = ".nii") -> tuple[NiftiError, int]:
    path = tmp_path / f"x{suffix}"
    path.write_bytes(raw)
    tracemalloc.start()
    try:
        with pytest.raises(NiftiError) as e:
            validate_nifti(path)
        return e.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("gz", [False, True], ids=["nii", "nii.gz"])
@pytest.mark.parametrize(("shape", "nifti2"), [((65535, 65535, 65535), True), ((32767, 32767, 32767), False)])
def test_header_claiming_huge_volume_is_refused_before_allocation(tmp_path: Path, shape, nifti2, gz) -> None:
    """Was refused only by luck: nibabel's bytearray(5.6e14) raised MemoryError (a smaller claim is allocated)."""
    error, peak = refused(tmp_path, claiming(shape, nifti2=nifti2, gz=gz), ".nii.gz" if gz else ".nii")
    assert error.code == "NIFTI_TOO_LARGE" and "x".join(map(str, shape)) in str(error).replace(" ", "")
    assert peak < 2**20


def test_truncated_gzip_claiming_under_the_limit_is_refused_before_allocation(tmp_path: Path) -> None:
    """A 70-byte .nii.gz claiming 400^3 int16 (128 MB): nibabel allocated and zeroed the 128 MB, then found the
    stream short. Deflate expands at most 1032:1, so such a file is known truncated from its size."""
    error, peak = refused(tmp_path, claiming((400, 400, 400), gz=True), ".nii.gz")
    assert error.code == "NIFTI_UNREADABLE" and "truncated" in str(error)
    assert peak < 2**20


def test_dimension_over_nifti1_range_is_too_large(tmp_path: Path) -> None:
    error, _ = refused(tmp_path, claiming((40000, 1, 1), nifti2=True, dtype=np.uint8))
    assert error.code == "NIFTI_TOO_LARGE"  # was accepted; writing it as NIfTI-1 (convert) then failed


@pytest.mark.parametrize(
    ("dtype_code", "bitpix", "shape"),
    [(128, 24, (2, 2, 2)), (32, 64, (2, 2, 2)), (2304, 32, (2, 2, 2))],
    ids=["rgb24", "complex64", "rgba32"],
)
def test_non_scalar_voxels_are_invalid(tmp_path: Path, dtype_code: int, bitpix: int, shape) -> None:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_qform(np.eye(4), code=1)
    header["datatype"], header["bitpix"] = dtype_code, bitpix
    raw = header.binaryblock + b"\0" * 4 + b"\0" * (bitpix // 8 * 8)
    error, _ = refused(tmp_path, raw)  # were returned as volumes of structured / complex voxels
    assert error.code == "NIFTI_INVALID"


def test_empty_dimension_is_invalid(tmp_path: Path) -> None:
    header = nib.Nifti1Header()
    header.set_qform(np.eye(4), code=1)
    header["dim"] = [3, 0, 4, 4, 1, 1, 1, 1]
    error, _ = refused(tmp_path, header.binaryblock + b"\0" * 4)  # was returned as a (0, 4, 4) volume
    assert error.code == "NIFTI_INVALID"


def test_real_sized_volume_is_still_read(tmp_path: Path) -> None:
    header = nib.Nifti1Header()
    data = np.arange(64 * 64 * 40, dtype=np.int16).reshape(64, 64, 40)
    image = nib.Nifti1Image(data, np.diag([0.7, 0.7, 2.5, 1]), header)
    image.header.set_qform(image.affine, code=1)
    for name in ("a.nii", "a.nii.gz"):
        nib.save(image, tmp_path / name)
        assert np.array_equal(np.asanyarray(validate_nifti(tmp_path / name).dataobj), data)


@pytest.mark.parametrize("gz", [False, True], ids=["nii", "nii.gz"])
def test_extension_claiming_gigabytes_is_refused_before_nibabel_reads_it(tmp_path: Path, gz: bool) -> None:
    """Found by the fuzzing: a 78-byte .nii.gz whose extension size field said 363 MB made nibabel allocate
    363 MB (its reader trusts the field, up to 2 GiB); an extension is now at most 64 MiB, size checked first."""
    header = nib.Nifti1Header()
    header.set_data_shape((2, 2, 2))
    header.set_qform(np.eye(4), code=1)
    header["vox_offset"] = 368
    raw = header.binaryblock + b"\1\0\0\0" + np.array([2**31 - 1, 0], "<i4").tobytes() + b"\0" * 16
    error, peak = refused(tmp_path, gzip.compress(raw) if gz else raw, ".nii.gz" if gz else ".nii")
    assert error.code == "NIFTI_TOO_LARGE" and "extension" in str(error)
    assert peak < 2**20


def test_extension_of_a_real_size_is_kept(tmp_path: Path) -> None:
    image = nib.Nifti1Image(np.ones((3, 3, 3), np.int16), np.eye(4))
    image.header.set_qform(np.eye(4), code=1)
    image.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"a comment of some length"))
    nib.save(image, tmp_path / "e.nii.gz")
    assert len(validate_nifti(tmp_path / "e.nii.gz").header.extensions) == 1


def test_label_checks_open_hostile_labels_with_the_same_guard(tmp_path: Path) -> None:
    """check_labelled_cases read labels with nib.load: a label claiming 32767^3 voxels gave MemoryError."""
    (tmp_path / "label.nii").write_bytes(claiming((32767, 32767, 32767)))
    (tmp_path / "image.nii").write_bytes(claiming((32767, 32767, 32767)))
    entry = {"image": str(tmp_path / "image.nii"), "label": str(tmp_path / "label.nii")}
    with pytest.raises(NiftiError) as e:
        check_labelled_cases([entry], 2, split="training")
    assert e.value.code == "NIFTI_TOO_LARGE"
