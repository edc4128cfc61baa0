"""medpipe.backends: ONNX Runtime and OpenVINO run the bundle's network, checked against eager PyTorch."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from medpipe.backends import check_window, resolved_precision
from medpipe.bundle.model import BundleModel
from medpipe.errors import MedpipeError
from tests.conftest import REPO, copy_with_random_weights, seal_weights

# find_spec, not importorskip: importing onnxruntime and openvino while pytest collects made the patient-data
# test, which raises every logger to DEBUG, crash the run ("lost sys.stderr"); they are imported when used
pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxruntime", "openvino")),
    reason="the onnxruntime and openvino backends need pip install 'medpipe[fast]'",
)

LUNG = REPO / "bundles" / "lung_nodule_ct"
WINDOW = (1, 64, 64, 32)


def _logits(model: BundleModel, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.network(x).float()


@pytest.fixture(scope="module")
def eager() -> BundleModel:
    return BundleModel.open(LUNG, backend="torch", precision="fp32")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_shipped_export_gives_the_eager_logits(eager: BundleModel, backend: str) -> None:
    model = BundleModel.open(LUNG, backend=backend, precision="fp32")
    assert model.backend["onnx"] == "model.onnx" and model.backend["check_rel_diff"] < 1e-4
    x = torch.rand(3, *WINDOW, generator=torch.Generator().manual_seed(5))  # another batch size than exported
    a, b = _logits(model, x), _logits(eager, x)
    assert a.shape == b.shape and float((a - b).abs().max()) < 1e-3 * float(b.abs().max())
    assert type(model.inferer).__name__ == "AutocastInferer" and model.inferer.enabled is False


def test_openvino_bf16_stays_near_eager_and_torch_precision_switches_autocast(eager: BundleModel) -> None:
    if resolved_precision("auto") != "bf16":
        pytest.skip("this CPU has no native bf16 (AVX512-BF16 / AMX)")
    ov = BundleModel.open(LUNG, backend="openvino", precision="bf16")
    assert ov.backend["precision"] == "bf16" and 1e-6 < ov.backend["check_rel_diff"] < 0.1
    torch_bf16 = BundleModel.open(LUNG, precision="bf16")
    assert torch_bf16.inferer.enabled is True and torch_bf16.backend == {
        "backend": "torch",
        "precision": "bf16",
    }
    assert BundleModel.open(LUNG).backend == {
        "backend": "torch",
        "precision": "fp32",
    }  # the bundle's own (0.2.3)


def test_other_weights_are_exported_on_the_fly(tmp_path: Path) -> None:
    bundle = copy_with_random_weights(LUNG, tmp_path / "b", seed=3)
    model = BundleModel.open(bundle, backend="onnxruntime")
    assert model.backend["onnx"] == "exported for these weights"
    eager = BundleModel.open(bundle, precision="fp32")
    x = check_window(WINDOW)
    assert torch.allclose(_logits(model, x), _logits(eager, x), atol=1e-4)


def _copy_with_export(tmp_path: Path) -> Path:
    bundle = tmp_path / "lung"
    shutil.copytree(LUNG, bundle, ignore=shutil.ignore_patterns("eval", "runs"))
    return bundle


def test_a_stale_or_tampered_export_is_refused(tmp_path: Path) -> None:
    bundle = _copy_with_export(tmp_path)
    # new weights promoted by hand with the old export still recorded: the check against eager refuses it
    torch.manual_seed(1)
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    torch.save({k: torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()},
               bundle / "models" / "model.pt")  # fmt: skip
    meta_path = bundle / "configs" / "metadata.json"
    onnx_sha = json.loads(meta_path.read_text())["weights_sha256"]["model.onnx"]
    seal_weights(bundle)  # records model.pt alone, as promote does ...
    meta = json.loads(meta_path.read_text())
    meta["weights_sha256"]["model.onnx"] = onnx_sha  # ... and someone keeps the export's record
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(MedpipeError) as err:
        BundleModel.open(bundle, backend="onnxruntime")
    assert err.value.code == "BACKEND_MISMATCH" and "re-export" in err.value.message
    # a flipped byte in the export: its recorded sha256 refuses it before it is loaded
    onnx = bundle / "models" / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 1
    onnx.write_bytes(bytes(data))
    with pytest.raises(MedpipeError) as err:
        BundleModel.open(bundle, backend="openvino")
    assert err.value.code == "BUNDLE_WEIGHTS_TAMPERED"


def test_bad_backend_options_have_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MedpipeError) as err:
        BundleModel.open(LUNG, backend="onnxruntime", precision="bf16")
    assert err.value.code == "BACKEND_BAD_OPTION"
    with pytest.raises(MedpipeError) as err:
        BundleModel.open(LUNG, backend="tensorrt")
    assert err.value.code == "BACKEND_BAD_OPTION" and "onnxruntime" in err.value.message
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a)
    )
    with pytest.raises(MedpipeError) as err:
        BundleModel.open(LUNG, backend="openvino")
    assert err.value.code == "BACKEND_UNAVAILABLE" and "medpipe[fast]" in err.value.message


def test_infer_cli_on_openvino_writes_the_torch_mask_and_redoes_series_of_another_backend(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    import nibabel as nib
    import numpy as np
    from click.testing import CliRunner

    from medpipe.cli import cli

    image = next((tiny_dataset.parent / "data").rglob("*.nii.gz"))
    base = ["infer", "--bundle", str(LUNG), "--input", str(image), "--format", "nifti"]

    def mask(out: Path, *extra: str) -> np.ndarray:
        result = CliRunner().invoke(cli, [*base, "--output", str(out), *extra])
        assert result.exit_code == 0, result.output
        return np.asarray(nib.load(next(out.rglob("*_seg.nii.gz"))).dataobj)

    torch_mask = mask(tmp_path / "torch", "--precision", "fp32")
    ov_mask = mask(tmp_path / "torch", "--backend", "openvino", "--precision", "fp32")  # same folder: redone
    assert json.loads((tmp_path / "torch" / "summary.json").read_text())["done"] == 1
    assert torch_mask.any() and np.array_equal(torch_mask, ov_mask)
    again = CliRunner().invoke(cli, [*base, "--output", str(tmp_path / "torch"), "--backend", "openvino",
                                     "--precision", "fp32"])  # fmt: skip
    assert "0 done, 1 skipped" in again.output and "(openvino, fp32)" in again.output


def test_torch_backend_runs_channels_last_with_the_contiguous_logits(eager: BundleModel) -> None:
    from medpipe.bundle.weights import load_weights
    from medpipe.bundle.workflow import build_workflow, parsed

    conv = next(p for p in eager.network.parameters() if p.dim() == 5 and p.shape[1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last_3d) and not conv.is_contiguous()
    plain = parsed(build_workflow(eager.layout, "inference", {}), "network_def")
    load_weights(plain, eager.weights.path)
    x = torch.rand(2, *WINDOW, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, b = _logits(eager, x), plain.eval()(x)
    assert float((a - b).abs().max()) < 1e-5 * float(b.abs().max())
