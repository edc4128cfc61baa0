"""Files without the 128-byte preamble and "DICM" prefix (archive exports, ACR-NEMA style) are read.

Two kinds: the preamble and prefix cut off (file meta kept), and no file meta at all, in each encoding
pydicom detects (Implicit VR LE, Explicit VR LE, Explicit VR BE). Each must give the same volume as the
intact files through the scan (``medpipe infer``'s discovery), ``load_dicom``, ``medpipe dicom ls`` and
``medpipe convert`` -- before, convert wrote the NIfTI and then died in a pydicom traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.filewriter import dcmwrite

from medpipe.cli import cli
from medpipe.dicom.headers import read_file
from medpipe.dicom.scan import scan
from medpipe.dicom.volume import load_dicom, load_stack
from medpipe.dicom.writer import write_ct_series
from medpipe.infer.sources import discover

IMAGE = np.random.default_rng(5).integers(-1000, 1500, (14, 10, 4)).astype(np.int16)
IMAGE[0] = -2500  # signed storage


def intact(folder: Path) -> list[Path]:
    return write_ct_series(IMAGE, folder, spacing=(0.8, 0.9, 2.5), origin_lps=(1, 2, 3), series_seed="np")


def strip_preamble(src: Path, dst: Path) -> None:
    data = src.read_bytes()
    assert data[128:132] == b"DICM"
    dst.write_bytes(data[132:])


def without_file_meta(implicit: bool, little: bool):
    def write(src: Path, dst: Path) -> None:
        ds = pydicom.dcmread(src)
        if not little:
            ds.PixelData = ds.pixel_array.astype(">i2").tobytes()
        del ds.file_meta
        ds.preamble = None
        dcmwrite(dst, ds, implicit_vr=implicit, little_endian=little)
        assert dst.read_bytes()[128:132] != b"DICM"

    return write


DAMAGES = {
    "preamble-cut": strip_preamble,
    "no-meta-implicit-le": without_file_meta(True, True),
    "no-meta-explicit-le": without_file_meta(False, True),
    "no-meta-explicit-be": without_file_meta(False, False),
}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", [".dcm", ""], ids=["dcm-suffix", "no-suffix"])
@pytest.mark.parametrize("damage", DAMAGES)
def test_file_without_preamble_reads_like_the_intact_one(tmp_path, damage, name) -> None:
    files = intact(tmp_path / "intact")
    folder = tmp_path / "in"
    folder.mkdir()
    for k, p in enumerate(files):
        pydicom.dcmread(p)  # readable as written
        DAMAGES[damage](p, folder / f"IM{k}{name}")
    with pytest.raises(pydicom.errors.InvalidDicomError):
        pydicom.dcmread(folder / f"IM0{name}")  # what crashed `medpipe convert` before
    (stack,) = scan(str(folder)).stacks
    assert stack.ok, stack.error
    np.testing.assert_array_equal(load_dicom(folder).array, IMAGE)
    (source,) = discover(folder).sources  # `medpipe infer`'s discovery
    assert source.kind == "dicom" and source.error is None
    np.testing.assert_array_equal(load_stack(source.stack).array, IMAGE)

    ls = CliRunner().invoke(cli, ["dicom", "ls", str(folder)])
    assert ls.exit_code == 0 and "Traceback" not in ls.output and " ok" in ls.output, ls.output
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["convert", str(folder), "-o", str(out)])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    (nifti,) = out.glob("*.nii.gz")
    np.testing.assert_array_equal(np.asanyarray(nib.load(nifti).dataobj), IMAGE)
    sidecar = json.loads(nifti.with_name(nifti.name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["Modality"] == "CT"


def test_non_dicom_name_is_not_forced_through_the_parser(tmp_path) -> None:
    """Only names that may be DICOM are read without a preamble; a .txt of the same bytes is skipped."""
    (p,) = write_ct_series(
        IMAGE[:, :, :1], tmp_path / "s", spacing=(1, 1, 1), origin_lps=(0, 0, 0), series_seed="t"
    )
    strip_preamble(p, tmp_path / "slice.txt")
    assert read_file(str(tmp_path / "slice.txt")).skipped == "not DICOM"
    strip_preamble(p, tmp_path / "slice.dcm")
    assert len(read_file(str(tmp_path / "slice.dcm")).slices) == 1
