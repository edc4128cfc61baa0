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

from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer

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
