"""Training-time transforms: MONAI's own, with a fast path where MONAI's generality costs most of the time.

:class:`RandAffined` is ``monai.transforms.RandAffined`` (same arguments, same random draws, same
grid from MONAI's ``RandAffineGrid``) that, for plain tensors in the training tail, converts the
sampling grid to ``grid_sample``'s coordinates once for all keys and samples (in float64 like MONAI:
on this CPU torch's 3D ``grid_sample`` is faster in float64 than in float32). MONAI's ``Resample``
re-derives and converts the grid for every key; on a 40x56x40 patch with image and label its call
costs about 5 ms of which ``grid_sample`` is 1.8 ms. Metadata-carrying inputs
(``MetaTensor``, which may have to be inverted later), lazy resampling, a changed output size and modes
``grid_sample`` does not have take MONAI's path unchanged. Run it inside :class:`WithoutMetadata` (the
random tail of a training chain) to get plain tensors.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from monai.config import USE_COMPILED
from monai.data import MetaTensor, get_track_meta, set_track_meta
from monai.transforms import Compose
from monai.transforms import RandAffined as _MonaiRandAffined

_MODES = {"bilinear", "nearest"}
_PADDING = {"zeros", "border", "reflection"}


def grid_sample_theta(matrix: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """``F.affine_grid``'s theta (1, n, n+1) for MONAI's affine ``matrix`` on a grid of ``size``.

    MONAI samples the input at ``matrix @ c`` for output voxel coordinates ``c`` centred on the volume
    (``c_i = k_i - (n_i - 1) / 2``), then normalises by ``2 / n_i`` (``align_corners=False``). affine_grid
    starts from the same normalised coordinates ``x = S c`` (``S = diag(2 / n_i)``) with the axes
    reversed (x is the last dimension), so theta is ``P S M S^-1 P`` with translation ``P S t``.
    """
    n = len(size)
    s = torch.tensor([2.0 / max(2, k) for k in size], dtype=torch.float64)
    lin = s[:, None] * matrix[:n, :n] / s[None, :]
    shift = s * matrix[:n, n]
    rev = list(range(n - 1, -1, -1))
    return torch.cat([lin[rev][:, rev], shift[rev, None]], dim=1)[None]


class RandAffined(_MonaiRandAffined):
    """``monai.transforms.RandAffined`` with a grid-once fast path for plain tensors."""

    def _fast_path_ok(self, d: Mapping[Hashable, Any], lazy: bool | None) -> bool:
        keys = list(self.key_iterator(d))
        return bool(
            keys
            and not (self.lazy if lazy is None else lazy)
            and not USE_COMPILED
            and self.rand_affine.spatial_size is None
            and all(isinstance(d[k], torch.Tensor) and not isinstance(d[k], MetaTensor) for k in keys)
            and all(str(m) in _MODES for m in self.mode)
            and all(str(p) in _PADDING for p in self.padding_mode)
        )

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        if not self._fast_path_ok(data, lazy):
            return super().__call__(data, lazy)
        d = dict(data)
        self.randomize(None)
        self.rand_affine.randomize()  # the same draws, in the same order, as MONAI's path
        keys = list(self.key_iterator(d))
        if not self._do_transform:
            for key in keys:
                d[key] = d[key].float()
            return d
        size = tuple(int(s) for s in d[keys[0]].shape[1:])
        # MONAI's own random matrix (same draws as its path), without building MONAI's voxel grid
        self.rand_affine.rand_affine_grid(size, lazy=True)
        matrix = torch.as_tensor(
            self.rand_affine.rand_affine_grid.get_transformation_matrix(), dtype=torch.float64
        )
        grid = F.affine_grid(grid_sample_theta(matrix, size), [1, 1, *size], align_corners=False)
        for key, mode, padding_mode in self.key_iterator(d, self.mode, self.padding_mode):
            # MONAI's path calls RandAffine(..., randomize=True, grid=grid) per key: the draws are
            # discarded (the shared grid wins) but consumed; consume them too so the streams stay equal
            self.rand_affine.randomize()
            img = d[key].double()[None]
            out = F.grid_sample(
                img, grid, mode=str(mode), padding_mode=str(padding_mode), align_corners=False
            )
            d[key] = out[0].float()
        return d


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_tensor() if isinstance(x, MetaTensor) else x


class WithoutMetadata(Compose):
    """A ``Compose`` whose transforms run on plain tensors, with MONAI's metadata tracking off.

    For the random tail of a training chain, after the cached deterministic head (which does need the
    metadata: orientation, spacing). Training never inverts its augmentation, and without a
    ``MetaTensor`` per step every transform and the batch collation skip their bookkeeping: on the
    hippocampus patches that is most of the tail's cost. Being a ``Compose`` (so ``Randomizable``), it
    is where ``CacheDataset`` stops caching, and ``set_random_state`` reaches the transforms inside.

    Tracking is switched off only for the duration of the call and restored after, so it is safe with
    ``DataLoader`` worker processes; do not share one instance across threads.
    """

    def __call__(self, input_: Any, *args: Any, **kwargs: Any) -> Any:
        previous = get_track_meta()
        set_track_meta(False)
        try:
            if isinstance(input_, Mapping):
                input_ = {k: _plain(v) if isinstance(v, torch.Tensor) else v for k, v in input_.items()}
            return super().__call__(input_, *args, **kwargs)
        finally:
            set_track_meta(previous)
