"""Regridding of tilted / unevenly spaced slice stacks: geometry, exactness and dcm2niix's slice rules.

Synthetic stacks sample a known function at every input voxel's world position, so the output can be checked
against that function at every output voxel's world position (through the returned affine). Linear
interpolation reproduces a linear function exactly, so any geometry error shows up as a value error.
"""

from __future__ import annotations

import numpy as np
import pytest

from medpipe.dicom.resample import resample_to_regular_grid
from medpipe.errors import DicomError

ROWS, COLS = 20, 24
PIXEL_SPACING = (0.8, 0.6)  # between rows, between columns: not square, so swapped axes cannot pass


def _orientation() -> tuple[np.ndarray, np.ndarray]:
    """An oblique orientation (rotated about two axes), so no world axis lines up with a voxel axis."""
    a, b = np.deg2rad(12.0), np.deg2rad(-7.0)
    rot_x = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rot_y = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rot = rot_y @ rot_x
    return rot[:, 0], rot[:, 1]


def _linear(points: np.ndarray) -> np.ndarray:
    """A linear function of LPS position (points in the last axis), different along every world axis."""
    return points @ np.array([0.5, -1.25, 2.0]) + 3.0


def _stack(distances, drift_per_mm=(0.0, 0.0), func=_linear):
    """Slices at ``distances`` along the normal whose origins drift in-plane by ``drift_per_mm`` (along the
    row and column directions, mm per mm of normal distance), with ``func`` sampled at every voxel."""
    row, col = _orientation()
    normal = np.cross(row, col)
    d = np.asarray(distances, dtype=float)
    origin0 = np.array([-20.0, 35.0, -60.0])
    positions = origin0 + d[:, None] * (normal + drift_per_mm[0] * row + drift_per_mm[1] * col)
    y, x = np.mgrid[0:ROWS, 0:COLS]
    inplane = x[..., None] * PIXEL_SPACING[1] * row + y[..., None] * PIXEL_SPACING[0] * col
    world = positions[:, None, None, :] + inplane[None]
    return func(world).astype(np.float32), positions, row, col


