"""Mixed-precision inference and training forward passes on any device, set from a bundle config.

MONAI's engines only know CUDA autocast (``SupervisedTrainer(amp=True)`` enters
``torch.autocast("cuda")`` and builds a CUDA ``GradScaler``). On CPUs with bf16 support (AVX512-BF16 /
AMX) autocast to bfloat16 speeds 3D convolutions up 1.4-2x, and bf16 keeps float32's exponent range so
no loss scaling is needed. Engines call ``inferer(inputs, network)`` for every forward pass, so wrapping
the bundle's inferer is the one place a config can switch it on::

    "inferer": {"_target_": "medpipe.inferers.AutocastInferer",
                "inferer": {"_target_": "SimpleInferer"}, "dtype": "bfloat16"}

The network's weights, the optimizer state and the gradients stay float32; only the forward ops that
autocast lists run in bf16. The output is returned as float32 so losses, softmax and metrics run at full
precision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer, SimpleInferer, SlidingWindowInferer
from monai.utils import fall_back_tuple

from medpipe.lungs import LungField, lung_field_of

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


class AutocastInferer(Inferer):
    """Run ``inferer`` under ``torch.autocast`` for the device the inputs are on.

    Args:
        inferer: the inferer to wrap (``SimpleInferer`` when omitted).
        dtype: ``"bfloat16"`` (default) or ``"float16"``.
        enabled: ``True``, ``False`` (a plain pass-through, so one config key switches precision) or
            ``"auto"``: on only where the hardware computes in ``dtype`` natively (a CUDA device with
            bf16/fp16, a CPU with AVX512-BF16 or AMX for bf16). Without native support autocast is
            emulated and slower than float32, so "auto" leaves it off there.
    """

    def __init__(
        self, inferer: Inferer | None = None, dtype: str = "bfloat16", enabled: bool | str = "auto"
    ) -> None:
        super().__init__()
        if dtype not in _DTYPES:
            raise ValueError(f"AutocastInferer dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if enabled not in (True, False, "auto"):
            raise ValueError(f"AutocastInferer enabled must be true, false or 'auto', got {enabled!r}")
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.dtype = _DTYPES[dtype]
        self.enabled = enabled

    def active(self, device: torch.device) -> bool:
        """Whether a forward pass on ``device`` runs under autocast."""
        if self.enabled != "auto":
            return bool(self.enabled)
        return native_support(device, self.dtype)

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.active(inputs.device):
            return self.inferer(inputs, network, *args, **kwargs)
        with torch.autocast(inputs.device.type, dtype=self.dtype):
            out = self.inferer(inputs, network, *args, **kwargs)
        return _to_float(out)


def native_support(device: torch.device, dtype: torch.dtype) -> bool:
    """True where ``device`` computes ``dtype`` in hardware (so autocast to it is a speed-up)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported() if dtype == torch.bfloat16 else torch.cuda.is_available()
    if device.type == "cpu":
        if dtype == torch.bfloat16:
            return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        return bool(torch.cpu._is_amx_fp16_supported())
    return False


def _to_float(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, (list, tuple)):
        return type(out)(_to_float(o) for o in out)
    if isinstance(out, dict):
        return {k: _to_float(v) for k, v in out.items()}
    return out


class LungWindowInferer(SlidingWindowInferer):
    """MONAI's ``SlidingWindowInferer`` that runs the network only on windows overlapping the lung field.

    For a lesion bundle whose post-processing keeps foreground only inside the lung field
    (:class:`~medpipe.lungs.RestrictToLungsd`, with the same ``hu_window`` and field parameters), a window
    with no lung voxel changes nothing that is kept: every voxel inside the field lies in windows that
    overlap the field, and all of those are computed, so its blended logits are exactly those of the
    plain sliding window; outside the field the restriction sets every voxel to background whatever the
    logits. Skipped windows get logits of 0: 150 of the 294 windows of LIDC-IDRI-0003, 5 of the 125
    of the CPTAC CT (``benchmarks/infer_speed.py``). Computing whole batches instead (one input shape
    for oneDNN) computed 200 windows on LIDC-IDRI-0003 and gained nothing on the CPTAC CT. The lung field is computed once per image
    (:func:`~medpipe.lungs.lung_field_of`) on the preprocessed input, as the restriction computes it.

    Args:
        roi_size, sw_batch_size, overlap, mode, ...: as ``SlidingWindowInferer`` (``buffer_steps`` unsupported).
        hu_window: the ``ScaleIntensityRanged`` window that scaled HU to [0, 1] (the bundle's ``hu_window``).
        skip: ``False`` computes every window (a plain ``SlidingWindowInferer``).
        field: :class:`~medpipe.lungs.LungField` parameters, as given to ``RestrictToLungsd``.
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        sw_batch_size: int = 1,
        overlap: Sequence[float] | float = 0.25,
        mode: str = "constant",
        hu_window: Sequence[float] = (-1000.0, 400.0),
        skip: bool = True,
        field: Mapping[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("buffer_steps"):
            raise ValueError("LungWindowInferer does not support buffer_steps")
        super().__init__(roi_size, sw_batch_size, overlap, mode, with_coord=bool(skip), **kwargs)
        self.window = (float(hu_window[0]), float(hu_window[1]))
        self.field = LungField(**dict(field or {}))
        self.skip = bool(skip)
        #: windows computed and skipped by the last call
        self.computed = self.skipped = 0

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.skip:
            return super().__call__(inputs, network, *args, **kwargs)
        masks = [self._padded_field(inputs[b]) for b in range(inputs.shape[0])]
        self.computed = self.skipped = 0
        channels: list[torch.Size] = []

        def predictor(windows: torch.Tensor, coords: Sequence[Sequence[slice]], *a: Any, **kw: Any) -> Any:
            keep = [i for i, c in enumerate(coords) if masks[c[0].start][tuple(c[2:])].any()]
            self.computed += len(keep)
            self.skipped += len(coords) - len(keep)
            if len(keep) == len(coords):
                out = network(windows, *a, **kw)
                if isinstance(out, torch.Tensor):
                    channels[:] = [out.shape[1:]]
                return out
            if not channels:  # nothing computed yet: one window tells the output's channels and size
                channels.append(network(windows[:1], *a, **kw).shape[1:])
            computed = network(windows[keep], *a, **kw) if keep else None
            dtype = computed.dtype if computed is not None else windows.dtype
            out = torch.zeros((len(coords), *channels[0]), dtype=dtype, device=windows.device)
            if computed is not None:
                out[keep] = computed
            return out

        return super().__call__(inputs, predictor, *args, **kwargs)

    def _padded_field(self, image: torch.Tensor) -> np.ndarray:
        """The lung field of one (C, X, Y, Z) input, padded as ``sliding_window_inference`` pads the input."""
        field = lung_field_of(image, self.window, self.field)
        roi = fall_back_tuple(self.roi_size, field.shape)
        pad = [
            (max(r - n, 0) // 2, max(r - n, 0) - max(r - n, 0) // 2)
            for r, n in zip(roi, field.shape, strict=True)
        ]
        return np.pad(field, pad) if any(p != (0, 0) for p in pad) else field
