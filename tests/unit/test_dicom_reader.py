"""The DICOM reader inside MONAI pipelines, and NIfTI validation in `medpipe convert`.

The phantom dataset holds each case twice, as NIfTI and as a DICOM series written independently from
the same array, so DICOM -> MetaTensor must give the NIfTI's voxels and affine exactly.
"""

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
from medpipe.dicom.reader import DicomSeriesReader
from medpipe.dicom.volume import load_dicom
from medpipe.errors import DicomError, find_medpipe_error


@pytest.fixture(scope="module")
def case(tiny_dataset: Path) -> tuple[Path, Path]:
    """(DICOM series folder, NIfTI image) of one phantom case."""
    entry = json.loads(tiny_dataset.read_text())["training"][0]
    root = tiny_dataset.parent / "data"
    return root / entry["dicom"], root / entry["image"]


def _config_loader(reader: dict) -> object:
    from monai.bundle import ConfigParser

    parser = ConfigParser(
        {
            "pre": {
                "_target_": "Compose",
                "transforms": [
                    {"_target_": "LoadImaged", "keys": "image", "reader": reader, "image_only": True},
                    {"_target_": "EnsureChannelFirstd", "keys": "image"},
                    {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                ],
            }
        }
    )
    return parser.get_parsed_content("pre")


def test_bundle_config_reader_matches_the_nifti_of_the_same_volume(case):
    dicom_dir, nifti = case
    pre = _config_loader({"_target_": "medpipe.dicom.reader.DicomSeriesReader"})
    from_dicom = pre({"image": str(dicom_dir)})["image"]
    from_nifti = _config_loader({"_target_": "NibabelReader"})({"image": str(nifti)})["image"]
    assert from_dicom.shape == from_nifti.shape
    np.testing.assert_array_equal(from_dicom.numpy(), from_nifti.numpy())
    np.testing.assert_allclose(from_dicom.affine.numpy(), from_nifti.affine.numpy(), atol=1e-3)
    assert from_dicom.meta["space"] == "RAS"


def test_metatensor_keeps_int16_hu_and_the_series_id(case):
    dicom_dir, nifti = case
    volume = load_dicom(dicom_dir)
    assert volume.array.dtype == np.int16
    image = volume.to_metatensor()
    np.testing.assert_array_equal(image.numpy(), np.asanyarray(nib.load(nifti).dataobj))
    np.testing.assert_allclose(image.affine.numpy(), nib.load(nifti).affine, atol=1e-3)
    assert image.meta["series_id"] == volume.stack_id


def test_nifti_passes_through_to_the_next_reader(case):
    _, nifti = case
    from monai.transforms import LoadImage

    image = LoadImage(reader=DicomSeriesReader(), image_only=True)(str(nifti))
    assert tuple(image.shape) == nib.load(nifti).shape


def test_refused_series_is_not_loaded_by_a_fallback_reader(case, tmp_path):
    """MONAI's LoadImage tries its other readers when one fails; a refused series must stay refused."""
    dicom_dir, _ = case
    broken = tmp_path / "gap"
    shutil.copytree(dicom_dir, broken)
    files = sorted(broken.glob("*.dcm"))
    files[len(files) // 2].unlink()
    pre = _config_loader({"_target_": "medpipe.dicom.reader.DicomSeriesReader"})
    with pytest.raises(Exception) as info:
        pre({"image": str(broken)})
    coded = find_medpipe_error(info.value)
    assert coded is not None and coded.code == "DICOM_MISSING_SLICES"

    repaired = _config_loader({"_target_": "medpipe.dicom.reader.DicomSeriesReader", "resample_gaps": True})
    image = repaired({"image": str(broken)})["image"]
    assert image.shape[-1] == len(files)  # the missing slice is interpolated back


def test_series_id_selects_one_series_of_a_folder(case, tmp_path):
    dicom_dir, _ = case
    shutil.copytree(dicom_dir, tmp_path / "a")
    other = json.loads((case[0].parents[1].parent / "manifest.json").read_text())["validation"][0]["dicom"]
    shutil.copytree(case[0].parents[1] / other, tmp_path / "b")
    with pytest.raises(DicomError) as info:
        load_dicom(tmp_path)
    assert info.value.code == "DICOM_MULTIPLE_SERIES"
    wanted = load_dicom(tmp_path / "a")
    chosen = load_dicom(f"{tmp_path}#{wanted.stack_id}")
    np.testing.assert_array_equal(chosen.array, wanted.array)
    with pytest.raises(DicomError) as info:
        load_dicom(f"{tmp_path}#0000000000")
    assert info.value.code == "DICOM_SERIES_NOT_FOUND"


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