def _world(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    idx = np.moveaxis(np.indices(shape, dtype=float), 0, -1)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def _inside_both_neighbours(world, positions, row, col):
    """True where the point's projections (along the normal) onto its two neighbouring slices fall within
    those slices' pixel centres, i.e. where linear interpolation needs no value from outside the slices."""
    normal = np.cross(row, col)
    d = (positions - positions[0]) @ normal
    dp = (world - positions[0]) @ normal
    upper = np.clip(np.searchsorted(d, dp - 1e-9), 1, len(d) - 1)
    ok = (dp > -1e-6) & (dp < d[-1] + 1e-6)
    for k in (upper - 1, upper):
        rel = world - positions[k]
        x, y = rel @ row / PIXEL_SPACING[1], rel @ col / PIXEL_SPACING[0]
        ok &= (x > -1e-6) & (x < COLS - 1 + 1e-6) & (y > -1e-6) & (y < ROWS - 1 + 1e-6)
    return ok


def test_regular_untilted_stack_comes_back_unchanged():
    rng = np.random.default_rng(0)
    _, positions, row, col = _stack(np.arange(6) * 2.5)
    positions = positions + rng.normal(0, 1e-6, positions.shape)  # DICOM decimal-string noise
    slices = rng.normal(0, 300, (6, ROWS, COLS)).astype(np.float32)
    expected = slices.transpose(2, 1, 0)
    for correct_tilt in (False, True):
        for equidistant in (False, True):
            volume, affine = resample_to_regular_grid(
                slices, positions, row, col, PIXEL_SPACING, correct_tilt=correct_tilt, equidistant=equidistant
            )
            assert volume.dtype == np.float32 and volume.shape == (COLS, ROWS, 6)
            assert np.array_equal(volume, expected)
            assert not np.shares_memory(volume, slices)
            normal = np.cross(row, col)
            np.testing.assert_allclose(affine[:3, 0], PIXEL_SPACING[1] * row)
            np.testing.assert_allclose(affine[:3, 1], PIXEL_SPACING[0] * col)
            np.testing.assert_allclose(affine[:3, 2], 2.5 * normal, atol=1e-5)
            np.testing.assert_allclose(affine[:3, 3], positions[0])
            np.testing.assert_array_equal(affine[3], [0, 0, 0, 1])


@pytest.mark.parametrize("drift", [(0.0, -0.33), (0.21, 0.45)])
def test_tilted_uneven_stack_is_recovered_at_the_right_world_positions(drift):
    distances = [0.0, 1.5, 3.0, 4.5, 5.2, 8.7, 12.2, 15.7]  # 1.5 mm gaps, one of 0.7, then 3.5 mm
    slices, positions, row, col = _stack(distances, drift)
    volume, affine = resample_to_regular_grid(
        slices, positions, row, col, PIXEL_SPACING, correct_tilt=True, equidistant=True, fill_value=np.nan
    )
    world = _world(affine, volume.shape)
    inside = _inside_both_neighbours(world, positions, row, col)
    assert inside.mean() > 0.4  # small slices, large drift: much of the grown grid is beyond one slice
    np.testing.assert_allclose(volume[inside], _linear(world[inside]), rtol=1e-5, atol=2e-3)
    # Far from every slice (more than a pixel beyond both neighbours' edges) only the fill value remains.
    normal = np.cross(row, col)
    d = (positions - positions[0]) @ normal
    upper = np.clip(np.searchsorted(d, (world - positions[0]) @ normal - 1e-9), 1, len(d) - 1)
    outside = np.ones(volume.shape, bool)
    for k in (upper - 1, upper):
        rel = world - positions[k]
        x, y = rel @ row / PIXEL_SPACING[1], rel @ col / PIXEL_SPACING[0]
        outside &= (x < -1) | (x > COLS) | (y < -1) | (y > ROWS)
    assert outside.any() and np.isnan(volume[outside]).all()


def test_tilt_correction_alone_keeps_every_slice_and_every_row():
    distances = np.arange(7) * 2.0
    slices, positions, row, col = _stack(distances, (0.0, -0.35))
    volume, affine = resample_to_regular_grid(
        slices, positions, row, col, PIXEL_SPACING, correct_tilt=True, equidistant=False, fill_value=np.nan
    )
    # Drift of the last slice: 12 mm * 0.35 / 0.8 mm = 5.25 rows, so the grid grows by ceil(5.25) = 6 rows.
    assert volume.shape == (COLS, ROWS + 6, 7)
    # Each shifted slice keeps as many samples as it had (dcm2niix: a source position up to a pixel before
    # row 0 takes row 0); the rest is fill.
    assert (np.isfinite(volume).sum(axis=(0, 1)) == ROWS * COLS).all()
    world = _world(affine, volume.shape)
    inside = _inside_both_neighbours(world, positions, row, col)
    np.testing.assert_allclose(volume[inside], _linear(world[inside]), rtol=1e-5, atol=2e-3)


def test_affine_axes_are_orthogonal_and_the_grid_covers_every_input_voxel():
    distances = [0.0, 1.0, 2.0, 3.0, 5.0, 6.0, 9.5]
    slices, positions, row, col = _stack(distances, (0.15, -0.5))
    volume, affine = resample_to_regular_grid(
        slices, positions, row, col, PIXEL_SPACING, correct_tilt=True, equidistant=True
    )
    axes = affine[:3, :3]
    gram = axes.T @ axes
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-9)
    np.testing.assert_allclose(axes[:, 0] / PIXEL_SPACING[1], row, atol=1e-9)
    np.testing.assert_allclose(axes[:, 1] / PIXEL_SPACING[0], col, atol=1e-9)
    np.testing.assert_allclose(axes[:, 2] / np.linalg.norm(axes[:, 2]), np.cross(row, col), atol=1e-9)
    # Every input voxel centre lies within the output grid's voxel centres (index space).
    y, x = np.mgrid[0:ROWS, 0:COLS]
    inplane = x[..., None] * PIXEL_SPACING[1] * row + y[..., None] * PIXEL_SPACING[0] * col
    centres = (positions[:, None, None, :] + inplane[None]).reshape(-1, 3)
    index = (centres - affine[:3, 3]) @ np.linalg.inv(axes).T
    assert (index > -1e-6).all() and (index < np.array(volume.shape) - 1 + 1e-6).all()
    # ...and the grid is no larger than needed: first and last slices, first and last rows are reached.
    assert np.isclose(index[:, 2].min(), 0, atol=1e-6) and np.isclose(index[:, 2].max(), volume.shape[2] - 1)
    assert index[:, 1].min() < 1 and index[:, 1].max() > volume.shape[1] - 2


