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
) -> MetaTensor:
    """A (1, X, Y, Z) MetaTensor of ``size`` voxels at ``spacing`` mm around ``centre_ras``, along the RAS axes."""
    shape = np.asarray(size)
    offsets = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing, strict=True)]
    grid = np.stack(np.meshgrid(*offsets, indexing="ij"), axis=0).reshape(3, -1)
    world = grid + np.asarray(centre_ras, dtype=np.float64)[:, None]
    to_voxel = np.linalg.inv(affine_ras)
    idx = to_voxel[:3, :3] @ world + to_voxel[:3, 3:4]
    values = map_coordinates(np.asarray(array, dtype=np.float32), idx, order=1, mode="constant", cval=pad)
    crop_affine = np.diag([*spacing, 1.0])
    crop_affine[:3, 3] = np.asarray(centre_ras) - (shape - 1) / 2.0 * spacing
    t = torch.as_tensor(values.reshape(1, *shape).astype(np.float32))
    return MetaTensor(t, affine=torch.as_tensor(crop_affine), meta={"space": "RAS"})


@dataclass
class CropClassifier:
    """A classifier bundle opened for lesion crops."""

    model: BundleModel
    crop_spacing: np.ndarray
    crop_size: tuple[int, int, int]
    transforms: Compose

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
        return cls(model, spacing, size, Compose(model.get("crop_transforms")))  # type: ignore[arg-type]

    @property
    def positive(self) -> str:
        return self.model.class_names.get(1, "positive")

    def probability(
        self, array: np.ndarray, affine_ras: np.ndarray, centre_ras: np.ndarray, pad: float
    ) -> float:
        """Softmax probability of class 1 for the crop around ``centre_ras``."""
        crop = crop_around(array, affine_ras, centre_ras, self.crop_spacing, self.crop_size, pad)
        data = self.transforms({"image": crop})
        with torch.no_grad():
            logits = self.model.network(torch.as_tensor(data["image"])[None].float().to(self.model.device))
        return float(torch.softmax(logits.float(), dim=1)[0, 1].cpu())
