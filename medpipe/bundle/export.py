"""Export and verify a bundle with MONAI's own tools (``ckpt_export``, ``verify_net_in_out``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medpipe.bundle.layout import BundleLayout
from medpipe.errors import Code


def _require_weights(layout: BundleLayout) -> Path:
    if not layout.model_pt.is_file():
        raise Code.BUNDLE_NO_WEIGHTS(
            f"{layout.model_pt} does not exist; train the bundle first (medpipe train --bundle {layout.root})",
        )
    return layout.model_pt


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights of a checkpoint, loaded with ``weights_only=True`` (no pickled code is executed).

    Accepts a plain state dict or MONAI/ignite's ``{"model": state_dict, ...}``.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise Code.CHECKPOINT_UNREADABLE(
            f"{path} is not a weights-only PyTorch checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})",
        ) from None
    if isinstance(ckpt, dict) and "model" in ckpt and isinstance(ckpt["model"], dict):
        ckpt = ckpt["model"]
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise Code.CHECKPOINT_UNREADABLE(f"{path} holds no state dict of tensors")
    return ckpt


def export_torchscript(bundle: str | Path, output: str | Path | None = None) -> dict[str, Any]:
    """``models/model.pt`` -> ``models/model.ts`` with ``monai.bundle.ckpt_export``; then load both
    and check that TorchScript and eager outputs agree on a random input of the metadata's shape."""
    from monai.bundle import ConfigParser, ckpt_export

    layout = BundleLayout.open(bundle)
    ckpt = _require_weights(layout)
    out = Path(output) if output else layout.root / "models" / "model.ts"
    configs = [str(p) for p in layout.workflow_configs("inference")]
    ckpt_export(
        net_id="network_def",
        filepath=str(out),
        ckpt_file=str(ckpt),
        meta_file=str(layout.metadata),
        config_file=configs,
        bundle_root=str(layout.root),
    )
    parser = ConfigParser()
    parser.read_config(configs)
    parser.read_meta(str(layout.metadata))
    parser["bundle_root"] = str(layout.root)
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(load_state_dict(ckpt))
    net.eval()
    fmt = parser.get("_meta_::network_data_format::inputs::image")
    shape = [1, int(fmt["num_channels"])] + [64 if "*" in str(s) else int(s) for s in fmt["spatial_shape"]]
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    ts = torch.jit.load(str(out), map_location="cpu")
    with torch.no_grad():
        diff = float((ts(x) - net(x)).abs().max())
    return {"torchscript": str(out), "max_abs_diff": diff, "input_shape": shape}


def verify_network(bundle: str | Path) -> None:
    """MONAI's ``verify_net_in_out`` on the bundle's network and metadata (raises on mismatch)."""
    from monai.bundle import verify_net_in_out

    layout = BundleLayout.open(bundle)
    try:
        verify_net_in_out(
            net_id="network_def",
            meta_file=str(layout.metadata),
            config_file=[str(p) for p in layout.workflow_configs("inference")],
            device="cpu",
            n=4,
            bundle_root=str(layout.root),
        )
    except (ValueError, RuntimeError) as e:
        raise Code.BUNDLE_NET_IO_MISMATCH(f"verify_net_in_out failed: {str(e).splitlines()[0]}") from e
