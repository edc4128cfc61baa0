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
