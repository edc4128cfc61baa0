"""vessel_aneurysm_mra: a classifier bundle on VesselMNIST3D -- checks, a short training on a tiny
archive, classifier evaluation, robustness and MONAI's own runner; the slow test re-runs the shipped
training and checks the targets on the official test split."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from medpipe.bundle.model import is_classifier
from medpipe.cli import cli
from tests.conftest import REPO, SHARED_DATA

BUNDLE = REPO / "bundles" / "vessel_aneurysm_mra"
VESSEL_NPZ = SHARED_DATA / "medmnist3d" / "vesselmnist3d.npz"
SHIPPED_MANIFEST = REPO / "data_manifests" / "vessel_aneurysm_mra.json"
needs_vessel = pytest.mark.skipif(not VESSEL_NPZ.is_file(), reason="shared VesselMNIST3D archive not present")


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> tuple[Path, Path, Path]:
    """The bundle trained for one epoch on a tiny balanced archive (48/16/16 cases, real VesselMNIST3D
    volumes when present, random blobs otherwise): a copy of the bundle, the archive's manifest and
    the run folder."""
    root = tmp_path_factory.mktemp("vessel")
    rng = np.random.default_rng(0)
    arrays = {}
    if VESSEL_NPZ.is_file():
        src = np.load(VESSEL_NPZ)
        for split, n in (("train", 48), ("val", 16), ("test", 16)):
            labels = src[f"{split}_labels"][:, 0]
            idx = np.concatenate([np.flatnonzero(labels == c)[: n // 2] for c in (0, 1)])
            arrays[f"{split}_images"], arrays[f"{split}_labels"] = (
                src[f"{split}_images"][idx],
                src[f"{split}_labels"][idx],
            )
    else:
        for split, n in (("train", 48), ("val", 16), ("test", 16)):
            arrays[f"{split}_images"] = (rng.random((n, 28, 28, 28)) > 0.9).astype(np.uint8) * 255
            arrays[f"{split}_labels"] = (np.arange(n) % 2).astype(np.uint8)[:, None]
    np.savez_compressed(root / "vesselmnist3d.npz", **arrays)
    manifest = root / "manifest.json"
    assert run("manifest", "medmnist", root / "vesselmnist3d.npz", "-o", manifest).exit_code == 0
    bundle = root / "bundle"
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("runs", "eval", "*.ts"))
    shipped = {f.name: f.read_bytes() for f in (bundle / "models").iterdir()}
    result = run(
        "train", "--bundle", bundle, "--manifest", manifest, "--max-epochs", "1", "--set", "batch_size=16",
        "--output", root / "run",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert {f.name: f.read_bytes() for f in (bundle / "models").iterdir()} == shipped  # never written by a run
    return bundle, manifest, root / "run"


def test_bundle_is_a_classifier_and_passes_monai_checks():
    assert is_classifier(BUNDLE)
    assert not is_classifier(REPO / "bundles" / "hippocampus_mri")
    result = run("check", "--bundle", BUNDLE)
    assert result.exit_code == 0, result.output
    assert "verify_net_in_out" in result.output
    common = json.loads((BUNDLE / "configs" / "common.json").read_text())
    net = common["network_def"]  # the contract with lung_nodule_malignancy_ct (weights transfer by name)
    assert net["_target_"] == "ResNet" and net["n_input_channels"] == 1 and net["spatial_dims"] == 3


def test_shipped_model_size_and_threshold():
    model = BUNDLE / "models" / "model.pt"
    assert model.is_file() and model.stat().st_size < 25e6
    record = json.loads((BUNDLE / "models" / "threshold.json").read_text())
    assert 0.0 < record["threshold"] < 1.0
    assert record["validation"]["n"] == 191  # chosen on the official validation split


@needs_vessel
def test_shipped_model_scores_the_documented_figures_on_the_official_test_split(tmp_path):
    """models/model.pt + threshold.json give the README's test figures (AUC 0.949, 355/382 right)."""
    result = run("evaluate", "--bundle", BUNDLE, "--manifest", SHIPPED_MANIFEST, "--output", tmp_path)
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "summary.json").read_text())["metrics"]
    assert m["n"] == 382 and abs(m["auc"] - 0.949) < 0.001, m
    assert m["confusion_matrix"] == [[327, 12], [15, 28]], m
    assert m["auc"] >= 0.93  # the AUC target






