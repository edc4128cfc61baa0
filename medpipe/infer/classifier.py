"""``--classifier BUNDLE``: the probability a classifier bundle gives to a crop around each lesion.

Contract with classifier bundles (e.g. ``bundles/lung_nodule_malignancy_ct``), all in ``configs/common.json``:

- ``crop_spacing``: 3 floats, mm, RAS axis order; ``crop_size``: 3 ints, voxels;
- ``network_def``: the network, softmax over 2 classes, class 1 = positive (its name from
  ``metadata.json`` ``network_data_format.outputs.pred.channel_def["1"]``); weights in ``models/model.pt``;
- ``crop_transforms``: MONAI dictionary transforms (key ``"image"``) turning
  ``{"image": MetaTensor (1, X, Y, Z)}`` in original intensity units (HU for CT), RAS orientation and
  ``crop_spacing`` into the network input.

The crop is sampled here (trilinear, from the original volume, centred on the lesion centroid, along
the RAS axes): one interpolation, no resampling of the whole volume. Voxels outside the volume get the
volume minimum (at most -1024 for CT, i.e. air).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.bundle.layout import BundleLayout
from medpipe.errors import Code


@dataclass
class Classifier:
    name: str
    version: str
    positive: str
    crop_spacing: np.ndarray
    crop_size: tuple[int, int, int]
    network: Any
    transforms: Any
    device: Any
    model_sha256: str

    @classmethod
    def open(cls, bundle: str | Path, device: Any) -> Classifier:
        from monai.bundle import ConfigParser
        from monai.transforms import Compose

        from medpipe.bundle.export import load_state_dict
        from medpipe.infer.sources import file_sha256

        layout = BundleLayout.open(bundle)
        parser = ConfigParser()
        parser.read_config(str(layout.config("common")))
        parser["bundle_root"] = str(layout.root)
        missing = [
            k for k in ("crop_spacing", "crop_size", "network_def", "crop_transforms") if k not in parser
        ]
        if missing:
            raise Code.INFER_CLASSIFIER_INVALID(
                f"classifier bundle {layout.root.name} lacks {missing} in configs/common.json "
                "(see docs/inference.md, 'Classifier bundles')",
            )
        spacing = np.asarray(parser.get_parsed_content("crop_spacing"), dtype=np.float64)
        size = tuple(int(v) for v in parser.get_parsed_content("crop_size"))
        if spacing.shape != (3,) or (spacing <= 0).any() or len(size) != 3 or min(size) < 1:
            raise Code.INFER_CLASSIFIER_INVALID(
                f"classifier bundle {layout.root.name}: crop_spacing {spacing.tolist()} / crop_size {size} must be "
                "3 positive numbers each",
            )
        if not layout.model_pt.is_file():
            raise Code.BUNDLE_NO_WEIGHTS(
                f"{layout.model_pt} does not exist: train the classifier first"
            )
        meta = json.loads(layout.metadata.read_text())
        pred = meta.get("network_data_format", {}).get("outputs", {}).get("pred", {})
        positive = str((pred.get("channel_def") or {}).get("1", "positive"))
        network = parser.get_parsed_content("network_def", instantiate=True)
        network.load_state_dict(load_state_dict(layout.model_pt))
        network = network.to(device).eval()
        transforms = Compose(parser.get_parsed_content("crop_transforms", instantiate=True))
        return cls(
            name=str(meta.get("name", layout.root.name)),
            version=str(meta.get("version", "unknown")),
            positive=positive,
            crop_spacing=spacing,
            crop_size=size,  # type: ignore[arg-type]
            network=network,
            transforms=transforms,
            device=device,
            model_sha256=file_sha256(layout.model_pt),
        )

    def crop(self, array: np.ndarray, affine_ras: np.ndarray, centre_ras: np.ndarray, pad: float):
        """A (1, X, Y, Z) MetaTensor around ``centre_ras`` on the crop grid (RAS axes, crop_spacing)."""
        import torch
        from monai.data import MetaTensor
        from scipy.ndimage import map_coordinates

        size = np.asarray(self.crop_size)
        offsets = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(size, self.crop_spacing, strict=True)]
        grid = np.stack(np.meshgrid(*offsets, indexing="ij"), axis=0).reshape(3, -1)
        world = grid + np.asarray(centre_ras, dtype=np.float64)[:, None]
        to_voxel = np.linalg.inv(affine_ras)
        idx = to_voxel[:3, :3] @ world + to_voxel[:3, 3:4]
        values = map_coordinates(np.asarray(array, dtype=np.float32), idx, order=1, mode="constant", cval=pad)
        crop_affine = np.diag([*self.crop_spacing, 1.0])
        crop_affine[:3, 3] = np.asarray(centre_ras) - (size - 1) / 2.0 * self.crop_spacing
        t = torch.as_tensor(values.reshape(1, *size).astype(np.float32))
        return MetaTensor(t, affine=torch.as_tensor(crop_affine), meta={"space": "RAS"})

    def probability(
        self, array: np.ndarray, affine_ras: np.ndarray, centre_ras: np.ndarray, pad: float
    ) -> float:
        """Softmax probability of class 1 for the crop around ``centre_ras``."""
        import torch

        data = self.transforms({"image": self.crop(array, affine_ras, centre_ras, pad)})
        with torch.no_grad():
            logits = self.network(torch.as_tensor(data["image"])[None].float().to(self.device))
        return float(torch.softmax(logits.float(), dim=1)[0, 1].cpu())
