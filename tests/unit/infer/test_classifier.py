"""infer --classifier: the crop around a lesion samples the volume at the right world positions."""

from __future__ import annotations

import numpy as np

from tests.conftest import REPO
from tests.unit.infer.test_lesions import _oblique_affine


def test_classifier_crop_samples_the_world_position_along_ras_axes() -> None:
    """A volume whose value is its voxel's RAS x coordinate: the crop must reproduce x on its grid."""
    from medpipe.infer.classifier import crop_around

    affine_lps = _oblique_affine((0.8, 0.8, 2.5), (10.0, -40.0, 100.0))
    affine_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps
    shape = (64, 64, 24)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), 0).reshape(3, -1)
    world_ras = affine_ras[:3, :3] @ idx + affine_ras[:3, 3:4]
    volume = world_ras[0].reshape(shape).astype(np.float32)  # value = RAS x (mm)

    spacing, size = np.array([1.0, 2.0, 3.0]), (8, 6, 4)
    centre = affine_ras[:3, :3] @ np.array([32.0, 30.0, 12.0]) + affine_ras[:3, 3]
    crop = crop_around(volume, affine_ras, centre, spacing, size, pad=-1024.0)
    assert tuple(crop.shape) == (1, 8, 6, 4)
    expected_x = centre[0] + (np.arange(8) - 3.5) * 1.0
    np.testing.assert_allclose(crop[0, :, 0, 0].numpy(), expected_x, atol=1e-3)  # linear: exact
    np.testing.assert_allclose(np.asarray(crop.affine)[:3, 3], centre - np.array([3.5, 5.0, 4.5]), atol=1e-9)
    far = crop_around(volume, affine_ras, centre + 1000.0, spacing, size, pad=-1024.0)  # outside the volume: padding
    assert (far.numpy() == -1024.0).all()


def test_crop_context_keeps_only_the_region_and_pads_the_rest() -> None:
    from medpipe.infer.classifier import crop_around

    volume = np.full((20, 20, 10), 100.0, dtype=np.float32)
    affine = np.eye(4)
    region = (slice(8, 12), slice(8, 12), slice(4, 6))
    crop = crop_around(volume, affine, np.array([9.5, 9.5, 4.5]), np.ones(3), (8, 8, 4), -1024.0, region)
    values = crop[0].numpy()
    assert values[2:6, 2:6, 1:3].min() == 100.0  # inside the region: the volume
    assert values[0, 0, 0] == -1024.0 and values[7, 7, 3] == -1024.0  # outside: padding
    assert np.array_equal(crop_around(volume, affine, np.array([9.5, 9.5, 4.5]), np.ones(3), (8, 8, 4), -1.0)[0],
                          np.full((8, 8, 4), 100.0))  # fmt: skip


def test_context_region_rules_margin_minimum_and_clipping() -> None:
    from medpipe.infer.classifier import context_region, slice_axis

    policy = {"margin_fraction": 0.15, "inplane_min": 44}
    # a 40-voxel in-plane extent grows 6 each side; a 6-slice extent gets no margin (floor 0.9)
    assert context_region((100, 100, 10), (139, 139, 15), (512, 512, 40), policy) == (
        slice(94, 146), slice(94, 146), slice(10, 16))  # fmt: skip
    # a small lesion is widened, centred, to 44 voxels in-plane, never along the slice axis
    assert context_region((200, 200, 5), (209, 209, 9), (512, 512, 40), policy) == (
        slice(183, 227), slice(183, 227), slice(5, 10))  # fmt: skip
    # at the border, clipped to the volume
    assert context_region((0, 0, 0), (3, 3, 1), (30, 512, 2), policy)[0] == slice(0, 24)
    # a sagittal series: the slice axis is the one along superior
    sagittal = np.array([[0, 0, 1.5, 0], [0.7, 0, 0, 0], [0, 0.7, 0, 0], [0, 0, 0, 1.0]])
    assert slice_axis(sagittal) == 1 and slice_axis(np.eye(4)) == 2


def test_context_region_reproduces_the_lidc_vois_crop_boxes() -> None:
    """The context policy of lung_nodule_malignancy_ct is the geometry of its training crops: from the
    full-CT mask of each LIDC-IDRI-0003 nodule it gives the box the VOI crop was cut from."""
    import nibabel as nib
    import pytest

    from medpipe.infer.classifier import context_region
    from tests.conftest import SHARED_DATA

    vois = SHARED_DATA / "lidc_nodule_vois"
    if not (vois / "full_ct_masks").is_dir():
        pytest.skip(f"real LIDC VOIs not available at {vois}")
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "lung_nodule_malignancy_ct" / "configs" / "common.json"))
    policy = parser.get("crop_context")
    for n in (2, 3, 4):
        full = nib.load(vois / "full_ct_masks" / f"LIDC-IDRI-0003_R_{n}.nii.gz")
        idx = np.argwhere(np.asarray(full.dataobj) > 0)
        box = context_region(tuple(idx.min(0)), tuple(idx.max(0)), full.shape, policy)
        crop = nib.load(vois / "image" / f"LIDC-IDRI-0003_R_{n}.nii.gz")
        origin = (np.linalg.inv(full.affine) @ crop.affine[:, 3])[:3]
        assert [s.start for s in box] == [round(v) for v in origin]
        assert all(abs((s.stop - s.start) - w) <= 1 for s, w in zip(box, crop.shape, strict=True))
