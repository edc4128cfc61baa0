"""What classifier bundles need beyond MONAI: an input-size check, class weights and rating targets.

* :func:`check_crop_size` -- a crop-classifier bundle declares ``crop_size`` (voxels) in common.json;
  a size the network cannot take (zero, too small for its downsampling) is refused up front as
  ``BUNDLE_CROP_SIZE_INVALID`` by ``medpipe check`` and ``medpipe train`` instead of failing mid-epoch.
* :func:`class_weights` -- inverse-frequency weights of the training split for ``CrossEntropyLoss``,
  so an imbalanced dataset (NoduleMNIST3D: 1 malignant in 4) trains unchanged.
* :class:`RatingTargetd` -- the ``target: rating`` option of a binary classifier: train on the readers'
  rating (LIDC malignancy 1-5) instead of the benign / malignant call, as a regression of the rating
  scaled to [0, 1] through the network's P(positive): the target of ``CrossEntropyLoss`` becomes the
  class probabilities ``[1 - t, t]`` with ``t = (rating - low) / (high - low)``. The output stays a
  probability of the positive class, so thresholds, ``evaluate`` and ``infer --classifier`` are
  unchanged, and ``low + (high - low) * P`` reads as the predicted rating.

The decision threshold of a binary classifier is :mod:`medpipe.evaluate.threshold`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform

from medpipe.errors import Code


def check_crop_size(network: torch.nn.Module, crop_size: Any, num_outputs: int | None = None) -> None:
    """Run one zero crop of ``crop_size`` through ``network``; raise ``BUNDLE_CROP_SIZE_INVALID`` if it fails."""
    try:
        size = [int(v) for v in crop_size]
        if len(size) != 3 or any(v < 1 for v in size) or any(float(v) != int(v) for v in crop_size):
            raise ValueError
    except (TypeError, ValueError):
        raise Code.BUNDLE_CROP_SIZE_INVALID(
            f"crop_size={crop_size!r} must be 3 positive integers (voxels), e.g. [32, 32, 32]",
        ) from None
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            param = next(network.parameters(), None)
            x = torch.zeros(1, 1, *size, device=param.device if param is not None else "cpu")
            out = network(x)
    except (RuntimeError, ValueError) as e:
        raise Code.BUNDLE_CROP_SIZE_INVALID(
            f"crop_size={size} cannot pass through the network ({type(network).__name__}): "
            f"{str(e).splitlines()[0]}; use a larger crop_size (or a network with less downsampling)",
        ) from None
    finally:
        network.train(was_training)
    if num_outputs is not None and tuple(out.shape) != (1, num_outputs):
        raise Code.BUNDLE_CROP_SIZE_INVALID(
            f"the network maps a crop of {size} to shape {tuple(out.shape)}, expected (1, {num_outputs}): one "
            "score per class",
        )


def class_weights(datalist: Sequence[dict[str, Any]], num_classes: int, device: Any = "cpu") -> torch.Tensor:
    """``n / (num_classes * count_c)`` per class from the ``label`` of each entry (1 for an absent class)."""
    counts = np.bincount([int(e["label"]) for e in datalist], minlength=num_classes)[:num_classes]
    weights = np.where(counts > 0, len(datalist) / (num_classes * np.maximum(counts, 1)), 1.0)
    return torch.tensor(weights, dtype=torch.float32, device=device)


class RatingTargetd(MapTransform):
    """For ``target="rating"``, replace ``label`` by ``[1 - t, t]`` (float32), ``t`` = the entry's
    ``rating_key`` scaled from [``low``, ``high``] to [0, 1] (clipped); for ``target="label"`` leave the
    entry as it is. An entry without the rating is refused (``MANIFEST_INVALID``): a mix would train on
    two targets."""

    TARGETS = ("label", "rating")

    def __init__(
        self, keys: Any = "label", rating_key: str = "Malignancy_value", low: float = 1.0, high: float = 5.0,
        target: str = "rating",
    ) -> None:  # fmt: skip
        super().__init__(keys)
        if target not in self.TARGETS:
            raise Code.CONFIG_BAD_OVERRIDE(f"target={target!r}: choose one of {', '.join(self.TARGETS)}")
        if not float(high) > float(low):
            raise Code.CONFIG_BAD_OVERRIDE(f"rating_range [{low}, {high}] is empty: its high must exceed its low")
        self.rating_key, self.low, self.high = rating_key, float(low), float(high)
        self.enabled = target == "rating"

    def __call__(self, data: Any) -> Any:
        if not self.enabled:
            return data
        d = dict(data)
        rating = d.get(self.rating_key)
        try:
            value = float(rating)  # type: ignore[arg-type]
            if not np.isfinite(value):
                raise ValueError
        except (TypeError, ValueError):
            raise Code.MANIFEST_INVALID(
                f"target 'rating' needs a finite {self.rating_key!r} in every training entry; "
                f"{d.get('case_id', 'an entry')} has {rating!r}"
            ) from None
        t = float(np.clip((value - self.low) / (self.high - self.low), 0.0, 1.0))
        for key in self.key_iterator(d):
            d[key] = torch.tensor([1.0 - t, t], dtype=torch.float32)
        return d
