"""A classical lung-field mask of a chest CT, to keep lesion candidates inside the lungs.

HU threshold and connected components, on a coarse grid (``grid_mm``) so that a 512×512×300 series takes
about a second:

1. air = voxels below ``air_hu`` (-400 HU: lung parenchyma, airways, the air around the patient; the
   -2048 / -3024 padding outside a scanner's reconstruction circle counts as air);
2. drop air components that touch the in-plane border of the volume (outside the patient, the table's
   foam and the air under it) and those smaller than ``min_lung_ml``;
3. fill holes slice by slice (vessels and nodules inside the lungs), then close with a ball of
   ``closing_mm`` so that nodules on the pleura, which indent the air region, are inside too.

The result is a boolean mask on the image's own grid. It is a candidate filter, not a segmentation to
measure lungs with.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform
from scipy import ndimage


@dataclass(frozen=True)
class LungField:
    """The parameters of :func:`lung_mask` (``candidate_filter`` in a lesion bundle's ``common.json``)."""

    air_hu: float = -400.0
    grid_mm: float = 2.5
    min_lung_ml: float = 50.0
    closing_mm: float = 10.0

    def mask(self, array_hu: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
        return lung_mask(array_hu, spacing, self)


def _ball(radius_voxels: np.ndarray) -> np.ndarray:
    r = np.maximum(np.asarray(radius_voxels, dtype=np.float64), 0.5)
    half = np.floor(r).astype(int)
    grid = np.meshgrid(*[np.arange(-h, h + 1) / rr for h, rr in zip(half, r, strict=True)], indexing="ij")
    return sum(g**2 for g in grid) <= 1.0


#: 4-connectivity inside each slice (axes x, y) and none across slices: 2-D hole filling of every slice at once
_IN_SLICE = np.zeros((3, 3, 3), dtype=bool)
_IN_SLICE[1, 1, 1] = _IN_SLICE[0, 1, 1] = _IN_SLICE[2, 1, 1] = _IN_SLICE[1, 0, 1] = _IN_SLICE[1, 2, 1] = True


def fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """``ndimage.binary_fill_holes`` of every slice ``mask[:, :, k]``, in one labelling: the background
    components (4-connected within a slice) that touch the slice's border stay background, all others
    are holes. (The slice loop took 0.2 s on a coarse 128x128x99 CT grid, this 0.03 s.)"""
    labels, _ = ndimage.label(~mask, structure=_IN_SLICE)
    outside = np.zeros(int(labels.max()) + 1, dtype=bool)
    for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        outside[edge.ravel()] = True
    outside[0] = False  # label 0: the mask itself
    return ~outside[labels]


def closing_near(mask: np.ndarray, ball: np.ndarray) -> np.ndarray:
    """``ndimage.binary_closing(mask, structure=ball)``, computed on the box around ``mask``'s voxels only.

    The closing lies inside the dilation, which lies within the ball's half-width of a mask voxel; so,
    with one voxel more of margin (the erosion there sees the dilation's background, as it would in the
    whole array), the box gives the same result and everything outside it is background. (The lung field
    fills about half of a chest CT's coarse grid: the whole-array closing took 0.87 s on LIDC-IDRI-0003.)"""
    found = np.argwhere(mask)
    if found.size == 0:
        return np.zeros_like(mask)
    margin = np.asarray(ball.shape) // 2 + 1
    lo = np.maximum(found.min(axis=0) - margin, 0)
    hi = np.minimum(found.max(axis=0) + margin + 1, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    out = np.zeros_like(mask)
    out[box] = ndimage.binary_closing(mask[box], structure=ball)
    return out


def lung_mask(
    array_hu: np.ndarray, spacing: tuple[float, float, float], params: LungField | None = None
) -> np.ndarray:
    """Boolean lung field of ``array_hu`` (voxel axes x, y, slice; ``spacing`` in mm per axis)."""
    p = params or LungField()
    array_hu = np.asarray(array_hu)
    step = np.maximum(np.round(p.grid_mm / np.asarray(spacing, dtype=np.float64)).astype(int), 1)
    coarse = array_hu[:: step[0], :: step[1], :: step[2]]
    voxel_ml = float(np.prod(np.asarray(spacing) * step)) / 1000.0
    air = coarse < p.air_hu
    labels, n = ndimage.label(air)
    if n == 0:
        return np.zeros(array_hu.shape, dtype=bool)
    border = np.unique(np.concatenate([labels[0].ravel(), labels[-1].ravel(), labels[:, 0].ravel(),
                                       labels[:, -1].ravel()]))  # fmt: skip
    sizes = ndimage.sum_labels(air, labels, index=np.arange(1, n + 1)) * voxel_ml
    keep = np.zeros(n + 1, dtype=bool)
    keep[1:] = sizes >= p.min_lung_ml
    keep[border] = False
    lungs = fill_holes_per_slice(keep[labels])
    if p.closing_mm > 0 and lungs.any():
        radius = p.closing_mm / (np.asarray(spacing) * step)
        pad = np.floor(np.maximum(radius, 0.5)).astype(int)
        padded = np.pad(lungs, [(w, w) for w in pad])
        closed = closing_near(padded, _ball(radius))
        lungs = closed[
            pad[0] : pad[0] + lungs.shape[0],
            pad[1] : pad[1] + lungs.shape[1],
            pad[2] : pad[2] + lungs.shape[2],
        ]
    # one coarse cell more all round, so that going back to the full grid loses no lung at the edges
    lungs = ndimage.binary_dilation(lungs)
    # back to the full grid: each voxel takes its coarse cell
    idx = [
        np.minimum(np.arange(n_full) // s, n_coarse - 1)
        for n_full, s, n_coarse in zip(array_hu.shape, step, lungs.shape, strict=True)
    ]
    return lungs[np.ix_(*idx)]


def windowed_hu(image: Any, window: tuple[float, float]) -> tuple[np.ndarray, tuple[float, float, float]]:
    """HU and voxel spacing of a preprocessed (1, X, Y, Z) image scaled from ``window`` to [0, 1]."""
    lo, hi = window
    hu = lo + np.asarray(image[0].detach().cpu().numpy(), dtype=np.float32) * (hi - lo)
    affine = np.asarray(image.affine if hasattr(image, "affine") else np.eye(4), dtype=np.float64)
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    return hu, spacing  # type: ignore[return-value]


_LAST_FIELD: dict[str, Any] = {}
_LAST_FIELD_LOCK = threading.Lock()


def lung_field_of(image: Any, window: tuple[float, float], field: LungField) -> np.ndarray:
    """The lung field (bool, X, Y, Z) of a preprocessed (1, X, Y, Z) image scaled from ``window`` to [0, 1].

    The last result is kept, keyed by a hash of the image's voxels, spacing, window and parameters: the
    same image's field is asked for twice in one prediction, by :class:`~medpipe.inferers.LungWindowInferer`
    (which windows to compute) and by :class:`RestrictToLungsd` (which voxels to keep), and must be the
    same (0.5 s for a 512x512x99 CT; the hash takes 0.03 s)."""
    voxels = np.ascontiguousarray(image[0].detach().cpu().numpy() if hasattr(image, "detach") else image[0])
    affine = np.asarray(image.affine if hasattr(image, "affine") else np.eye(4), dtype=np.float64)
    digest = hashlib.blake2b(voxels.data, digest_size=16)
    digest.update(repr((voxels.shape, str(voxels.dtype), affine.round(9).tolist(), window, field)).encode())
    key = digest.hexdigest()
    with _LAST_FIELD_LOCK:
        if _LAST_FIELD.get("key") == key:
            return _LAST_FIELD["mask"]
    hu, spacing = windowed_hu(image, window)
    mask = field.mask(hu, spacing)
    mask.setflags(write=False)
    with _LAST_FIELD_LOCK:
        _LAST_FIELD.update(key=key, mask=mask)
    return mask


class RestrictToLungsd(MapTransform):
    """Post-processing (before ``Invertd``): foreground probabilities outside the lung field become 0.

    Runs on the preprocessed grid, where ``image_key`` holds the CT scaled from ``hu_window`` to [0, 1]
    (``ScaleIntensityRanged`` with clipping); the HU it needs are recovered from that window. Voxel-wise,
    so ``python -m monai.bundle run`` and ``medpipe infer`` apply exactly the same restriction.
    """

    def __init__(
        self,
        keys: Any = "pred",
        image_key: str = "image",
        hu_window: Sequence[float] = (-1000.0, 400.0),
        allow_missing_keys: bool = False,
        **field: float,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.window = (float(hu_window[0]), float(hu_window[1]))
        self.field = LungField(**field)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        outside = torch.as_tensor(~lung_field_of(d[self.image_key], self.window, self.field))
        for key in self.key_iterator(d):
            pred = d[key]
            region = outside.to(pred.device)
            pred[1:, region] = 0  # in place: a MetaTensor keeps the record Invertd needs
            pred[0, region] = 1
        return d


class LesionSamplingd(MapTransform):
    """Training: where ``RandCropByPosNegLabeld`` centres its patches (its ``fg_indices_key`` /
    ``bg_indices_key``). Positive centres are one voxel per lesion (the labelled voxel nearest each
    connected component's centroid), so a 4 mm nodule is as likely a patch centre as a 30 mm one (the
    default draws voxels, so big lesions win); negative centres are voxels of the lung field outside the
    label (every ``bg_stride``-th), so background patches show vessels, airways and fissures rather than
    liver and muscle. Deterministic: it can run before the cached part of a dataset ends. With
    ``enabled`` false it passes the data through.
    """

    def __init__(
        self,
        label_key: str = "label",
        image_key: str = "image",
        hu_window: Sequence[float] = (-1000.0, 400.0),
        fg_key: str = "fg_centres",
        bg_key: str = "bg_centres",
        bg_stride: int = 7,
        enabled: bool = True,
        **field: float,
    ) -> None:
        super().__init__([label_key])
        self.enabled = bool(enabled)
        self.label_key, self.image_key, self.fg_key, self.bg_key = label_key, image_key, fg_key, bg_key
        self.window = (float(hu_window[0]), float(hu_window[1]))
        self.bg_stride = max(int(bg_stride), 1)
        self.field = LungField(**field)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if not self.enabled:  # the crop then draws voxels itself (a config switch, lesion_sampling)
            return d
        label = np.asarray(d[self.label_key][0].detach().cpu().numpy() if hasattr(d[self.label_key], "detach")
                           else d[self.label_key][0]) > 0  # fmt: skip
        hu, spacing = windowed_hu(d[self.image_key], self.window)
        parts, n = ndimage.label(label, structure=np.ones((3, 3, 3), dtype=bool))
        centres = []
        for index, box in enumerate(ndimage.find_objects(parts), start=1):
            if box is None:
                continue
            voxels = np.argwhere(parts[box] == index) + [s.start for s in box]
            nearest = voxels[np.argmin(((voxels - voxels.mean(0)) ** 2).sum(1))]
            centres.append(np.ravel_multi_index(tuple(nearest), label.shape))
        background = np.flatnonzero(self.field.mask(hu, spacing) & ~label)[:: self.bg_stride]  # type: ignore[arg-type]
        if background.size == 0:  # no lung field (a crop, a phantom without air): the whole non-label volume
            background = np.flatnonzero(~label)[:: self.bg_stride]
        d[self.fg_key] = np.asarray(centres, dtype=np.int64)
        d[self.bg_key] = background.astype(np.int64)
        return d
