"""Where a bundle's network runs when it predicts: eager PyTorch, ONNX Runtime or OpenVINO (``--backend``).

The two exported backends run the ONNX file MONAI's ``convert_to_onnx`` (what ``python -m monai.bundle
onnx_export`` calls) makes of the bundle's ``network_def`` with its weights: batch axis dynamic, spatial
size that of the bundle's window (``roi_size``) or of its metadata input. OpenVINO reads the same file,
so one export serves both. A bundle may ship it as ``models/model.onnx`` (``medpipe export --onnx``), with
its sha256 in ``metadata.json`` like ``model.pt``'s; for other weights, or a bundle without the file, it is
exported on the fly into a temporary folder (2 s for the lung UNet).

Whatever its origin, a backend network is checked against the eager network before it is used
(:func:`check_against_eager`): both run the same deterministic window, and the largest logit difference
must stay within the tolerance of its precision, or the command stops with ``BACKEND_MISMATCH``.

Each backend network is a ``torch.nn.Module`` taking and returning float32 tensors, so MONAI's inferers
(sliding window, TTA) call it as they call the eager network. Precision: ``fp32``, ``bf16`` or ``auto``
(bf16 where the hardware computes it natively: AVX512-BF16 / AMX CPUs; see
:func:`medpipe.inferers.native_support`). For ``torch`` it is autocast (:class:`~medpipe.inferers.AutocastInferer`),
for OpenVINO its ``INFERENCE_PRECISION_HINT``; ONNX Runtime's CPU provider computes float32 only.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medpipe.errors import Code, look_up
from medpipe.inferers import native_support

BACKENDS = ("torch", "onnxruntime", "openvino")
PRECISIONS = ("auto", "fp32", "bf16")
ONNX_FILE = "model.onnx"
#: the largest |logit difference| to eager on the check window, relative to the largest |logit|
TOLERANCE = {"fp32": 1e-3, "bf16": 0.1}


def resolved_precision(precision: str, backend: str = "torch") -> str:
    """``fp32`` or ``bf16`` for ``precision`` on this machine's CPU (``auto``: bf16 where it is native)."""
    precision = look_up(precision, PRECISIONS, what="--precision", code=Code.BACKEND_BAD_OPTION)
    if backend == "onnxruntime":
        if precision == "bf16":
            raise Code.BACKEND_BAD_OPTION(
                "--precision bf16 with --backend onnxruntime: its CPU provider computes float32 only; use "
                "--backend openvino or torch for bf16"
            )
        return "fp32"
    if precision == "auto":
        return "bf16" if native_support(torch.device("cpu"), torch.bfloat16) else "fp32"
    return precision


def export_onnx(network: torch.nn.Module, path: str | Path, input_shape: Sequence[int]) -> float:
    """Write ``network`` (eval mode, CPU) as ONNX at ``path`` with MONAI's ``convert_to_onnx`` (dynamic
    batch axis, ``input_shape`` = (C, X, Y, Z) of one window), verified with ONNX Runtime against eager
    on a batch of 2 (rtol 1e-4, atol 1e-4). Returns the largest difference of that check."""
    from monai.networks.utils import convert_to_onnx

    _require("onnxruntime", "onnx")
    network = network.eval()
    x = check_window(input_shape, batch=2)
    try:
        convert_to_onnx(
            network, [x], input_names=["image"], output_names=["pred"], opset_version=18,
            dynamic_axes={"image": {0: "batch"}, "pred": {0: "batch"}}, filename=str(path),
            verify=True, use_ort=True, rtol=1e-4, atol=1e-4, dynamo=False,
        )  # fmt: skip
    except AssertionError as e:
        raise Code.BACKEND_MISMATCH(
            f"the ONNX export does not reproduce the network: {str(e).splitlines()[0]}"
        ) from None
    net = OnnxRuntimeNetwork(path)
    with torch.no_grad():
        return float((net(x) - network(x)).abs().max())


def check_window(input_shape: Sequence[int], batch: int = 1) -> torch.Tensor:
    """The deterministic input of the checks: uniform [0, 1) noise of (batch, *input_shape), seed 0."""
    return torch.rand(batch, *[int(s) for s in input_shape], generator=torch.Generator().manual_seed(0))