def test_missing_slice_is_interpolated_linearly_and_the_others_are_kept():
    rng = np.random.default_rng(1)
    _, positions, row, col = _stack(np.arange(7) * 1.25)
    slices = rng.normal(0, 300, (7, ROWS, COLS)).astype(np.float32)
    keep = [0, 1, 2, 4, 5, 6]  # slice 3 missing
    volume, affine = resample_to_regular_grid(
        slices[keep], positions[keep], row, col, PIXEL_SPACING, correct_tilt=True, equidistant=True
    )
    assert volume.shape == (COLS, ROWS, 7)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, 2]), 1.25)
    for k in keep:
        assert np.array_equal(volume[:, :, k], slices[k].T)
    np.testing.assert_allclose(volume[:, :, 3], 0.5 * (slices[2] + slices[4]).T, rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize(
    ("distances", "count", "spacing"),
    [
        ([0, 1, 2, 4], 5, 1.0),  # missing slice: ceil(4 / 1) + 1
        ([0, 1, 2, 3.5], 5, 0.875),  # smallest gap stretched so the last slice is kept
        ([0, 1, 2, 4.6, 5.6], 7, 5.6 / 6),
        ([0, 0.1, 2, 4], 8, 4 / 7),  # ceil(4 / 0.1) + 1 = 41 > 2 n: capped at twice the input count
        ([0, 2, 2.5, 4.5], 8, 4.5 / 7),
    ],
)
def test_slice_count_and_spacing_follow_dcm2niix(distances, count, spacing):
    # Values observed with dcm2niix v1.0.20260724 on these slice positions (verbose "out k @ mm" lines).
    slices, positions, row, col = _stack(distances)
    volume, affine = resample_to_regular_grid(
        slices, positions, row, col, PIXEL_SPACING, correct_tilt=False, equidistant=True
    )
    assert volume.shape[2] == count
    np.testing.assert_allclose(np.linalg.norm(affine[:3, 2]), spacing, rtol=1e-9)
    np.testing.assert_allclose(volume, _linear(_world(affine, volume.shape)), rtol=1e-5, atol=2e-3)


def test_explicit_slice_spacing_is_kept_and_stays_within_the_stack():
    slices, positions, row, col = _stack([0.0, 2.0, 4.0, 7.0])
    volume, affine = resample_to_regular_grid(
        slices, positions, row, col, PIXEL_SPACING, correct_tilt=False, equidistant=True, slice_spacing=1.5
    )
    assert volume.shape[2] == 5  # 0, 1.5, 3, 4.5, 6 mm
    np.testing.assert_allclose(np.linalg.norm(affine[:3, 2]), 1.5)
    np.testing.assert_allclose(volume, _linear(_world(affine, volume.shape)), rtol=1e-5, atol=2e-3)


def test_uncorrected_tilted_stack_gets_a_sheared_affine_that_places_every_slice():
    slices, positions, row, col = _stack(np.arange(5) * 3.0, (0.0, 0.3))
    volume, affine = resample_to_regular_grid(
        slices, positions, row, col, PIXEL_SPACING, correct_tilt=False, equidistant=False
    )
    assert np.array_equal(volume, slices.transpose(2, 1, 0))
    for k in range(5):
        np.testing.assert_allclose(affine @ [0, 0, k, 1], [*positions[k], 1], atol=1e-9)


def test_padding_value_is_not_blended_into_the_image():
    slices, positions, row, col = _stack(np.arange(4) * 2.0, (0.0, -0.3))
    slices[:, :7, :] = -2000.0  # padding band at the top rows
    kwargs = dict(correct_tilt=True, equidistant=False, fill_value=-2000.0)
    blended, _ = resample_to_regular_grid(slices, positions, row, col, PIXEL_SPACING, **kwargs)
    nearest, _ = resample_to_regular_grid(
        slices, positions, row, col, PIXEL_SPACING, padding_value=-2000.0, **kwargs
    )
    data_min = slices[slices > -2000].min()
    assert (blended[blended > -2000] < data_min - 1).any()  # linear blend makes fake values next to padding
    assert not (nearest[nearest > -2000] < data_min - 1e-3).any()


def test_single_slice_and_invalid_input():
    slices, positions, row, col = _stack([0.0, 1.0, 2.0])
    volume, affine = resample_to_regular_grid(
        slices[:1], positions[:1], row, col, PIXEL_SPACING, correct_tilt=True, equidistant=True
    )
    assert np.array_equal(volume[:, :, 0], slices[0].T) and np.isclose(np.linalg.norm(affine[:3, 2]), 1.0)
    options = dict(correct_tilt=True, equidistant=True)
    with pytest.raises(DicomError, match="strictly increasing") as err:
        resample_to_regular_grid(slices[::-1], positions[::-1], row, col, PIXEL_SPACING, **options)
    assert err.value.code == "DICOM_RESAMPLE_INVALID_INPUT"
    with pytest.raises(DicomError, match="only used with equidistant"):
        resample_to_regular_grid(
            slices, positions, row, col, PIXEL_SPACING, correct_tilt=True, equidistant=False, slice_spacing=1
        )
    with pytest.raises(DicomError, match="orthogonal"):
        resample_to_regular_grid(slices, positions, row, row, PIXEL_SPACING, **options)
    with pytest.raises(DicomError, match="positions"):
        resample_to_regular_grid(slices, positions[:2], row, col, PIXEL_SPACING, **options)
