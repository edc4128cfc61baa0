"""CT series writer and NIfTI helper: voxels and geometry agree across independent readers."""

from __future__ import annotations

import shutil
import subprocess

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import UID, ExplicitVRLittleEndian

from medpipe.data.nifti import write_nifti
from medpipe.data.synthetic.phantom import PhantomSpec, generate_phantom
from medpipe.dicom.writer import CT_IMAGE_STORAGE, write_ct_series
from medpipe.errors import DicomError

# Non-square in-plane grid and different row/column spacing, so a swapped axis cannot pass unnoticed.
SPEC = PhantomSpec(shape=(96, 80, 24), spacing=(2.0, 2.25, 5.0))
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def case():
    return generate_phantom(4, SPEC)


@pytest.fixture(scope="module")
def written(case, tmp_path_factory):
    root = tmp_path_factory.mktemp("series")
    paths = write_ct_series(case.image, root / "dicom", spacing=case.spacing, origin_lps=case.origin_lps,
                            series_seed="case-4", study_seed="study-4")
    nifti = write_nifti(root / "image.nii.gz", case.image, case.affine_ras(), dtype=np.int16)
    return root, paths, nifti


def _write(case, out, **kwargs):
    args = {"spacing": case.spacing, "origin_lps": case.origin_lps, "series_seed": "case-4", **kwargs}
    return write_ct_series(case.image, out, **args)


def test_dicom_and_nifti_agree_on_voxels_and_geometry(case, written):
    root, paths, nifti = written
    assert [p.name for p in paths] == [f"IM{k + 1:06d}.dcm" for k in range(SPEC.shape[2])]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(root / "dicom")))
    series = reader.Execute()
    dicom_ijk = sitk.GetArrayFromImage(series).transpose(2, 1, 0)  # [k, j, i] -> [i, j, k]
    nii = nib.load(nifti)
    nifti_ijk = np.asarray(nii.dataobj)
    assert np.array_equal(dicom_ijk, case.image) and np.array_equal(nifti_ijk, case.image)
    assert nifti_ijk.dtype == np.int16

    affine_lps = np.eye(4)
    affine_lps[:3, :3] = np.array(series.GetDirection()).reshape(3, 3) @ np.diag(series.GetSpacing())
    affine_lps[:3, 3] = series.GetOrigin()
    np.testing.assert_allclose(affine_lps, case.affine_lps(), atol=1e-4)
    np.testing.assert_allclose(LPS_TO_RAS @ affine_lps, nii.affine, atol=1e-4)
    header = nii.header
    assert int(header["qform_code"]) == int(header["sform_code"]) == 1
    assert header.get_xyzt_units()[0] == "mm"
    np.testing.assert_allclose(nii.get_qform(), nii.get_sform(), atol=1e-4)


def test_pydicom_reads_back_ct_attributes(case, written):
    _, paths, _ = written
    sx, sy, sz = case.spacing
    datasets = [pydicom.dcmread(p) for p in paths]
    for k, ds in enumerate(datasets):
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == CT_IMAGE_STORAGE
        assert ds.Modality == "CT" and ds.InstanceNumber == k + 1
        assert (ds.Rows, ds.Columns) == (SPEC.shape[1], SPEC.shape[0])
        assert [float(v) for v in ds.PixelSpacing] == [sy, sx]
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1 and ds.RescaleType == "HU"
        # signed storage exactly when the volume holds padding below -1024 HU (the phantoms' scan circle)
        assert ds.PixelRepresentation == int(case.image.min() < -1024) and ds.BitsStored == 16
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        assert np.array_equal(hu, case.image[:, :, k].T)
        assert ds.StudyDate == "20260101"
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    np.testing.assert_allclose(positions[:, :2], np.tile(case.origin_lps[:2], (len(datasets), 1)), atol=1e-4)
    np.testing.assert_allclose(np.diff(positions[:, 2]), sz, atol=1e-4)
    np.testing.assert_allclose(positions[0], case.origin_lps, atol=1e-4)
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        values = {getattr(ds, key) for ds in datasets}
        assert len(values) == 1 and UID(values.pop()).is_valid
    sop = [ds.SOPInstanceUID for ds in datasets]
    assert len(set(sop)) == len(sop) and all(UID(u).is_valid for u in sop)


def test_writing_twice_gives_byte_identical_files(case, written, tmp_path):
    root, paths, nifti = written
    again = _write(case, tmp_path / "dicom", study_seed="study-4")
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]
    nifti_again = write_nifti(tmp_path / "image.nii.gz", case.image, case.affine_ras(), dtype=np.int16)
    assert nifti_again.read_bytes() == nifti.read_bytes()


def test_uids_follow_seeds_and_content(case, written, tmp_path):
    _, paths, _ = written
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    other_seed = pydicom.dcmread(_write(case, tmp_path / "a", series_seed="case-5", study_seed="study-4")[0])
    assert other_seed.StudyInstanceUID == first.StudyInstanceUID  # same study seed: same study
    assert other_seed.SeriesInstanceUID != first.SeriesInstanceUID
    shifted = _write(case, tmp_path / "b", study_seed="study-4", origin_lps=(0.0, 0.0, 0.0))
    assert pydicom.dcmread(shifted[0]).SOPInstanceUID != first.SOPInstanceUID  # other content, new UIDs


@pytest.mark.skipif(shutil.which("dciodvfy") is None,
                    reason="dciodvfy not installed (Debian/Ubuntu: apt-get install dicom3tools)")
def test_dciodvfy_reports_no_errors(written):
    _, paths, _ = written
    for path in (paths[0], paths[len(paths) // 2]):
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
        lines = (result.stdout + result.stderr).splitlines()
        assert not [line for line in lines if line.startswith("Error")], lines


@pytest.mark.parametrize(
    ("image", "kwargs"),
    [
        (np.zeros((8, 8), np.int16), {}),
        (np.full((8, 8, 2), -32000, np.int16), {}),
        (np.stack([np.full((8, 8), -2048), np.full((8, 8), 32000)], axis=2).astype(np.int32), {}),
        (np.zeros((8, 8, 2), np.int16), {"padding_hu": -2048}),
        (np.full((8, 8, 2), 40000, np.int32), {}),
        (np.full((8, 8, 2), 0.5), {}),
        (np.zeros((8, 8, 2), bool), {}),
        (np.zeros((8, 8, 2), np.int16), {"spacing": (1.0, 0.0, 1.0)}),
        (np.zeros((8, 8, 2), np.int16), {"origin_lps": (0.0, float("nan"), 0.0)}),
        (np.zeros((8, 8, 2), np.int16), {"series_seed": ""}),
    ],
)
def test_bad_input_raises_with_code(image, kwargs, tmp_path):
    args = {"spacing": (1.0, 1.0, 1.0), "origin_lps": (0.0, 0.0, 0.0), "series_seed": "s", **kwargs}
    with pytest.raises(DicomError) as info:
        write_ct_series(image, tmp_path / "out", **args)
    assert info.value.code == "DICOM_WRITE_INVALID_INPUT"
    assert not (tmp_path / "out").exists()  # nothing written for bad input


def test_write_nifti_rejects_bad_arrays(tmp_path):
    with pytest.raises(ValueError, match="3-D"):
        write_nifti(tmp_path / "x.nii.gz", np.zeros((4, 4)), np.eye(4), dtype=np.uint8)
    with pytest.raises(ValueError, match="4x4"):
        write_nifti(tmp_path / "x.nii.gz", np.zeros((4, 4, 4)), np.eye(3), dtype=np.uint8)
