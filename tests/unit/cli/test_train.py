"""CLI errors: one line, a stable code, exit status 3, never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from medpipe.cli import cli
from medpipe.errors import EXIT_INPUT_ERROR
from tests.conftest import BUNDLE


def run(*args: str):
    result = CliRunner().invoke(cli, list(args))
    return result


def assert_coded(result, code: str) -> str:
    assert result.exit_code == EXIT_INPUT_ERROR, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(f"error: {code}: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_missing_bundle_folder(tmp_path: Path) -> None:
    assert_coded(run("train", "--bundle", str(tmp_path / "nope")), "BUNDLE_NOT_FOUND")


def test_bundle_without_configs(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    assert_coded(run("train", "--bundle", str(tmp_path / "b")), "BUNDLE_NO_CONFIGS")


def test_bundle_without_train_config(tmp_path: Path) -> None:
    b = tmp_path / "b"
    shutil.copytree(BUNDLE / "configs", b / "configs")
    (b / "configs" / "train.json").unlink()
    assert_coded(run("train", "--bundle", str(b)), "BUNDLE_MISSING_CONFIG")


def test_unknown_set_id_names_closest(tmp_path: Path) -> None:
    line = assert_coded(
        run("train", "--bundle", str(BUNDLE), "--set", "train::dataloader::batchsize=4"), "CONFIG_UNKNOWN_ID"
    )
    assert "train::dataloader::batch_size" in line


def test_bad_set_syntax() -> None:
    assert_coded(run("train", "--bundle", str(BUNDLE), "--set", "max_epochs"), "CONFIG_BAD_OVERRIDE")


def test_manifest_with_missing_files_lists_them(tmp_path: Path) -> None:
    m = tmp_path / "m.json"
    m.write_text(json.dumps({
        "training": [{"image": f"img{i}.nii.gz", "label": f"lab{i}.nii.gz"} for i in range(3)],
        "validation": [{"image": "v.nii.gz", "label": "vl.nii.gz"}],
    }))
    line = assert_coded(run("train", "--bundle", str(BUNDLE), "--manifest", str(m)), "MANIFEST_MISSING_FILES")
    assert "img0.nii.gz" in line and "lab0.nii.gz" in line


def test_empty_split(tiny_dataset: Path, tmp_path: Path) -> None:
    content = json.loads(tiny_dataset.read_text())
    content["validation"] = []
    content["dataset_dir"] = str(tiny_dataset.parent / "data")
    m = tmp_path / "m.json"
    m.write_text(json.dumps(content))
    line = assert_coded(run("train", "--bundle", str(BUNDLE), "--manifest", str(m)), "MANIFEST_EMPTY_SPLIT")
    assert "validation" in line


def test_missing_manifest(tmp_path: Path) -> None:
    assert_coded(run("train", "--bundle", str(BUNDLE), "--manifest", str(tmp_path / "x.json")),
                 "MANIFEST_NOT_FOUND")


def test_cuda_on_a_cpu_machine() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_coded(run("train", "--bundle", str(BUNDLE), "--device", "cuda"), "DEVICE_UNAVAILABLE")


def test_export_without_weights(tmp_path: Path) -> None:
    b = tmp_path / "b"
    shutil.copytree(BUNDLE / "configs", b / "configs")
    assert_coded(run("export", "--bundle", str(b)), "BUNDLE_NO_WEIGHTS")


def test_invalid_component_value_is_one_line(tiny_dataset: Path, tmp_path: Path) -> None:
    line = assert_coded(
        run("train", "--bundle", str(BUNDLE), "--manifest", str(tiny_dataset),
            "--set", f"ckpt_dir={tmp_path}", "--set", "network_def::norm=nonsense"),
        "CONFIG_INVALID",
    )
    assert "UNet" in line and "NONSENSE" in line.upper()
    assert not (tmp_path / "model.pt").exists()  # refused before any training


def test_usage_error_exit_2() -> None:
    assert run("train").exit_code == 2


def test_a_refused_training_leaves_no_run_folder(tiny_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # runs/ goes under the current directory by default
    assert_coded(run("train", "--bundle", str(BUNDLE), "--set", "train::dataloader::batchsize=4"), "CONFIG_UNKNOWN_ID")
    assert_coded(
        run("train", "--bundle", str(BUNDLE), "--manifest", str(tiny_dataset), "--set", "network_def::norm=nonsense"),
        "CONFIG_INVALID",
    )  # refused while building the trainer, after TensorBoard's writer made its folder
    assert not (tmp_path / "runs").exists()


def test_train_refuses_an_output_folder_that_holds_another_run(tiny_dataset: Path, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.pt").write_bytes(b"earlier run")
    line = assert_coded(
        run("train", "--bundle", str(BUNDLE), "--manifest", str(tiny_dataset), "--output", str(tmp_path / "run")),
        "CONFIG_BAD_OVERRIDE",
    )
    assert "not empty" in line and (tmp_path / "run" / "model.pt").read_bytes() == b"earlier run"
