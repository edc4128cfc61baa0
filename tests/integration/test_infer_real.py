"""``medpipe infer`` on real DICOM: the Udacity hippocampus MR series with ``bundles/hippocampus_mri``
and the CPTAC-LSCC chest CT with ``bundles/lung_nodule_ct`` (skipped when ../shared/data is absent)."""

from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import REPO, SHARED_DATA

HIPPO_DICOM = SHARED_DATA / "udacity_hippocampus_dicom"
CPTAC = SHARED_DATA / "lung_ct_dicom_cptac_lscc" / "series"


def _check_series(out: Path, converted: Path, stack) -> np.ndarray:
    """Mask on convert's grid, SEG valid (dciodvfy) and equal to the mask; returns the mask."""
    from medpipe.infer.seg import read_seg_labelmap

    sid = stack.id
    mask_img = nib.load(out / sid / f"{sid}_seg.nii.gz")
    ref = nib.load(converted / f"{sid}.nii.gz")
    assert mask_img.shape == ref.shape
    np.testing.assert_allclose(mask_img.affine, ref.affine, atol=1e-5)
    mask = np.asarray(mask_img.dataobj)
    seg = out / sid / f"{sid}_seg.dcm"
    np.testing.assert_array_equal(read_seg_labelmap(seg, stack), mask)
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy:
        report = subprocess.run([dciodvfy, str(seg)], capture_output=True, text=True).stderr
        assert not [line for line in report.splitlines() if line.startswith("Error")], report
    return mask


def _run_hippocampus(source: Path, tmp_path: Path, n_series: int) -> None:
    from medpipe.convert import convert
    from medpipe.dicom.scan import scan
    from medpipe.infer.run import InferOptions, infer

    out = tmp_path / "out"
    summary = infer(REPO / "bundles" / "hippocampus_mri", source, out, InferOptions(progress=False), echo=lambda _: None)
    assert (summary["series"], summary["done"], summary["failed"]) == (n_series, n_series, 0)
    convert(source, tmp_path / "nii")
    with open(out / "lesions.csv", newline="") as fp:
        lesions = list(csv.DictReader(fp))
    for stack in scan(str(source)).stacks:
        mask = _check_series(out, tmp_path / "nii", stack)
        assert set(np.unique(mask)) <= {0, 1, 2}
        if len(stack.slices) >= 30:  # the three 1-mm hippocampus crops (MSD-like): both parts found
            assert {1, 2} <= set(np.unique(mask)), stack.id
            volume = sum(float(r["volume_mm3"]) for r in lesions if r["series"] == stack.id)
            assert 1000 < volume < 8000, volume  # one hippocampus: a few cm³ (3.3-3.9 measured)
    names = {r["label_name"] for r in lesions}
    assert names <= {"anterior", "posterior"} and {r["intensity_unit"] for r in lesions} == {""}


@pytest.mark.skipif(not HIPPO_DICOM.is_dir(), reason=f"{HIPPO_DICOM} absent (shared data not installed)")
def test_hippocampus_bundle_on_the_udacity_hippocampus_crops(tmp_path: Path) -> None:
    """The three HippoCrop series (the bundle's input domain), ~2 s each."""
    crops = tmp_path / "crops"
    for folder in sorted(HIPPO_DICOM.glob("Study*/*_HCropVolume")):
        shutil.copytree(folder, crops / folder.parent.name / folder.name)
    _run_hippocampus(crops, tmp_path, 3)


@pytest.mark.slow
@pytest.mark.skipif(not HIPPO_DICOM.is_dir(), reason=f"{HIPPO_DICOM} absent (shared data not installed)")
def test_hippocampus_bundle_on_the_whole_udacity_folder(tmp_path: Path) -> None:
    """All four series, with the oblique 280x320x22 full-brain T2 (~40 s: 1-mm resampling of a whole head)."""
    _run_hippocampus(HIPPO_DICOM, tmp_path, 4)


@pytest.mark.slow
@pytest.mark.skipif(not CPTAC.is_dir(), reason=f"{CPTAC} absent (shared data not installed)")
def test_lung_bundle_on_the_real_cptac_chest_ct(tmp_path: Path) -> None:
    from medpipe.convert import convert
    from medpipe.dicom.scan import scan
    from medpipe.infer.run import InferOptions, infer

    out = tmp_path / "out"
    summary = infer(REPO / "bundles" / "lung_nodule_ct", CPTAC, out, InferOptions(progress=False), echo=lambda _: None)
    assert (summary["done"], summary["failed"]) == (1, 0)
    convert(CPTAC, tmp_path / "nii")
    (stack,) = scan(str(CPTAC)).stacks
    mask = _check_series(out, tmp_path / "nii", stack)
    assert mask.shape == (512, 512, 99)
    assert summary["peak_rss_mb"] < 3072
