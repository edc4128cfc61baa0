"""Test-time augmentation as MONAI ``Inferer``s: cube symmetries for classifiers, mirroring for segmenters.

A 3D volume whose orientation carries no meaning (a vessel segment, a nodule crop) can be shown to
the network in any of the cube's 48 orientations: 6 axis permutations x 8 flip combinations.
:class:`CubeSymmetryInferer` averages the softmax of the network over the first ``n`` of them (8: the
flips only; 48: all) and returns the **log** of that mean, so a bundle's ``Activationsd(softmax=True)``
post-processing turns it back into exactly the averaged probabilities, and ``argmax`` is unchanged.

:class:`FlipTTAInferer` does the same for a segmenter (nnU-Net's "mirroring"): it runs a wrapped
inferer (e.g. the sliding window) on every combination of flips along the given axes, flips each
prediction back onto the input grid and returns the log of the mean softmax.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
from monai.inferers import Inferer

#: (axis permutation of the three spatial dims, flipped spatial dims), identity first.
SYMMETRIES: list[tuple[tuple[int, int, int], tuple[int, ...]]] = [
    (perm, tuple(d for d in range(3) if mask >> d & 1))
    for perm in itertools.permutations(range(3))
    for mask in range(8)
]


def apply_symmetry(x: torch.Tensor, index: int) -> torch.Tensor:
    """Orientation ``index`` (0..47) of a batch ``x`` (B, C, X, Y, Z); 0 is the identity."""
    perm, flips = SYMMETRIES[index]
    out = x.permute(0, 1, *(2 + p for p in perm))
    return out.flip([2 + f for f in flips]) if flips else out


class CubeSymmetryInferer(Inferer):
    """Log of the mean softmax over ``n`` cube symmetries (1 = no augmentation)."""

    def __init__(self, n: int = 8) -> None:
        super().__init__()
        if not 1 <= int(n) <= len(SYMMETRIES):
            raise ValueError(f"n must be 1..{len(SYMMETRIES)} cube symmetries, got {n}")
        self.n = int(n)

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        probs = None
        for i in range(self.n):
            p = torch.softmax(network(apply_symmetry(inputs, i), *args, **kwargs).float(), dim=1)
            probs = p if probs is None else probs + p
        return torch.log((probs / self.n).clamp_min(1e-12))


class FlipTTAInferer(Inferer):
    """Log of the mean softmax of ``inferer`` over all flip combinations of ``spatial_axes``.

    Only axes the model was trained to be mirror-invariant on (its ``RandFlipd`` axes) make sense here.
    ``spatial_axes=[]`` is the wrapped inferer alone (still returned as log-probabilities).
    """

    def __init__(self, inferer: Inferer, spatial_axes: list[int] | tuple[int, ...] = (0, 1, 2)) -> None:
        super().__init__()
        axes = [int(a) for a in spatial_axes]
        if any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
            raise ValueError(f"spatial_axes must be distinct values of 0, 1, 2, got {list(spatial_axes)}")
        self.inferer = inferer
        self.flips = [
            [2 + a for a in combo] for n in range(len(axes) + 1) for combo in itertools.combinations(axes, n)
        ]

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> Any:
        probs = None
        for dims in self.flips:
            x = inputs.flip(dims) if dims else inputs
            p = torch.softmax(torch.as_tensor(self.inferer(x, network, *args, **kwargs)).float(), dim=1)
            p = p.flip(dims) if dims else p
            probs = p if probs is None else probs + p
        return torch.log((probs / len(self.flips)).clamp_min(1e-12))