def test_train_writes_threshold_and_evaluate_scores_the_test_split(tiny_bundle, tmp_path):
    bundle, manifest, trained = tiny_bundle
    record = json.loads((trained / "threshold.json").read_text())
    assert record["validation"]["n"] == 16 and record["criterion"] == "accuracy"
    assert record["inferer"] == "CubeSymmetryInferer(n=8)" and record["epoch"] == 1
    result = run("evaluate", "--bundle", bundle, "--manifest", manifest, "--output", tmp_path, "--weights", trained)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    m = summary["metrics"]
    assert summary["cases"] == 16 and m["threshold"] == pytest.approx(record["threshold"])
    with open(tmp_path / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16
    prob = np.array([float(r["prob_1"]) for r in rows])
    label = np.array([int(r["label"]) for r in rows])
    pred = np.array([int(r["prediction"]) for r in rows])
    assert np.allclose(prob + np.array([float(r["prob_0"]) for r in rows]), 1, atol=1e-5)
    np.testing.assert_array_equal(pred, (prob >= m["threshold"]).astype(int))
    assert m["accuracy"] == pytest.approx((pred == label).mean())
    assert np.array(m["confusion_matrix"]).sum() == 16


def test_robustness_table_and_plot(tiny_bundle, tmp_path):
    from medpipe.evaluate.robustness import robustness

    bundle, manifest, trained = tiny_bundle
    strengths = {
        "gaussian_noise": [0.1],
        "intensity_shift": [0.2],
        "intensity_scale": [0.3],
        "rotation_deg": [10],
    }
    rows = robustness(
        bundle, manifest=manifest, output=tmp_path, weights=trained, strengths=strengths, tta=2, echo=lambda s: None
    )
    assert len(rows) == 2 * 5 and (tmp_path / "robustness.png").stat().st_size > 5000
    with open(tmp_path / "robustness.csv") as f:
        table = list(csv.DictReader(f))
    assert {r["perturbation"] for r in table} == {"none", *strengths}
    assert all(0 <= float(r["auc"]) <= 1 and 0 <= float(r["accuracy"]) <= 1 for r in table)
    again = robustness(
        bundle, manifest=manifest, output=tmp_path / "b", weights=trained, strengths=strengths, tta=2,
        echo=lambda s: None,
    )  # fmt: skip
    assert again == rows  # seeded perturbations: the same table twice


def test_robustness_refuses_segmentation_bundles():
    result = run("evaluate", "--bundle", REPO / "bundles" / "hippocampus_mri", "--robustness")
    assert result.exit_code == 3 and "ROBUSTNESS_UNSUPPORTED" in result.output


def test_monai_bundle_run_inference_from_another_directory(tiny_bundle, tmp_path):
    bundle, manifest, _ = tiny_bundle
    out = tmp_path / "pred"
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "['configs/common.json','configs/inference.json']",
    ]
    cmd = [c.replace("configs/", f"{bundle}/configs/") for c in cmd]
    cmd += ["--bundle_root", str(bundle), "--manifest", str(manifest), "--output_dir", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = (out / "probabilities.csv").read_text().strip().splitlines()
    assert len(rows) == 16
    assert all(0.0 <= float(r.split(",")[-1]) <= 1.0 and "#test/" in r for r in rows)


@needs_vessel
def test_shipped_manifest_is_what_the_command_writes(tmp_path):
    out = tmp_path / "sub" / "m.json"
    assert run("manifest", "medmnist", VESSEL_NPZ, "-o", out).exit_code == 0
    shipped, fresh = json.loads(SHIPPED_MANIFEST.read_text()), json.loads(out.read_text())
    for split, n in (("training", 1335), ("validation", 191), ("test", 382)):
        assert shipped[split] == fresh[split] and len(shipped[split]) == n
    assert sum(e["label"] for e in shipped["test"]) == 43


@needs_vessel
@pytest.mark.slow
def test_shipped_training_reproduces_the_shipped_figures(tmp_path):
    """The documented command on the whole archive reproduces the shipped model's test figures
    (AUC 0.949, accuracy 0.929 in 13.9 min). The floors allow for another CPU's bf16 kernels: a second
    seed of this recipe gave 0.935 / 0.898, and 0.887 is always answering "vessel"."""
    run_dir = tmp_path / "run"
    result = run("train", "--bundle", BUNDLE, "--manifest", SHIPPED_MANIFEST, "--output", run_dir)
    assert result.exit_code == 0, result.output
    assert json.loads((run_dir / "threshold.json").read_text())["validation"]["n"] == 191
    record = json.loads((run_dir / "training_metrics.json").read_text())
    assert record["total_seconds"] <= 20 * 60, record["total_seconds"]  # 13.9 min here
    evaluated = run(
        "evaluate", "--bundle", BUNDLE, "--manifest", SHIPPED_MANIFEST, "--weights", run_dir, "--output", tmp_path / "e"
    )
    assert evaluated.exit_code == 0, evaluated.output
    m = json.loads((tmp_path / "e" / "summary.json").read_text())["metrics"]
    assert m["auc"] >= 0.92 and m["accuracy"] >= 0.89, m
