"""Export and verify a bundle with MONAI's own tools (``ckpt_export``, ``verify_net_in_out``, ``convert_to_onnx``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser, ckpt_export, verify_net_in_out

from medpipe.atomic import atomic_path, atomic_write_text, file_sha256
from medpipe.bundle.layout import BundleLayout
from medpipe.bundle.weights import load_weights, resolve_weights
from medpipe.errors import Code


def export_torchscript(bundle: str | Path, output: str | Path | None = None) -> dict[str, Any]:
    """``models/model.pt`` -> ``models/model.ts`` with ``monai.bundle.ckpt_export``; then load both
    and check that TorchScript and eager outputs agree on a random input of the metadata's shape."""
    layout = BundleLayout.open(bundle)
    ckpt = resolve_weights(layout).path
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
    load_weights(net, ckpt)
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


def export_onnx_model(bundle: str | Path, output: str | Path | None = None) -> dict[str, Any]:
    """``models/model.pt`` -> ``models/model.onnx`` (:func:`medpipe.backends.export_onnx`: MONAI's
    ``convert_to_onnx``, dynamic batch, one window of the bundle's ``roi_size``), checked with ONNX Runtime
    and OpenVINO against eager. Into the bundle (no ``output``), its sha256 is recorded in
    ``metadata.json``'s ``weights_sha256`` beside ``model.pt``'s, so ``--backend`` uses it for the shipped
    weights: a deliberate change of a shipped bundle, like promoting weights."""
    from medpipe.backends import ONNX_FILE, backend_network, export_onnx, window_shape
    from medpipe.bundle.workflow import build_workflow, parsed

    layout = BundleLayout.open(bundle)
    ckpt = resolve_weights(layout)
    wf = build_workflow(layout, "inference", {})
    net = parsed(wf, "network_def")
    load_weights(net, ckpt.path)
    net.eval()
    meta = json.loads(layout.metadata.read_text(encoding="utf-8"))
    shape = window_shape(meta, parsed(wf, "roi_size") if "roi_size" in wf.parser else None)
    out = Path(output) if output else layout.root / "models" / ONNX_FILE
    with atomic_path(out) as tmp:
        ort_diff = export_onnx(net, tmp, shape)
        checks = {b: backend_network(b, net, shape, "fp32", Path(tmp))[1]["check_rel_diff"]
                  for b in ("onnxruntime", "openvino")}  # fmt: skip
    if output is None:
        meta["weights_sha256"] = {**(meta.get("weights_sha256") or {}), ONNX_FILE: file_sha256(out)}
        atomic_write_text(layout.metadata, json.dumps(meta, indent=4, ensure_ascii=False) + "\n")
    return {"onnx": str(out), "input_shape": shape, "max_abs_diff": ort_diff, "check_rel_diff": checks,
            "mb": round(out.stat().st_size / 1e6, 1), "from_weights_sha256": ckpt.sha256}  # fmt: skip
