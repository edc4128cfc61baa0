"""What classifier bundles need beyond MONAI: an input-size check and class weights.

* :func:`check_crop_size` -- a crop-classifier bundle declares ``crop_size`` (voxels) in common.json;
  a size the network cannot take (zero, too small for its downsampling) is refused up front as
  ``BUNDLE_CROP_SIZE_INVALID`` by ``medpipe check`` and ``medpipe train`` instead of failing mid-epoch.
* :func:`class_weights` -- inverse-frequency weights of the training split for ``CrossEntropyLoss``,
  so an imbalanced dataset (NoduleMNIST3D: 1 malignant in 4) trains unchanged.

The decision threshold of a binary classifier is :mod:`medpipe.evaluate.threshold`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

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
