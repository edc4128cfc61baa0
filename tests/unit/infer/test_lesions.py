"""Lesion measurements, the classifier crop and input selection of ``medpipe infer`` (no model needed)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from medpipe.infer.lesions import longest_diameter, measure_lesions


def _oblique_affine(spacing: tuple[float, float, float], origin: tuple[float, float, float]) -> np.ndarray:
    """LPS affine with a 30-degree rotation about z and a flipped y axis (nothing axis-aligned)."""
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def test_sphere_volume_diameter_centroid_on_an_oblique_anisotropic_grid() -> None:
    spacing = (0.7, 0.9, 2.0)
    affine = _oblique_affine(spacing, (-50.0, 20.0, -300.0))
    shape = (80, 70, 30)
    centre_idx = np.array([40.3, 33.6, 14.2])
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    dist_mm = np.linalg.norm((idx - centre_idx) * spacing, axis=-1)
    radius = 12.0
    mask = (dist_mm <= radius).astype(np.uint8)
    image = np.where(mask > 0, 40, -800).astype(np.int16)

    (lesion,) = measure_lesions(mask, affine, image, {1: "nodule"})
    assert lesion.label_name == "nodule" and lesion.voxels == int(mask.sum())
    assert lesion.volume_mm3 == pytest.approx(mask.sum() * np.prod(spacing))
    assert lesion.volume_mm3 == pytest.approx(4 / 3 * np.pi * radius**3, rel=0.05)
    # surface voxel centres lie within one voxel of the sphere: the chord is 2r minus at most a voxel
    assert 2 * radius - 2.5 <= lesion.diameter_mm <= 2 * radius
    expected = affine[:3, :3] @ np.argwhere(mask).mean(0) + affine[:3, 3]
    np.testing.assert_allclose(lesion.centroid_lps, expected, atol=1e-6)
    np.testing.assert_allclose(lesion.centroid_lps, affine[:3, :3] @ centre_idx + affine[:3, 3], atol=0.3)
    assert lesion.mean_intensity == 40


def test_components_are_26_connected_per_class_and_sorted_largest_first() -> None:
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[2:4, 2:4, 2:4] = 1  # 8 voxels
    mask[4, 4, 4] = 1  # touches the cube only at a corner: same lesion
    mask[10:15, 10:15, 10:15] = 1  # 125 voxels, a second lesion
    mask[17:19, 2, 2] = 2  # another class
    lesions = measure_lesions(mask, np.eye(4))
    assert [(les.label, les.lesion, les.voxels) for les in lesions] == [(1, 1, 125), (1, 2, 9), (2, 1, 2)]
    assert lesions[1].diameter_mm == pytest.approx(2 * np.sqrt(3))  # voxel centres (2,2,2) to (4,4,4)
    assert lesions[2].label_name == "class2" and lesions[2].diameter_mm == pytest.approx(1.0)
    assert np.isnan(lesions[0].mean_intensity)  # no image given
    assert measure_lesions(np.zeros((4, 4, 4), np.uint8), np.eye(4)) == []


@pytest.mark.parametrize("n", [1, 2, 30, 150])
def test_longest_diameter_matches_brute_force(n: int) -> None:
    rng = np.random.default_rng(n)
    pts = rng.normal(size=(n, 3)) * [10, 3, 7]
    brute = max((np.linalg.norm(a - b) for a, b in itertools.combinations(pts, 2)), default=0.0)
    assert longest_diameter(pts) == pytest.approx(brute)
    flat = np.c_[pts[:, :2], np.zeros(n)]  # coplanar: no 3-D hull, still exact
    brute_flat = max((np.linalg.norm(a - b) for a, b in itertools.combinations(flat, 2)), default=0.0)
    assert longest_diameter(flat) == pytest.approx(brute_flat)




