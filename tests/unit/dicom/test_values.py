"""Damaged header numbers are refused with their code before use: never defaulted, never a traceback.

One series written by :func:`medpipe.dicom.writer.write_ct_series`, then one element of every file (or of
one file) set to a damaged text with a raw element (pydicom would refuse to write some of them). For each:
the scan gives the code, ``load_dicom`` raises it, ``medpipe convert`` records it and writes no NIfTI.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from medpipe.cli import cli
from medpipe.dicom.geometry import AssemblyOptions
from medpipe.dicom.scan import scan
from medpipe.dicom.volume import load_dicom
from medpipe.dicom.writer import write_ct_series
from medpipe.errors import EXIT_INPUT_ERROR, DicomError

IMAGE = np.random.default_rng(3).integers(-1000, 1500, (12, 10, 4)).astype(np.int16)
TAGS = {
    "RescaleSlope": 0x00281053, "RescaleIntercept": 0x00281052, "PixelSpacing": 0x00280030,
    "ImagePositionPatient": 0x00200032, "ImageOrientationPatient": 0x00200037, "SliceThickness": 0x00180050,
    "SpacingBetweenSlices": 0x00180088,
}  # fmt: skip


def series(folder: Path, image: np.ndarray = IMAGE) -> list[Path]:
    return write_ct_series(image, folder, spacing=(0.8, 0.9, 2.5), origin_lps=(-10, -20, 30), series_seed="v")


def set_raw(path: Path, keyword: str, text: str) -> None:
    ds = pydicom.dcmread(path)
    raw = text.encode()
    raw += b" " * (len(raw) % 2)
    tag = Tag(TAGS[keyword])
    ds._dict[tag] = RawDataElement(tag, "DS", len(raw), raw, 0, False, True)
    ds.save_as(path)


def assert_refused(folder: Path, code: str, tmp_path: Path, options: AssemblyOptions | None = None) -> str:
    """The code from the scan, from load_dicom and from `medpipe convert` (no NIfTI written)."""
    options = options or AssemblyOptions()
    (stack,) = scan(str(folder), options).stacks
    assert stack.error is not None and stack.error.code == code, stack.error
    with pytest.raises(DicomError) as info:
        load_dicom(folder, options=options)
    assert info.value.code == code
    out = tmp_path / "out"
    args = ["convert", str(folder), "-o", str(out)] + (
        ["--min-slices", "1"] if options.min_slices == 1 else []
    )
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == EXIT_INPUT_ERROR and "Traceback" not in result.output, result.output
    assert sorted(p.name for p in out.iterdir()) == ["conversion.json"]  # no NIfTI, no sidecar
    items = json.loads((out / "conversion.json").read_text())["items"]
    assert [i["status"] for i in items] == [code]
    ls = CliRunner().invoke(cli, ["dicom", "ls", str(folder)] + args[4:])
    assert code in ls.output and "Traceback" not in ls.output, ls.output
    return stack.error.message


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns on the damaged values read
@pytest.mark.parametrize(
    ("keyword", "text", "code"),
    [
        ("RescaleSlope", "nan", "DICOM_INVALID_RESCALE"),  # the case: was silently taken as 1
        ("RescaleSlope", "inf", "DICOM_INVALID_RESCALE"),
        ("RescaleSlope", "0", "DICOM_INVALID_RESCALE"),  # was also silently taken as 1
        ("RescaleSlope", "abc", "DICOM_INVALID_RESCALE"),
        ("RescaleIntercept", "nan", "DICOM_INVALID_RESCALE"),  # was silently taken as 0
        ("RescaleIntercept", "-inf", "DICOM_INVALID_RESCALE"),
        ("PixelSpacing", "nan\\0.9", "DICOM_INVALID_SPACING"),
        ("PixelSpacing", "0.8\\inf", "DICOM_INVALID_SPACING"),
        ("PixelSpacing", "0\\0.9", "DICOM_INVALID_SPACING"),
        ("PixelSpacing", "-0.8\\0.9", "DICOM_INVALID_SPACING"),
        ("PixelSpacing", "0.8", "DICOM_INVALID_SPACING"),  # one number where two are required
        ("ImagePositionPatient", "-10\\nan\\30", "DICOM_INVALID_POSITION"),
        ("ImagePositionPatient", "-10\\-20", "DICOM_INVALID_POSITION"),
        ("ImageOrientationPatient", "1\\0\\0\\0\\nan\\0", "DICOM_INVALID_ORIENTATION"),
        ("ImageOrientationPatient", "2\\0\\0\\0\\1\\0", "DICOM_INVALID_ORIENTATION"),  # not unit
        (
            "ImageOrientationPatient",
            "1\\0\\0\\0.2\\0.98\\0",
            "DICOM_INVALID_ORIENTATION",
        ),  # 11.5 deg off orthogonal
    ],
)
def test_damaged_value_in_every_file_is_refused_with_its_code(tmp_path, keyword, text, code) -> None:
    files = series(tmp_path / "in")
    for p in files:
        set_raw(p, keyword, text)
    message = assert_refused(tmp_path / "in", code, tmp_path)
    if code != "DICOM_INVALID_ORIENTATION" or "nan" in text:
        assert keyword in message and f"{len(files)} of {len(files)} images" in message


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_nan_slope_in_one_slice_refuses_the_series(tmp_path) -> None:
    files = series(tmp_path / "in")
    set_raw(files[2], "RescaleSlope", "nan")
    message = assert_refused(tmp_path / "in", "DICOM_INVALID_RESCALE", tmp_path)
    assert "RescaleSlope nan in 1 of 4 images (instance 3)" in message


def test_absent_rescale_means_identity(tmp_path) -> None:
    """Absent is not damaged: slope 1 and intercept 0, the stored values returned as they are."""
    files = series(tmp_path / "in")
    for p in files:
        ds = pydicom.dcmread(p)
        del ds.RescaleSlope, ds.RescaleIntercept
        ds.save_as(p)
    stored = np.stack([pydicom.dcmread(p).pixel_array for p in files], axis=-1).transpose(1, 0, 2)
    np.testing.assert_array_equal(load_dicom(tmp_path / "in").array, stored)


def test_valid_non_integral_rescale_is_applied(tmp_path) -> None:
    files = series(tmp_path / "in")
    for p in files:
        set_raw(p, "RescaleSlope", "0.5")
        set_raw(p, "RescaleIntercept", "-3.25")
    stored = np.stack([pydicom.dcmread(p).pixel_array for p in files], axis=-1).transpose(1, 0, 2)
    vol = load_dicom(tmp_path / "in").array
    assert vol.dtype == np.float32
    np.testing.assert_array_equal(vol, stored.astype(np.float32) * np.float32(0.5) + np.float32(-3.25))


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("keyword", ["SliceThickness", "SpacingBetweenSlices"])
@pytest.mark.parametrize("text", ["nan", "0", "-2.5", "inf"])
def test_single_slice_spacing_is_checked_where_it_is_used(tmp_path, keyword, text) -> None:
    """A one-slice volume takes its z spacing from these, so a damaged one is refused there -- and ignored
    in a multi-slice series, whose spacing comes from the positions (the sidecar stays valid JSON)."""
    one = series(tmp_path / "one", IMAGE[:, :, :1])
    set_raw(one[0], keyword, text)
    message = assert_refused(
        tmp_path / "one", "DICOM_INVALID_SPACING", tmp_path, AssemblyOptions(min_slices=1)
    )
    assert keyword in message

    files = series(tmp_path / "many")
    for p in files:
        set_raw(p, keyword, text)
    np.testing.assert_array_equal(load_dicom(tmp_path / "many").array, IMAGE)
    out = tmp_path / "many_out"
    result = CliRunner().invoke(cli, ["convert", str(tmp_path / "many"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    (sidecar,) = [p for p in out.glob("*.json") if p.name != "conversion.json"]
    json.loads(sidecar.read_text(), parse_constant=lambda c: pytest.fail(f"sidecar holds {c}"))
