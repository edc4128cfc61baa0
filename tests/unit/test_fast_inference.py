"""The fast CPU prediction path: separable inversion, argmax, windows outside the lungs, label histogram."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer
from monai.transforms import AsDiscreted

from medpipe.bundle import inversion
from medpipe.inferers import AutocastInferer, LungWindowInferer
from medpipe.lungs import LungField, RestrictToLungsd, lung_field_of
from medpipe.operating_point import labels_present
from tests.unit.test_lungs import chest

WINDOW = (-1000.0, 400.0)


def _mappings(rng: np.random.Generator, src_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(pred_affine, affine_ras) as a bundle's preprocessing makes them: the input's oblique direction,
    then axes permuted and flipped (Orientation), rescaled (Spacing) and shifted (crop), so that the
    output grid reaches past ``pred`` on some sides."""
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    affine_ras = np.eye(4)
    affine_ras[:3, :3] = q @ np.diag(rng.uniform(0.5, 3.0, 3))
    affine_ras[:3, 3] = rng.normal(size=3) * 50
    mapping = np.eye(4)  # output index -> pred index
    mapping[:3, :3] = 0
    for a, r in enumerate(rng.permutation(3)):
        m = rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 1.2)
        mapping[r, a] = m
        mapping[r, 3] = rng.uniform(-3, 3) + (src_shape[r] - 1 if m < 0 else 0)
    return affine_ras @ np.linalg.inv(mapping), affine_ras


@pytest.mark.parametrize("seed", range(4))
def test_separable_inversion_equals_grid_sample_for_every_axis_order_and_flip(seed: int) -> None:
    rng = np.random.default_rng(seed)
    src = torch.softmax(torch.as_tensor(rng.normal(size=(3, 17, 11, 9)), dtype=torch.float32) * 3, 0)
    pred_affine, affine_ras = _mappings(rng, src.shape[1:])
    mapping = torch.as_tensor(np.linalg.inv(pred_affine) @ affine_ras)
    axes = inversion.separable_axes(mapping.numpy(), src.shape[1:])
    assert axes is not None and sorted(axes) == [0, 1, 2]
    nx, ny, nz = 23, 19, 13
    a = inversion._slab_separable(src, mapping, axes, ((0, nx), (0, ny), (0, nz)))
    b = inversion._slab_grid_sample(src, mapping, nx, ny, 0, nz)
    assert a.shape == b.shape == (3, nx, ny, nz)
    assert (b.abs() > 0).any() and (b == 0).any()  # the grid reaches inside and outside pred
    assert torch.allclose(a, b, atol=2e-6), float((a - b).abs().max())
    after = [AsDiscreted(keys="pred", argmax=True)]
    scores = np.zeros((nx, ny, nz), np.uint8)
    fast = inversion.invert_in_slabs(src, pred_affine, affine_ras, (nx, ny, nz), after, 600, scores)
    inversion_slow = inversion.separable_axes
    try:
        inversion.separable_axes = lambda *args: None
        ref_scores = np.zeros_like(scores)
        ref = inversion.invert_in_slabs(src, pred_affine, affine_ras, (nx, ny, nz), after, 600, ref_scores)
    finally:
        inversion.separable_axes = inversion_slow
    assert (fast != ref).mean() < 0.002 and np.abs(fast.astype(int) - ref).max() <= 2
    assert np.abs(scores.astype(int) - ref_scores).max() <= 1


def test_rotations_and_one_voxel_axes_take_the_grid_path() -> None:
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]]
    assert inversion.separable_axes(rot, (5, 5, 5)) is None
    assert inversion.separable_axes(np.eye(4), (5, 1, 5)) is None
    assert inversion.separable_axes(np.diag([-2.0, 0.5, 3.0, 1.0])[[0, 2, 1, 3]], (5, 5, 5)) == [0, 2, 1]


def test_argmax_labels_is_torch_argmax_with_its_ties() -> None:
    probs = torch.as_tensor(
        np.random.default_rng(0).integers(0, 3, size=(4, 30, 20, 10)), dtype=torch.float32
    )
    assert np.array_equal(inversion.argmax_labels(probs), probs.argmax(0).numpy().astype(np.uint8))
    assert inversion.is_plain_argmax([AsDiscreted(keys="pred", argmax=True)])
    assert not inversion.is_plain_argmax([AsDiscreted(keys="pred", threshold=0.5)])
    assert not inversion.is_plain_argmax([AsDiscreted(keys="pred", argmax=True), AsDiscreted(keys="pred")])


def test_labels_present_is_np_unique_without_zero() -> None:
    mask = np.zeros((40, 30, 20), np.uint8)
    mask[3, 4, 5], mask[10, 10, 10] = 7, 2
    assert labels_present(mask) == [2, 7]
    assert labels_present(mask.astype(np.int16)) == [2, 7]
    assert labels_present(np.zeros((3, 3), bool)) == []


