"""Pixels per transfer syntax: medpipe's volume equals pydicom's ``pixel_array * slope + intercept``.

Each case re-encodes one series into one transfer syntax with pydicom (Big Endian by hand, the compressed
ones with ``Dataset.compress`` and the installed encoders, JPEG Baseline with Pillow) and compares every
voxel with what pydicom decodes from the written files. Two sources: a synthetic signed CT series (always)
and three slices of the real CPTAC chest CT (uint16, 12 bits stored, intercept -1024; skipped without
``../shared/data``). The native little-endian syntaxes must take the fast in-place path (pydicom's decoder
is never called for them); every other syntax goes through ``pixel_array``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom import uid
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder

from medpipe.cli import cli
from medpipe.dicom import volume as volume_module
from medpipe.dicom.scan import scan
from medpipe.dicom.volume import load_dicom
from medpipe.dicom.writer import write_ct_series
from medpipe.errors import EXIT_INPUT_ERROR, DicomError
from tests.conftest import SHARED_DATA

CPTAC = SHARED_DATA / "lung_ct_dicom_cptac_lscc" / "series"
DICOM2NIFTI = SHARED_DATA / "dicom2nifti_testdata" / "generic"
HEVC = uid.UID("1.2.840.10008.1.2.4.107")  # HEVC/H.265 Main Profile / Level 5.1
FAST_PATH = {uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian}


def _can_encode(syntax: uid.UID) -> bool:
    try:
        return get_encoder(syntax).is_available and get_decoder(syntax).is_available
    except NotImplementedError:
        return False


def _needs_codec(syntax: uid.UID):
    return pytest.param(
        syntax, id=syntax.name,
        marks=pytest.mark.skipif(not _can_encode(syntax), reason=f"no pydicom encoder/decoder for {syntax.name} here"),
    )  # fmt: skip


SYNTAXES = [
    pytest.param(uid.ImplicitVRLittleEndian, id="ImplicitVRLittleEndian"),
    pytest.param(uid.ExplicitVRLittleEndian, id="ExplicitVRLittleEndian"),
    pytest.param(uid.ExplicitVRBigEndian, id="ExplicitVRBigEndian"),
    pytest.param(uid.DeflatedExplicitVRLittleEndian, id="DeflatedExplicitVRLittleEndian"),
    _needs_codec(uid.RLELossless),
    _needs_codec(uid.JPEGLSLossless),
    _needs_codec(uid.JPEGLSNearLossless),
    _needs_codec(uid.JPEG2000Lossless),
    _needs_codec(uid.JPEG2000),
]


def _synthetic(folder: Path) -> list[Path]:
    """A signed CT series: -3000 HU outside the FOV forces PixelRepresentation 1."""
    image = np.random.default_rng(4).integers(-1000, 2000, (72, 64, 4)).astype(np.int16)
    image[:3] = -3000
    return write_ct_series(image, folder, spacing=(0.7, 0.8, 2.0), origin_lps=(5, -6, 7), series_seed="ts")


def _cptac(folder: Path) -> list[Path]:
    if not CPTAC.is_dir():
        pytest.skip(f"real CT not available ({CPTAC} absent: ../shared/data is not checked out)")
    files = sorted(
        CPTAC.glob("*.dcm"),
        key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]),
    )
    return files[40:43]  # three adjacent slices


def reencode(ds: pydicom.Dataset, syntax: uid.UID, path: Path) -> None:
    """Write ``ds`` in ``syntax`` (its pixels re-encoded)."""
    if syntax == uid.ExplicitVRBigEndian:
        arr = ds.pixel_array
        ds.PixelData = arr.astype(arr.dtype.newbyteorder(">")).tobytes()
        ds.file_meta.TransferSyntaxUID = syntax
        dcmwrite(path, ds, little_endian=False, implicit_vr=False, force_encoding=True)
    elif syntax in FAST_PATH:
        ds.file_meta.TransferSyntaxUID = syntax
        dcmwrite(path, ds, implicit_vr=syntax.is_implicit_VR, little_endian=True, force_encoding=True)
    elif syntax == uid.DeflatedExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(path, enforce_file_format=True)
    else:
        kwargs = {"j2k_cr": [10]} if syntax == uid.JPEG2000 else {}
        ds.compress(syntax, **kwargs)
        ds.save_as(path, enforce_file_format=True)


def expected_hu(files: list[Path]) -> np.ndarray:
    """pydicom's reading of the written files, sorted along the slice normal, as [x, y, z] float64."""
    slices = []
    for p in files:
        ds = pydicom.dcmread(p)
        slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
        hu = ds.pixel_array.astype(np.float64) * slope + intercept
        ori = np.asarray(ds.ImageOrientationPatient, float)
        slices.append((float(np.dot(ds.ImagePositionPatient, np.cross(ori[:3], ori[3:]))), hu))
    return np.stack([hu for _, hu in sorted(slices, key=lambda t: t[0])], axis=-1).transpose(1, 0, 2)


@pytest.fixture
def decode_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = volume_module._decode_file

    def spy(path: str) -> np.ndarray:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(volume_module, "_decode_file", spy)
    return calls


