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
    if len(inverts) != 1 or not all(
        isinstance(t, (Activationsd, AsDiscreted, Invertd, *VOXELWISE)) for t in post
    ):
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


def separable_axes(mapping: np.ndarray, src_shape: Sequence[int]) -> list[int] | None:
    """For each output axis, the one ``pred`` axis it runs along, when ``mapping`` (output index -> pred
    index) only permutes, flips, scales and shifts axes; ``None`` for a rotation or shear, or a ``pred``
    axis of one voxel (where ``grid_sample``'s normalisation is degenerate).

    Every bundle's preprocessing gives such a mapping: ``Orientationd`` permutes and flips, ``Spacingd``
    keeps the image's direction cosines and changes the spacing, crops shift; so the trilinear sampling of
    the inversion factors into three 1-D linear interpolations, one per axis."""
    m = np.asarray(mapping, dtype=np.float64)[:3, :3]
    scale = np.abs(m).max()
    if scale == 0 or min(int(n) for n in src_shape) < 2:
        return None
    big = np.abs(m) > 1e-9 * scale
    if not (big.sum(axis=0) == 1).all() or not (big.sum(axis=1) == 1).all():
        return None
    return [int(np.flatnonzero(big[:, a])[0]) for a in range(3)]


def _lerp(src: torch.Tensor, dim: int, coords: torch.Tensor) -> torch.Tensor:
    """``src`` sampled along ``dim`` at float ``coords`` (indices), linear, 0 outside (``grid_sample``'s
    ``padding_mode="zeros"`` with ``align_corners=True``)."""
    n = src.shape[dim]
    lo = torch.floor(coords)
    w_hi = (coords - lo).float()
    lo = lo.long()
    shape = [1] * src.dim()
    shape[dim] = -1
    out = None
    for index, weight in ((lo, 1 - w_hi), (lo + 1, w_hi)):
        inside = (index >= 0) & (index <= n - 1)
        term = src.index_select(dim, index.clamp(0, n - 1)) * (weight * inside).view(shape)
        out = term if out is None else out.add_(term)
    return out  # type: ignore[return-value]


def _slab_separable(
    src: torch.Tensor, mapping: torch.Tensor, axes: Sequence[int], box: Sequence[tuple[int, int]]
) -> torch.Tensor:
    """(C, i1 - i0, j1 - j0, k1 - k0): the trilinear samples of ``src`` (C, X', Y', Z') at the output voxels
    of ``box`` ((i0, i1), (j0, j1), (k0, k1)), one axis at a time (k first: it is the slab's and the shortest)."""
    moved = src.permute(0, 1 + axes[0], 1 + axes[1], 1 + axes[2])  # pred axes in the output's order
    out = moved
    for a in (2, 0, 1):
        r = axes[a]
        t = torch.arange(box[a][0], box[a][1], dtype=torch.float64)
        out = _lerp(out, 1 + a, mapping[r, a] * t + mapping[r, 3])
    return out


def _active_boxes(src: torch.Tensor, mapping: torch.Tensor, axes: Sequence[int], shape: Sequence[int]) -> Any:
    """``box(k0, k1)``: the (i, j) ranges of the output slab [:, :, k0:k1] outside which every sampled
    foreground probability is below half a score step (so the voxel is background with score 0).

    A trilinear sample mixes the 2x2x2 ``pred`` voxels around it; where all of them have foreground
    probabilities below ``t = 0.5 / 255`` so does the sample, its score rounds to 0, and with the
    probabilities of a softmax the background (at least ``1 - (C - 1) t`` of the weights) wins the argmax.
    ``None`` (no slab has any) when nothing is active."""
    active = (src[1:].amax(0) >= 0.5 / 255).numpy()
    active = np.transpose(active, axes)  # pred axes in the output's order
    if not active.any():
        return None
    along_k = [active.any(axis=1), active.any(axis=0)]  # (X', Z'), (Y', Z'): active rows per pred slice
    n_src = active.shape

    def out_range(a: int, lo: float, hi: float) -> tuple[int, int]:
        """Output indices along axis ``a`` whose pred coordinate lies within (lo - 1, hi + 1)."""
        m, c = float(mapping[axes[a], a]), float(mapping[axes[a], 3])
        ends = sorted(((lo - 1 - c) / m, (hi + 1 - c) / m))
        return max(0, int(np.floor(ends[0]))), min(int(shape[a]), int(np.ceil(ends[1])) + 1)

    def box(k0: int, k1: int) -> tuple[tuple[int, int], tuple[int, int]] | None:
        zs = [float(mapping[axes[2], 2]) * k + float(mapping[axes[2], 3]) for k in (k0, k1 - 1)]
        z0, z1 = max(0, int(np.floor(min(zs)))), min(n_src[2], int(np.floor(max(zs))) + 2)
        if z0 >= z1:
            return None
        ranges = []
        for a in (0, 1):
            hits = np.flatnonzero(along_k[a][:, z0:z1].any(axis=1))
            if hits.size == 0:
                return None
            ranges.append(out_range(a, float(hits[0]), float(hits[-1])))
        if any(r0 >= r1 for r0, r1 in ranges):
            return None
        return ranges[0], ranges[1]

    return box


