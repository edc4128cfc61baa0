"""infer --classifier: the crop around a lesion samples the volume at the right world positions."""

from __future__ import annotations

import numpy as np

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