def check_against_eager(
    net: torch.nn.Module, eager: torch.nn.Module, input_shape: Sequence[int], precision: str, name: str
) -> float:
    """``BACKEND_MISMATCH`` unless ``net`` gives ``eager``'s logits on :func:`check_window` within
    :data:`TOLERANCE` (relative to the largest eager logit); returns that relative difference."""
    x = check_window(input_shape)
    with torch.no_grad():
        ref = eager(x).float()
        out = net(x).float()
    if out.shape != ref.shape:
        raise Code.BACKEND_MISMATCH(
            f"{name} gives output {tuple(out.shape)}, the eager network {tuple(ref.shape)}"
        )
    rel = float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-6))
    if not np.isfinite(rel) or rel > TOLERANCE[precision]:
        raise Code.BACKEND_MISMATCH(
            f"{name} ({precision}) differs from the eager network by {rel:.3g} of its largest logit on the check "
            f"window (tolerance {TOLERANCE[precision]}): the exported file does not hold these weights; re-export "
            "it (medpipe export --onnx) or use --backend torch"
        )
    return rel


def _require(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise Code.BACKEND_UNAVAILABLE(
            f"{' and '.join(missing)} not installed: pip install 'medpipe[fast]' (onnx, onnxruntime, openvino)"
        )


class OnnxRuntimeNetwork(torch.nn.Module):
    """An ONNX file run by ONNX Runtime's CPU provider, called like the network it was exported from."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        _require("onnxruntime")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise Code.BACKEND_FAILED(
                f"ONNX Runtime cannot load {Path(path).name}: {str(e).splitlines()[0]}"
            ) from None
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().float().numpy())
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


class OpenVinoNetwork(torch.nn.Module):
    """An ONNX file compiled by OpenVINO for the CPU, in ``precision`` (``fp32`` or ``bf16``)."""

    def __init__(self, path: str | Path, precision: str = "fp32", threads: int | None = None) -> None:
        super().__init__()
        _require("openvino")
        import openvino as ov

        config = {
            "INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision],
            "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
            "PERFORMANCE_HINT": "LATENCY",
        }
        try:
            self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses of its own
            raise Code.BACKEND_FAILED(
                f"OpenVINO cannot compile {Path(path).name}: {str(e).splitlines()[0]}"
            ) from None
        self.request = self.compiled.create_infer_request()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().float().numpy())
        return torch.from_numpy(np.array(self.request.infer({0: array})[0], dtype=np.float32, copy=True))


def backend_network(
    backend: str,
    eager: torch.nn.Module,
    input_shape: Sequence[int],
    precision: str,
    onnx_path: Path | None = None,
    threads: int | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The network ``backend`` runs, checked against ``eager``, and what was done (for the run's record).

    ``onnx_path`` is the bundle's shipped export when it is for these weights, else ``None`` (exported
    here into a temporary folder)."""  # fmt: skip
    backend = look_up(backend, BACKENDS, what="--backend", code=Code.BACKEND_BAD_OPTION)
    precision = resolved_precision(precision, backend)
    info: dict[str, Any] = {"backend": backend, "precision": precision}
    if backend == "torch":
        return eager, info
    _require("onnx", backend)
    with tempfile.TemporaryDirectory(prefix="medpipe-onnx-") as tmp:
        if onnx_path is None:
            onnx_path = Path(tmp) / ONNX_FILE
            export_onnx(eager, onnx_path, input_shape)
            info["onnx"] = "exported for these weights"
        else:
            info["onnx"] = str(onnx_path.name)
        if backend == "onnxruntime":
            net: torch.nn.Module = OnnxRuntimeNetwork(onnx_path, threads)
        else:
            net = OpenVinoNetwork(onnx_path, precision, threads)
    info["check_rel_diff"] = check_against_eager(net, eager, input_shape, precision, backend)
    return net, info


def bundle_precision(inferer: Any) -> str:
    """The precision a bundle's inference config sets: its :class:`~medpipe.inferers.AutocastInferer`'s."""
    from medpipe.inferers import AutocastInferer

    if not isinstance(inferer, AutocastInferer):
        return "fp32"
    if inferer.enabled == "auto":
        return "auto"
    return "bf16" if inferer.enabled and inferer.dtype == torch.bfloat16 else "fp32"


def with_autocast(inferer: Any, on: bool) -> Any:
    """``inferer`` computing under bf16 autocast (``on``) or in float32."""
    from medpipe.inferers import AutocastInferer

    if isinstance(inferer, AutocastInferer):
        inferer.enabled, inferer.dtype = bool(on), torch.bfloat16
        return inferer
    return AutocastInferer(inferer, "bfloat16", enabled=True) if on else inferer


def window_shape(metadata: dict[str, Any], roi_size: Sequence[int] | None) -> list[int]:
    """(C, X, Y, Z) of one network input: the sliding window's ``roi_size``, else the metadata's input."""
    image = metadata.get("network_data_format", {}).get("inputs", {}).get("image", {})
    spatial = list(roi_size) if roi_size is not None else list(image.get("spatial_shape") or [])
    if not spatial or any(not str(s).isdigit() for s in spatial):
        raise Code.BACKEND_BAD_OPTION(
            f"the bundle's network has no fixed input size (roi_size or spatial_shape {spatial}) to export"
        )
    return [int(image.get("num_channels", 1))] + [int(s) for s in spatial]


def channels_last(network: torch.nn.Module) -> torch.nn.Module:
    """On the CPU, ``network``'s convolution weights in channels-last order (in place), so that oneDNN
    runs its convolutions channels-last: 1.35x faster windows of the lung UNet here (13.5 vs 18.6 ms,
    ``benchmarks/infer_speed.py``), logits within 4e-6 of the contiguous layout. Elsewhere unchanged."""
    params = list(network.parameters())
    if not params or params[0].device.type != "cpu":
        return network
    dims = {p.dim() for p in params}
    if 5 in dims:
        return network.to(memory_format=torch.channels_last_3d)
    if 4 in dims:
        return network.to(memory_format=torch.channels_last)
    return network


def run_on_backend(
    network: torch.nn.Module,
    inferer: Any,
    layout: Any,
    weights: Any,
    metadata: dict[str, Any],
    wf: Any,
    backend: str,
    precision: str | None,
) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """(network, inferer, record) of a bundle opened for prediction on ``backend`` in ``precision``
    (``None``: the bundle's own, :func:`bundle_precision`). The shipped ``models/model.onnx`` serves the
    shipped weights when ``metadata.json`` records its sha256 (checked as ``model.pt``'s); any other
    weights are exported here."""  # fmt: skip
    from medpipe.bundle.weights import check_shipped
    from medpipe.bundle.workflow import parsed

    backend = look_up(backend, BACKENDS, what="--backend", code=Code.BACKEND_BAD_OPTION)
    wanted = precision if precision is not None else bundle_precision(inferer)
    resolved = resolved_precision(wanted, backend)
    device = next(network.parameters()).device
    if backend == "torch":
        if precision is not None:
            inferer = with_autocast(inferer, resolved == "bf16")
        channels_last(network)
        return network, inferer, {"backend": "torch", "precision": wanted if precision is None else resolved}
    if device.type != "cpu":
        raise Code.BACKEND_BAD_OPTION(
            f"--backend {backend} runs on the CPU; the bundle runs on {device}: use --backend torch"
        )
    roi = parsed(wf, "roi_size") if "roi_size" in wf.parser else None
    shape = window_shape(metadata, roi)
    shipped = layout.root / "models" / ONNX_FILE
    onnx_path = None
    # the shipped export serves the shipped weights when medpipe export --onnx recorded it for them
    # (promote records the new model.pt alone, so an export of earlier weights is not used)
    if weights.shipped and shipped.is_file() and ONNX_FILE in (metadata.get("weights_sha256") or {}):
        check_shipped(layout.metadata, shipped)
        onnx_path = shipped
    net, info = backend_network(backend, network, shape, resolved, onnx_path)
    return net, with_autocast(inferer, False), info
