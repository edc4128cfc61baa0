"""A segmentation back on its input grid, with bounded memory: what ``Invertd`` computes, slab by slab.

A segmentation bundle's inference post-processing maps the prediction from the preprocessed grid
(reoriented, resampled, cropped) back to the input grid with MONAI's ``Invertd``, which builds the
whole-volume sampling grid at once (16 bytes per voxel: 1.6 GB for a 512x512x400 CT). When the
post-processing is voxel-wise around one ``Invertd`` (``Activationsd`` / ``Invertd`` /
``AsDiscreted``, :class:`~medpipe.lungs.RestrictToLungsd` before the inversion and
:class:`~medpipe.operating_point.KeepLesionsd` right after it, as every shipped bundle's is),
:func:`invert_in_slabs` computes the same geometry
one slab of slices at a time: each input voxel centre is mapped through the preprocessed image's
affine and the probabilities are sampled there trilinearly, then the bundle's own transforms after
``Invertd`` (argmax...) run on the slab. Any other post-processing runs as the bundle wrote it.

:func:`float32_resampling` makes ``Spacingd`` steps that resample in float64 (MONAI's default)
resample in float32 while a prediction runs: MONAI converts the volume *and* its sampling grid to
that dtype, about 2 GB for a 512x512x400 CT in float64, and float32 interpolation of images stored
as 16-bit integers changes values by less than 1e-4 HU.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Activationsd, AsDiscreted, Invertd, Spacingd

from medpipe.lungs import RestrictToLungsd
from medpipe.operating_point import KeepLesionsd, lesion_scores

#: voxel-wise steps that may come before ``Invertd`` besides MONAI's (they read the preprocessed image)
VOXELWISE = (RestrictToLungsd,)

#: voxels of the input grid resampled at once by :func:`invert_in_slabs` (about 40 bytes each)
SLAB_VOXELS = 4_000_000


def lean_split(post: Sequence[Any]) -> tuple[list[Any], list[Any]] | None:
    """(before, after) the one ``Invertd`` of a voxel-wise post-processing, or ``None`` for any other.

    A :class:`~medpipe.operating_point.KeepLesionsd` right after ``Invertd`` is left out of ``after``: the
    callers (``medpipe infer``, ``evaluate``) apply the same operating point to the lesions they measure."""
    inverts = [i for i, t in enumerate(post) if isinstance(t, Invertd)]
    keep = [i for i, t in enumerate(post) if isinstance(t, KeepLesionsd)]
    if keep and (len(inverts) != 1 or keep != [inverts[0] + 1]):
        return None
    post = [t for t in post if not isinstance(t, KeepLesionsd)]
    if len(inverts) != 1 or not all(isinstance(t, (Activationsd, AsDiscreted, Invertd, *VOXELWISE)) for t in post):
        return None
    if any(isinstance(t, VOXELWISE) for t in post[inverts[0] :]):
        return None  # these need the preprocessed image: only before the inversion
    inv = post[inverts[0]]
    if list(inv.keys) != ["pred"] or list(inv.orig_keys) != ["image"]:
        return None
    return list(post[: inverts[0]]), list(post[inverts[0] + 1 :])


@contextmanager
def float32_resampling(transforms: Sequence[Any]) -> Iterator[None]:
    """``Spacingd`` steps of ``transforms`` resample in float32 inside the block (restored after)."""
    saved = []
    for t in transforms:
        if isinstance(t, Spacingd):
            saved.append((t, t.dtype))
            t.dtype = tuple(np.float32 if d in (np.float64, torch.float64, "float64") else d for d in t.dtype)
    try:
        yield
    finally:
        for t, dtype in saved:
            t.dtype = dtype


def to_mask(pred: Any) -> np.ndarray:
    """A (C, ...) prediction as a uint8 label array: argmax when the post-processing left probabilities."""
    if pred.shape[0] != 1:
        pred = pred.argmax(dim=0, keepdim=True)
    return np.asarray(pred[0].detach().cpu().numpy()).astype(np.uint8)


def invert_in_slabs(
    pred: Any,
    pred_affine: Any,
    affine_ras: np.ndarray,
    shape: tuple[int, ...],
    after: Sequence[Any],
    slab_voxels: int = SLAB_VOXELS,
    scores: np.ndarray | None = None,
) -> np.ndarray:
    """Resample ``pred`` (C, X', Y', Z', on ``pred_affine``) onto the input grid, slab by slab along k.

    Equivalent to the bundle's ``Invertd`` (which undoes Orientation, Spacing and crops through the
    same affines); outside ``pred`` every channel is 0 (as the inverse of a crop pads), so the class
    is background. Returns the uint8 mask [i, j, k] of ``shape``. ``scores`` (uint8, ``shape``), when
    given, receives the highest foreground probability of each voxel in 1/255 steps: what a lesion's
    score is made of (``pred`` holds probabilities here: the post-processing's ``Activationsd`` ran).
    """
    mapping = torch.as_tensor(np.linalg.inv(np.asarray(pred_affine, dtype=np.float64)) @ affine_ras)
    src = torch.as_tensor(pred).float()[None]  # (1, C, X', Y', Z')
    size = torch.tensor(src.shape[2:], dtype=torch.float64)
    nx, ny, nz = shape
    mask = np.zeros(shape, dtype=np.uint8)
    step = max(1, slab_voxels // (nx * ny))
    ii, jj = torch.meshgrid(
        torch.arange(nx, dtype=torch.float64), torch.arange(ny, dtype=torch.float64), indexing="ij"
    )
    for k0 in range(0, nz, step):
        k1 = min(nz, k0 + step)
        kk = torch.arange(k0, k1, dtype=torch.float64)
        # voxel (i, j, k) -> index in pred; grid_sample wants (k', j', i') normalised to [-1, 1]
        idx = [
            mapping[r, 0] * ii[..., None] + mapping[r, 1] * jj[..., None] + mapping[r, 2] * kk + mapping[r, 3]
            for r in range(3)
        ]
        grid = torch.stack(
            [(2 * idx[r] / (size[r] - 1).clamp(min=1) - 1).float() for r in (2, 1, 0)], dim=-1
        )  # (X, Y, K, 3): output laid out as [i, j, k]
        del idx
        slab = torch.nn.functional.grid_sample(
            src, grid[None], mode="bilinear", padding_mode="zeros", align_corners=True
        )[0]  # (C, X, Y, K)
        del grid
        if scores is not None and slab.shape[0] > 1:
            scores[:, :, k0:k1] = lesion_scores(slab)
        data = {"pred": MetaTensor(slab)}
        for transform in after:  # the bundle's own (AsDiscreted argmax...), voxel-wise
            data = transform(data)
        mask[:, :, k0:k1] = to_mask(data["pred"])
    return mask