@pytest.mark.parametrize("source", [_synthetic, _cptac], ids=["synthetic-int16", "cptac-uint16"])
@pytest.mark.parametrize("syntax", SYNTAXES)
def test_volume_equals_pixel_array_times_slope_plus_intercept(tmp_path, source, syntax, decode_calls) -> None:
    originals = source(tmp_path / "src")
    out = tmp_path / "ts"
    out.mkdir()
    files = []
    for k, p in enumerate(originals):
        reencode(pydicom.dcmread(p), syntax, out / f"{k}.dcm")
        files.append(out / f"{k}.dcm")
    assert str(pydicom.dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID) == syntax
    vol = load_dicom(out)
    expected = expected_hu(files)
    assert vol.array.dtype.isnative
    np.testing.assert_array_equal(vol.array.astype(np.float64), expected)
    assert -1025 <= expected.min() and expected.max() <= 4096 or source is _synthetic  # HU, not swapped bytes
    # the fast path reads exactly the native little-endian syntaxes; the others go through pixel_array
    assert (decode_calls == []) == (syntax in FAST_PATH), decode_calls


def test_big_endian_hu_are_the_little_endian_hu(tmp_path) -> None:
    """The issue's case: a Big Endian CT read as -32768..32527 instead of -1024..3071 HU."""
    originals = _cptac(tmp_path)
    for name, syntax in (("le", uid.ExplicitVRLittleEndian), ("be", uid.ExplicitVRBigEndian)):
        (tmp_path / name).mkdir()
        for k, p in enumerate(originals):
            reencode(pydicom.dcmread(p), syntax, tmp_path / name / f"{k}.dcm")
    little, big = load_dicom(tmp_path / "le"), load_dicom(tmp_path / "be")
    np.testing.assert_array_equal(big.array, little.array)
    assert big.array.dtype == np.int16 and big.array.min() >= -1024 and big.array.max() <= 3071


def test_jpeg_baseline_8bit(tmp_path) -> None:
    """JPEG Baseline (no pydicom encoder): frames made with Pillow, decoded by pydicom's plugins."""
    pil = pytest.importorskip("PIL.Image")
    if not get_decoder(uid.JPEGBaseline8Bit).is_available:
        pytest.skip("no JPEG Baseline decoder installed")
    image = np.random.default_rng(2).integers(0, 255, (32, 24, 3)).astype(np.int16)
    files = write_ct_series(
        image, tmp_path / "src", spacing=(1, 1, 2), origin_lps=(0, 0, 0), series_seed="jpg"
    )
    (tmp_path / "jpg").mkdir()
    out = []
    for k, p in enumerate(files):
        ds = pydicom.dcmread(p)
        stored = ds.pixel_array.astype(np.uint8)
        buf = io.BytesIO()
        pil.fromarray(stored).save(buf, format="JPEG", quality=90)
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.file_meta.TransferSyntaxUID = uid.JPEGBaseline8Bit
        ds.save_as(tmp_path / "jpg" / f"{k}.dcm", enforce_file_format=True)
        out.append(tmp_path / "jpg" / f"{k}.dcm")
    np.testing.assert_array_equal(load_dicom(tmp_path / "jpg").array.astype(np.float64), expected_hu(out))


@pytest.mark.parametrize(
    "folder", ["compressed_jpeg", "compressed_jpegls", "compressed_rle", "compressed_j2k"]
)
def test_real_compressed_mr_series(folder: str) -> None:
    """dicom2nifti's real MR in JPEG Lossless SV1, JPEG-LS, RLE and JPEG 2000: voxels equal pixel_array."""
    path = DICOM2NIFTI / folder / "001"
    if not path.is_dir():
        pytest.skip(f"{path} absent (../shared/data is not checked out)")
    np.testing.assert_array_equal(
        load_dicom(path).array.astype(np.float64), expected_hu(sorted(path.glob("*.dcm")))
    )


def test_transfer_syntax_without_decoder_is_refused_by_name(tmp_path) -> None:
    """HEVC video has no pydicom decoder: DICOM_UNSUPPORTED_TRANSFER_SYNTAX naming it, in ls and convert,
    and no NIfTI is written."""
    files = _synthetic(tmp_path / "in")
    for p in files:
        ds = pydicom.dcmread(p)
        ds.PixelData = encapsulate([ds.PixelData])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = HEVC
        ds.save_as(p, enforce_file_format=True)
    (stack,) = scan(str(tmp_path / "in")).stacks
    assert stack.error is not None and stack.error.code == "DICOM_UNSUPPORTED_TRANSFER_SYNTAX"
    assert "HEVC" in stack.error.message and HEVC in stack.error.message
    with pytest.raises(DicomError) as info:
        load_dicom(tmp_path / "in")
    assert info.value.code == "DICOM_UNSUPPORTED_TRANSFER_SYNTAX"
    result = CliRunner().invoke(cli, ["convert", str(tmp_path / "in"), "-o", str(tmp_path / "out")])
    assert result.exit_code == EXIT_INPUT_ERROR and "Traceback" not in result.output, result.output
    assert "DICOM_UNSUPPORTED_TRANSFER_SYNTAX" in result.output
    assert not list((tmp_path / "out").glob("*.nii.gz"))
    items = json.loads((tmp_path / "out" / "conversion.json").read_text())["items"]
    assert [i["status"] for i in items] == ["DICOM_UNSUPPORTED_TRANSFER_SYNTAX"]


def test_one_image_in_an_undecodable_syntax_refuses_the_series(tmp_path) -> None:
    """Every syntax of a stack is checked at scan time, not only its first image's."""
    files = _synthetic(tmp_path / "in")
    ds = pydicom.dcmread(files[-1])
    ds.PixelData = encapsulate([ds.PixelData])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = uid.MPEG2MPML
    ds.save_as(files[-1], enforce_file_format=True)
    (stack,) = scan(str(tmp_path / "in")).stacks
    assert stack.error is not None and stack.error.code == "DICOM_UNSUPPORTED_TRANSFER_SYNTAX"
    assert "MPEG2" in stack.error.message
