"""``--classifier BUNDLE``: the probability a classifier bundle gives to a crop around each lesion.

Contract with classifier bundles (e.g. ``bundles/lung_nodule_malignancy_ct``), all in ``configs/common.json``:

- ``crop_spacing``: 3 floats, mm, RAS axis order; ``crop_size``: 3 ints, voxels;
- ``network_def``: the network, softmax over 2 classes, class 1 = positive (its name from
  ``metadata.json`` ``network_data_format.outputs.pred.channel_def["1"]``); weights in ``models/model.pt``;
- ``crop_transforms``: MONAI dictionary transforms (key ``"image"``) turning
  ``{"image": MetaTensor (1, X, Y, Z)}`` in original intensity units (HU for CT), RAS orientation and
  ``crop_spacing`` into the network input.

The bundle is opened by :class:`~medpipe.bundle.model.BundleModel` (weights check and loading, eval
mode, metadata), on the segmenter's device. The crop is sampled here (trilinear, from the original
volume, centred on the lesion centroid, along the RAS axes): one interpolation, no resampling of the
whole volume. Voxels outside the volume get ``pad`` (air, -1024 HU, for CT).

Optional ``crop_context`` (a mapping): the classifier was trained on crops that end close to the lesion
(``lidc_nodule_vois``: the nodule's box plus ``margin_fraction`` of its extent on each side, at least
``inplane_min`` voxels in-plane), padded with air up to ``crop_size``. With ``crop_context`` the voxels
outside that same box around the found lesion are set to ``pad`` before the crop is sampled, so the
network sees at inference what it saw in training rather than the whole chest around the lesion.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose
from scipy.ndimage import map_coordinates

from medpipe.bundle.layout import BundleLayout
from medpipe.bundle.model import BundleModel
from medpipe.errors import Code

REQUIRED = ("crop_spacing", "crop_size", "network_def", "crop_transforms")


def crop_around(
    array: np.ndarray,
    affine_ras: np.ndarray,
    centre_ras: np.ndarray,
    spacing: np.ndarray,
    size: tuple[int, int, int],
    pad: float,
    region: tuple[slice, slice, slice] | None = None,
) -> MetaTensor:
    """A (1, X, Y, Z) MetaTensor of ``size`` voxels at ``spacing`` mm around ``centre_ras``, along the RAS axes.

    With ``region`` (voxel slices of ``array``), only the voxels inside it are read; the rest count as ``pad``.
    """
    shape = np.asarray(size)
    offsets = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing, strict=True)]
    grid = np.stack(np.meshgrid(*offsets, indexing="ij"), axis=0).reshape(3, -1)
    world = grid + np.asarray(centre_ras, dtype=np.float64)[:, None]
    to_voxel = np.linalg.inv(affine_ras)
    idx = to_voxel[:3, :3] @ world + to_voxel[:3, 3:4]
    source, mode = np.asarray(array), "constant"
    if region is not None:
        # sample the region's own voxels (no copy of the volume per lesion): "grid-constant" interpolates
        # with `pad` beyond the region's edge, as if the voxels outside it held `pad`
        source, mode = source[region], "grid-constant"
        idx -= np.array([[r.start or 0] for r in region], dtype=np.float64)
    values = map_coordinates(source, idx, order=1, mode=mode, cval=pad, output=np.float32)
    crop_affine = np.diag([*spacing, 1.0])
    crop_affine[:3, 3] = np.asarray(centre_ras) - (shape - 1) / 2.0 * spacing
    t = torch.as_tensor(values.reshape(1, *shape).astype(np.float32))
    return MetaTensor(t, affine=torch.as_tensor(crop_affine), meta={"space": "RAS"})


def slice_axis(affine_ras: np.ndarray) -> int:
    """The voxel axis closest to the superior direction (the slice axis of an axial series)."""
    cols = np.asarray(affine_ras, dtype=np.float64)[:3, :3]
    return int(np.argmax(np.abs(cols[2]) / np.linalg.norm(cols, axis=0)))


def context_region(
    bbox_min: tuple[int, int, int],
    bbox_max: tuple[int, int, int],
    shape: tuple[int, ...],
    policy: dict[str, Any],
    axis: int = 2,
) -> tuple[slice, slice, slice]:
    """The voxel box a training crop would have had around a lesion with this (inclusive) bounding box.

    Each side grows by ``floor(margin_fraction * extent)`` voxels; the two in-plane axes (all but ``axis``)
    are then widened, centred, to at least ``inplane_min`` voxels. Clipped to the volume.
    """
    fraction = float(policy.get("margin_fraction", 0.0))
    minimum = int(policy.get("inplane_min", 0))
    out = []
    for a in range(3):
        lo, hi = int(bbox_min[a]), int(bbox_max[a])
        margin = int(np.floor(fraction * (hi - lo + 1)))
        lo, hi = lo - margin, hi + margin
        if a != axis and hi - lo + 1 < minimum:
            grow = minimum - (hi - lo + 1)
            lo, hi = lo - grow // 2, hi + grow - grow // 2
        out.append(slice(max(lo, 0), min(hi + 1, int(shape[a]))))
    return out[0], out[1], out[2]


@dataclass
class CropClassifier:
    """A classifier bundle opened for lesion crops."""

    model: BundleModel
    crop_spacing: np.ndarray
    crop_size: tuple[int, int, int]
    transforms: Compose
    context: dict[str, Any] | None = None

    @classmethod
    def open(cls, bundle: str | Path, device: Any) -> CropClassifier:
        layout = BundleLayout.open(bundle)
        parser = ConfigParser()
        parser.read_config(str(layout.config("common")))
        missing = [k for k in REQUIRED if k not in parser]
        if missing:
            raise Code.INFER_CLASSIFIER_INVALID(
                f"classifier bundle {layout.root.name} lacks {missing} in configs/common.json "
                "(see docs/inference.md, 'Classifier bundles')"
            )
        model = BundleModel.open(layout, device=str(device), workflow="crop")
        name = layout.root.name
        spacing = np.asarray(model.get("crop_spacing"), dtype=np.float64)
        size = tuple(int(v) for v in model.get("crop_size"))
        if spacing.shape != (3,) or (spacing <= 0).any() or len(size) != 3 or min(size) < 1:
            raise Code.INFER_CLASSIFIER_INVALID(
                f"classifier bundle {name}: crop_spacing {spacing.tolist()} / crop_size {size} must be 3 positive "
                "numbers each"
            )
        context = model.get("crop_context", None)
        if context is not None and not isinstance(context, dict):
            raise Code.INFER_CLASSIFIER_INVALID(
                f"classifier bundle {name}: crop_context must be a mapping (margin_fraction, inplane_min), "
                f"not {context!r}"
            )
        transforms = Compose(model.get("crop_transforms"))  # type: ignore[arg-type]
        return cls(model, spacing, size, transforms, dict(context) if context else None)

    @property
    def positive(self) -> str:
        return self.model.class_names.get(1, "positive")

    def lesion_probability(self, image: Any, lesion: Any, pad: float) -> float:
        """:meth:`probability` for a :class:`~medpipe.infer.lesions.Lesion` found in ``image`` (a
        :class:`~medpipe.data.images.Image`): centred on its centroid, boxed by its bounding box."""
        centre_ras = np.asarray(lesion.centroid_lps) * np.array([-1.0, -1.0, 1.0])
        box = (lesion.bbox_min, lesion.bbox_max)
        return self.probability(image.array, image.affine_ras, centre_ras, pad, box)

    def probability(
        self,
        array: np.ndarray,
        affine_ras: np.ndarray,
        centre_ras: np.ndarray,
        pad: float,
        bbox: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None,
    ) -> float:
        """Softmax probability of class 1 for the crop around ``centre_ras`` (``bbox``: the lesion's voxel box)."""
        region = None
        if self.context and bbox is not None:
            region = context_region(bbox[0], bbox[1], array.shape, self.context, slice_axis(affine_ras))
        crop = crop_around(array, affine_ras, centre_ras, self.crop_spacing, self.crop_size, pad, region)
        data = self.transforms({"image": crop})
        with torch.no_grad():
            logits = self.model.network(torch.as_tensor(data["image"])[None].float().to(self.model.device))
        return float(torch.softmax(logits.float(), dim=1)[0, 1].cpu())