def _chest_input() -> MetaTensor:
    """The chest phantom as a bundle's preprocessing gives it: [0, 1] from the HU window, 1.5x1.5x2.5 mm,
    padded with tissue on one side so that many windows hold no lung."""
    ct, _ = chest()
    ct = np.concatenate([ct, np.full((80, *ct.shape[1:]), 40.0, np.float32)], axis=0)
    scaled = np.clip((ct - WINDOW[0]) / (WINDOW[1] - WINDOW[0]), 0, 1).astype(np.float32)
    return MetaTensor(
        torch.as_tensor(scaled)[None],
        affine=torch.diag(torch.tensor([1.5, 1.5, 2.5, 1.0], dtype=torch.float64)),
    )


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 2, 3, padding=1)
    ).eval()


@pytest.mark.parametrize("roi", [(32, 32, 16), (64, 128, 48)])
def test_lung_windows_give_the_plain_sliding_window_inside_the_lung_field(roi: tuple[int, int, int]) -> None:
    image = _chest_input()
    net = _net()
    plain = SlidingWindowInferer(roi, 4, 0.25, "gaussian")
    lung = LungWindowInferer(roi, 4, 0.25, "gaussian", hu_window=WINDOW)
    with torch.no_grad():
        a, b = plain(image[None], net), lung(image[None], net)
    field = torch.as_tensor(lung_field_of(image, WINDOW, LungField()))
    assert field.any() and not field.all()
    assert lung.computed > 0 and (
        lung.skipped > 0 or roi[1] > image.shape[2]
    )  # the big window pads: one window
    assert torch.allclose(a[0][:, field], b[0][:, field], atol=1e-6)
    # after the restriction every voxel agrees: outside the field both are background
    restrict = RestrictToLungsd(keys="pred", hu_window=WINDOW)
    pa = restrict({"image": image, "pred": torch.softmax(a[0], 0)})["pred"]
    pb = restrict({"image": image, "pred": torch.softmax(b[0], 0)})["pred"]
    assert torch.allclose(pa, pb, atol=1e-6)


def test_lung_windows_skip_everything_without_lungs_and_autocast_wraps_them() -> None:
    tissue = MetaTensor(
        torch.full((1, 1, 64, 64, 32), 0.7), affine=torch.diag(torch.tensor([1.5, 1.5, 2.5, 1.0]))
    )
    lung = LungWindowInferer((32, 32, 16), 4, 0.25, hu_window=WINDOW)
    with torch.no_grad():
        out = AutocastInferer(lung, enabled=False)(tissue, _net())
    assert out.shape == (1, 2, 64, 64, 32) and lung.computed == 0 and lung.skipped > 0
    assert LungWindowInferer((32, 32, 16), skip=False).with_coord is False
    with pytest.raises(ValueError, match="buffer_steps"):
        LungWindowInferer((32, 32, 16), buffer_steps=2)


def test_lung_field_is_computed_once_per_image_and_again_for_another() -> None:
    image = _chest_input()
    first = lung_field_of(image, WINDOW, LungField())
    assert lung_field_of(image.clone(), WINDOW, LungField()) is first  # same voxels: the kept field
    other = image.clone()
    other[0, :60] = 0.75  # tissue where the left lung was
    changed = lung_field_of(other, WINDOW, LungField())
    assert changed is not first and not np.array_equal(changed, first)
    assert np.array_equal(changed, LungField().mask(WINDOW[0] + other[0].numpy() * 1400.0, (1.5, 1.5, 2.5)))
    assert lung_field_of(image, WINDOW, LungField(closing_mm=0.0)) is not first  # other parameters


@pytest.mark.parametrize("seed", range(3))
def test_sampling_only_where_foreground_is_possible_changes_nothing(seed: int) -> None:
    rng = np.random.default_rng(10 + seed)
    fg = np.zeros((2, 19, 15, 12), np.float32)
    fg[0, 3:6, 4:9, 2:5] = rng.uniform(0, 1, (3, 5, 3))  # two blobs of class 1 and 2, zero elsewhere
    fg[1, 12:17, 2:4, 7:11] = rng.uniform(0, 1, (5, 2, 4))
    fg[0, 10, 10, 10] = 0.5 / 255  # exactly half a score step: active
    fg /= np.maximum(fg.sum(0, keepdims=True), 1)
    src = torch.as_tensor(np.concatenate([1 - fg.sum(0, keepdims=True), fg]))  # a softmax of 3 classes
    pred_affine, affine_ras = _mappings(rng, src.shape[1:])
    after = [AsDiscreted(keys="pred", argmax=True)]
    out = {}
    for sparse in (False, True):
        scores = np.zeros((25, 21, 17), np.uint8)
        mask = inversion.invert_in_slabs(
            src, pred_affine, affine_ras, scores.shape, after, 900, scores, sparse
        )
        out[sparse] = mask, scores
    assert out[True][0].any() and (out[True][0] == 0).mean() > 0.5
    assert np.array_equal(out[True][0], out[False][0]) and np.array_equal(out[True][1], out[False][1])
