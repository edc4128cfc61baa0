"""medpipe convert: NIfTI validation and copy, every DICOM series written or reported with its code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from medpipe.atomic import file_sha256
from medpipe.cli import cli


@pytest.fixture(scope="module")
def case(tiny_dataset: Path) -> tuple[Path, Path]:
    """(DICOM series folder, NIfTI image) of one phantom case."""
    entry = json.loads(tiny_dataset.read_text())["training"][0]
    root = tiny_dataset.parent / "data"
    return root / entry["dicom"], root / entry["image"]


def _nifti(path: Path, data: np.ndarray, *, qform: int = 1) -> Path:
    """A NIfTI with qform = sform (code ``qform``); code 0 writes no orientation at all (affine None)."""
    image = nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0]) if qform else None)
    if qform:
        image.header.set_qform(image.affine, code=qform)
        image.header.set_sform(image.affine, code=qform)
    nib.save(image, path)
    return path


@pytest.mark.parametrize(
    ("data", "qform", "code"),
    [
        (np.zeros((8, 8), np.int16), 1, "NIFTI_NOT_3D"),
        (np.zeros((8, 8, 4), np.int16), 0, "NIFTI_NO_ORIENTATION"),
        (np.full((8, 8, 4), np.nan, np.float32), 1, "NIFTI_NONFINITE"),
    ],
)
def test_convert_refuses_unusable_nifti_with_a_code(tmp_path, data, qform, code):
    src = _nifti(tmp_path / "in.nii.gz", data, qform=qform)
    result = CliRunner().invoke(cli, ["convert", str(src), "-o", str(tmp_path / "out")])
    assert result.exit_code == 3, result.output
    assert code in result.output
    report = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert report["items"][0]["status"] == code


def test_convert_nifti_passthrough_keeps_voxels_and_affine(tmp_path):
    data = np.arange(8 * 6 * 4, dtype=np.int16).reshape(8, 6, 4)
    src = _nifti(tmp_path / "ct.nii", data)
    result = CliRunner().invoke(cli, ["convert", str(src), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    (path,) = (tmp_path / "out").glob("*.nii.gz")
    assert path.name == f"nii-{file_sha256(src)[:10]}.nii.gz"  # named by content, never by file name
    out = nib.load(path)
    np.testing.assert_array_equal(np.asanyarray(out.dataobj), data)
    np.testing.assert_allclose(out.affine, nib.load(src).affine)


def test_truncated_nifti_is_unreadable(tmp_path):
    src = _nifti(tmp_path / "ct.nii", np.ones((16, 16, 16), np.int16))
    src.write_bytes(src.read_bytes()[:1000])
    result = CliRunner().invoke(cli, ["convert", str(src), "-o", str(tmp_path / "out")])
    assert result.exit_code == 3 and "NIFTI_UNREADABLE" in result.output


def test_convert_partial_success_exits_4_and_reports_every_series(case, tmp_path):
    dicom_dir, nifti = case
    shutil.copytree(dicom_dir, tmp_path / "in" / "good")
    other = json.loads((dicom_dir.parents[1].parent / "manifest.json").read_text())["validation"][0]["dicom"]
    shutil.copytree(dicom_dir.parents[1] / other, tmp_path / "in" / "gap")
    files = sorted((tmp_path / "in" / "gap").glob("*.dcm"))
    files[3].unlink()
    result = CliRunner().invoke(cli, ["convert", str(tmp_path / "in"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 4, result.output
    items = json.loads((tmp_path / "out" / "conversion.json").read_text())["items"]
    assert sorted(i["status"] for i in items) == ["DICOM_MISSING_SLICES", "ok"]
    good = next(i for i in items if i["status"] == "ok")
    out = nib.load(tmp_path / "out" / good["output"])
    np.testing.assert_array_equal(np.asanyarray(out.dataobj), np.asanyarray(nib.load(nifti).dataobj))
    sidecar = json.loads((tmp_path / "out" / good["output"].replace(".nii.gz", ".json")).read_text())
    assert sidecar["Modality"] == "CT" and sidecar["SeriesId"] == good["source"]
