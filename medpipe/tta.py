"""Test-time augmentation over the symmetries of the cube, as a MONAI ``Inferer`` for classifiers.

A 3D volume whose orientation carries no meaning (a vessel segment, a nodule crop) can be shown to
the network in any of the cube's 48 orientations: 6 axis permutations x 8 flip combinations.
:class:`CubeSymmetryInferer` averages the softmax of the network over the first ``n`` of them (8: the
flips only; 48: all) and returns the **log** of that mean, so a bundle's ``Activationsd(softmax=True)``
post-processing turns it back into exactly the averaged probabilities, and ``argmax`` is unchanged.
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