def _slab_grid_sample(
    src: torch.Tensor, mapping: torch.Tensor, nx: int, ny: int, k0: int, k1: int
) -> torch.Tensor:
    """(C, nx, ny, k1 - k0) as :func:`_slab_separable`, through a full sampling grid (any affine)."""
    size = torch.tensor(src.shape[1:], dtype=torch.float64)
    ii, jj = torch.meshgrid(
        torch.arange(nx, dtype=torch.float64), torch.arange(ny, dtype=torch.float64), indexing="ij"
    )
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
    return torch.nn.functional.grid_sample(
        src[None], grid[None], mode="bilinear", padding_mode="zeros", align_corners=True
    )[0]


def softmax_before(before: Sequence[Any]) -> bool:
    """Whether the steps before ``Invertd`` make ``pred`` class probabilities: an ``Activationsd`` softmax,
    followed only by :data:`VOXELWISE` steps (which keep them probabilities)."""
    soft = [i for i, t in enumerate(before) if isinstance(t, Activationsd) and tuple(t.softmax) == (True,)]
    return bool(soft) and all(isinstance(t, VOXELWISE) for t in before[soft[-1] + 1 :])


def is_plain_argmax(after: Sequence[Any]) -> bool:
    """Whether the steps after ``Invertd`` are exactly ``AsDiscreted(keys="pred", argmax=True)``."""
    if len(after) != 1 or not isinstance(after[0], AsDiscreted):
        return False
    t = after[0]
    return (
        list(t.keys) == ["pred"] and tuple(t.argmax) == (True,) and list(t.to_onehot) == [None]
        and list(t.threshold) == [None] and tuple(t.rounding) == (None,) and not t.converter.kwargs
    )  # fmt: skip


def argmax_labels(probs: torch.Tensor) -> np.ndarray:
    """``probs.argmax(0)`` as uint8, the first class winning ties as in ``torch.argmax``: one comparison
    per class (``torch.argmax`` over a leading axis of 2 took 0.39 s per 7 M voxels here, this 0.01 s)."""
    best = probs[0]
    labels = torch.zeros(probs.shape[1:], dtype=torch.uint8)
    for c in range(1, probs.shape[0]):
        better = probs[c] > best
        labels[better] = c
        best = torch.where(better, probs[c], best)
    return labels.numpy()


def invert_in_slabs(
    pred: Any,
    pred_affine: Any,
    affine_ras: np.ndarray,
    shape: tuple[int, ...],
    after: Sequence[Any],
    slab_voxels: int = SLAB_VOXELS,
    scores: np.ndarray | None = None,
    probabilities: bool = False,
) -> np.ndarray:
    """Resample ``pred`` (C, X', Y', Z', on ``pred_affine``) onto the input grid, slab by slab along k.

    Equivalent to the bundle's ``Invertd`` (which undoes Orientation, Spacing and crops through the
    same affines); outside ``pred`` every channel is 0 (as the inverse of a crop pads), so the class
    is background. Returns the uint8 mask [i, j, k] of ``shape``. ``scores`` (uint8, ``shape``), when
    given, receives the highest foreground probability of each voxel in 1/255 steps: what a lesion's
    score is made of (``pred`` holds probabilities here: the post-processing's ``Activationsd`` ran).

    Axis-aligned mappings (:func:`separable_axes`) are sampled one axis at a time, others through
    ``grid_sample``; an ``argmax`` after the inversion (:func:`is_plain_argmax`) is :func:`argmax_labels`.
    Both give ``Invertd``'s trilinear samples up to float32 rounding. With ``probabilities`` (``pred`` is a
    softmax) and both of those, only the part of each slab where some foreground probability reaches
    half a score step is sampled (:func:`_active_boxes`); the rest is background with score 0.
    """
    mapping = torch.as_tensor(np.linalg.inv(np.asarray(pred_affine, dtype=np.float64)) @ affine_ras)
    src = torch.as_tensor(pred).float().as_subclass(torch.Tensor)  # (C, X', Y', Z')
    axes = separable_axes(mapping.numpy(), src.shape[1:])
    argmax = is_plain_argmax(after)
    # only where some foreground is possible (probabilities: a softmax ran before the inversion)
    sparse = axes is not None and argmax and probabilities and src.shape[0] > 1
    boxes = _active_boxes(src, mapping, axes, shape) if sparse else None  # type: ignore[arg-type]
    nx, ny, nz = shape
    mask = np.zeros(shape, dtype=np.uint8)
    step = max(1, slab_voxels // (nx * ny))
    for k0 in range(0, nz, step):
        k1 = min(nz, k0 + step)
        if sparse:
            found = boxes(k0, k1) if boxes is not None else None
            if found is None:
                continue  # background, score 0 (``mask`` and ``scores`` hold them already)
            (i0, i1), (j0, j1) = found
            slab = _slab_separable(src, mapping, axes, ((i0, i1), (j0, j1), (k0, k1)))  # type: ignore[arg-type]
            if scores is not None:
                scores[i0:i1, j0:j1, k0:k1] = lesion_scores(slab)
            mask[i0:i1, j0:j1, k0:k1] = argmax_labels(slab)
            continue
        if axes is not None:
            slab = _slab_separable(src, mapping, axes, ((0, nx), (0, ny), (k0, k1)))
        else:
            slab = _slab_grid_sample(src, mapping, nx, ny, k0, k1)
        if scores is not None and slab.shape[0] > 1:
            scores[:, :, k0:k1] = lesion_scores(slab)
        if argmax:
            mask[:, :, k0:k1] = argmax_labels(slab)
            continue
        data = {"pred": MetaTensor(slab)}
        for transform in after:  # the bundle's own (AsDiscreted argmax...), voxel-wise
            data = transform(data)
        mask[:, :, k0:k1] = to_mask(data["pred"])
    return mask
