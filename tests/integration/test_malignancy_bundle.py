"""lung_nodule_malignancy_ct end to end on a few synthetic crops: transfer-learning training, the
regression head as a pure config change, and Grad-CAM explanations aligned with the input."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medpipe.errors import BundleError
from tests.conftest import REPO, copy_with_random_weights

MALIGNANCY = REPO / "bundles" / "lung_nodule_malignancy_ct"
SPLITS = {"training": 16, "validation": 8, "test": 8}


#: Tiny workloads: one thread each (a shared 2-core machine oversubscribed by torch's threads runs 10x slower).
ONE_THREAD = ["$monai.utils.set_determinism(seed=0)", "$torch.set_num_threads(1)"]


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def crops(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16/8/8 synthetic crops and their manifest."""
    from medpipe.data.synthetic.nodule_crops import generate_dataset, manifest_content

    root = tmp_path_factory.mktemp("crops")
    generate_dataset(root / "data", SPLITS, workers=1, progress=False)
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps(manifest_content("data", SPLITS, with_generator=False)))
    return manifest


@pytest.fixture(scope="module")
def random_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the bundle's configs with random weights in models/model.pt (no training needed)."""

    return copy_with_random_weights(MALIGNANCY, tmp_path_factory.mktemp("bundle") / "lung_nodule_malignancy_ct")


def test_train_one_epoch_from_pretrained_with_frozen_backbone(crops, random_bundle, tmp_path):
    from medpipe.train import TrainOptions, train

    lines: list[str] = []
    options = TrainOptions(
        manifest=crops,
        max_epochs=1,
        device="cpu",
        sets={"batch_size": 8, "initialize": ONE_THREAD},
        output=tmp_path / "out",
        init_from=random_bundle,
        freeze="until:layer2",
        pretrained_lr_scale=0.1,
    )
    record = train(random_bundle, options, echo=lines.append)
    text = "\n".join(lines)
    assert "loaded" in text and "skipped 0" in text
    assert "freeze until:layer2:" in text and "parameters trainable" in text
    assert "pretrained" in text and "lr" in text
    assert record["epochs_completed"] == 1 and 0 <= record["best_metric"] <= 1
    assert "freeze until:layer2:" in (tmp_path / "out" / "train.log").read_text()  # the log has it too
    saved = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    start = torch.load(random_bundle / "models" / "model.pt", weights_only=True)
    assert torch.equal(saved["conv1.weight"], start["conv1.weight"])  # frozen
    assert torch.equal(saved["layer2.0.conv1.weight"], start["layer2.0.conv1.weight"])
    assert not torch.equal(saved["layer3.0.conv1.weight"], start["layer3.0.conv1.weight"])  # trained
    threshold = json.loads((tmp_path / "out" / "threshold.json").read_text())
    assert 0 <= threshold["threshold"] <= 1 and threshold["validation"]["n"] == SPLITS["validation"]
    assert threshold["criterion"] == "youden" and threshold["epoch"] == 1


def test_two_processes_train_a_frozen_classifier_and_rank_0_picks_the_threshold(crops, random_bundle, tmp_path):
    """``--nproc 2`` with transfer learning: weights are loaded and frozen before DDP wraps the network
    (so DDP reduces only the trainable ones), and the threshold is chosen once, on every validation case."""
    import subprocess
    import sys

    out = tmp_path / "ddp"
    args = ["train", "--bundle", str(random_bundle), "--manifest", str(crops), "--max-epochs", "2", "--device", "cpu",
            "--set", "batch_size=4", "--init-from", str(random_bundle), "--freeze", "until:layer2", "--output", str(out),
            "--nproc", "2"]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "medpipe", *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert json.loads((out / "run.json").read_text())["processes"] == 2
    saved = torch.load(out / "model.pt", weights_only=True)
    start = torch.load(random_bundle / "models" / "model.pt", weights_only=True)
    assert torch.equal(saved["layer2.0.conv1.weight"], start["layer2.0.conv1.weight"])  # frozen
    assert not torch.equal(saved["layer3.0.conv1.weight"], start["layer3.0.conv1.weight"])  # trained
    threshold = json.loads((out / "threshold.json").read_text())
    assert threshold["validation"]["n"] == SPLITS["validation"] and proc.stdout.count("epoch 2/2") == 1


def test_train_refuses_bad_transfer_options(crops, random_bundle, tmp_path):
    from medpipe.train import TrainOptions, train

    base = TrainOptions(manifest=crops, max_epochs=1, output=tmp_path / "out")
    with pytest.raises(BundleError) as e:
        train(random_bundle, replace(base, freeze="until:layer9"), echo=lambda s: None)
    assert e.value.code == "FREEZE_UNKNOWN_LAYER" and "layer" in str(e.value)
    with pytest.raises(BundleError) as e:
        train(random_bundle, replace(base, sets={"crop_size": [0, 0, 0]}), echo=print)
    assert e.value.code == "BUNDLE_CROP_SIZE_INVALID"
    assert not (tmp_path / "out").exists()  # a refused run leaves nothing behind


def test_train_on_the_rating_target(crops, random_bundle, tmp_path):
    """``--set target=rating``: one epoch on the readers' rating as soft targets (the synthetic crops get a
    rating column); without the column the run stops with the coded error naming the entry."""
    from medpipe.errors import ManifestError
    from medpipe.train import TrainOptions, train

    content = json.loads(crops.read_text())
    for split in ("training", "validation", "test"):
        for i, entry in enumerate(content[split]):
            entry["Malignancy_value"] = [1.0, 2.0, 3.0][i % 3] if entry["label"] == 0 else [3.0, 4.0, 5.0][i % 3]
    rated = crops.parent / "rated.json"
    rated.write_text(json.dumps({**content, "dataset_dir": str(crops.parent / "data")}))
    options = TrainOptions(manifest=rated, max_epochs=1, device="cpu", output=tmp_path / "out",
                           sets={"batch_size": 8, "initialize": ONE_THREAD, "target": "rating"})  # fmt: skip
    record = train(random_bundle, options, echo=lambda s: None)
    assert record["epochs_completed"] == 1 and 0 <= record["best_metric"] <= 1
    assert json.loads((tmp_path / "out" / "config.json").read_text())["target"] == "rating"
    with pytest.raises(ManifestError) as e:
        train(random_bundle, replace(options, manifest=crops, output=tmp_path / "plain"), echo=lambda s: None)
    assert e.value.code == "MANIFEST_INVALID" and "Malignancy_value" in str(e.value)


def test_regression_head_is_a_config_change(crops):
    """Nodule diameter (mm) regressed with MSE: one output, MSELoss, label = the generator's diameter."""
    from ignite.engine import Events

    from medpipe.bundle.workflow import build_workflow, parsed

    overrides = {
        "manifest": str(crops),
        "device": "$torch.device('cpu')",
        "network_def::num_classes": 1,
        "loss": {"_target_": "torch.nn.MSELoss"},
        "train::diameter_datalist": "$[dict(e, label=e['diameter_mm']) for e in @train::datalist]",
        "train::dataset::data": "@train::diameter_datalist",
        "train::preprocessing::transforms": "$@preprocessing_transforms + @train::random_transforms + "
        "[monai.transforms.Lambdad('label', lambda d: torch.tensor([d], dtype=torch.float32))]",
        "train::handlers": [],
        "batch_size": 8,
        "learning_rate": 0.01,
        "max_epochs": 4,
        "initialize": ONE_THREAD,
    }
    wf = build_workflow(MALIGNANCY, "train", overrides)
    trainer = parsed(wf, "train::trainer")
    losses: list[float] = []
    outputs: list[tuple[int, ...]] = []

    @trainer.on(Events.ITERATION_COMPLETED)
    def _record(engine):
        losses.append(float(engine.state.output["loss"]))
        outputs.append(tuple(engine.state.output["pred"].shape))

    trainer.run()
    assert len(losses) == 4 * (SPLITS["training"] // 8)
    assert outputs[0] == (8, 1)  # one scalar per case
    assert np.mean(losses[-2:]) < 0.5 * losses[0], losses


def test_explain_writes_aligned_maps_montage_and_probabilities(crops, random_bundle, tmp_path):
    from medpipe.explain import explain

    torch.set_num_threads(1)
    image = json.loads(crops.read_text())["test"][0]["image"]
    path = crops.parent / "data" / image
    record = explain(
        random_bundle, path, tmp_path / "x", method="gradcampp", occlusion=True, echo=lambda s: None
    )
    assert record["target_layer"] == "layer3"  # layer4 is 2x2x2 for a 32^3 crop: too coarse
    probs = record["probabilities"]
    assert set(probs) == {"benign", "malignant"} and sum(probs.values()) == pytest.approx(1, abs=1e-5)
    ref = nib.load(str(path))
    for key in ("gradcampp", "occlusion"):
        heat = nib.load(record["files"][key])
        assert heat.shape == ref.shape and np.allclose(heat.affine, ref.affine, atol=1e-4)
        assert np.isfinite(heat.get_fdata()).all()
    cam = nib.load(record["files"]["gradcampp"]).get_fdata()
    assert cam.max() > 0 and cam.min() >= -1e-4
    assert Path(record["files"]["montage"]).stat().st_size > 5000
    saved = json.loads((tmp_path / "x" / f"{record['input']}_probabilities.json").read_text())
    assert saved["probabilities"] == probs
    assert record["input"].startswith("nii-") and record["input_path"] is None  # no file name, no path


def test_explain_bad_input(random_bundle, tmp_path):
    from click.testing import CliRunner

    from medpipe.cli import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["explain", "--bundle", str(random_bundle), "--input", str(tmp_path / "no.nii.gz"),
                                 "--output", str(tmp_path / "o")])  # fmt: skip
    assert result.exit_code == 3 and "INPUT_NOT_FOUND" in result.output
    img = tmp_path / "a.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 20), np.float32), np.eye(4)), img)
    result = runner.invoke(cli, ["explain", "--bundle", str(random_bundle), "--input", str(img), "--output",
                                 str(tmp_path / "o"), "--target-layer", "layer5"])  # fmt: skip
    assert result.exit_code == 3 and "EXPLAIN_UNKNOWN_LAYER" in result.output and "layer4" in result.output


def test_recipe_takes_nodulemnist3d_manifests_unchanged(tmp_path):
    """The real-data route: `medpipe manifest medmnist nodulemnist3d.npz` -> the same train config."""
    torch.set_num_threads(1)
    from click.testing import CliRunner

    from medpipe.bundle.workflow import build_workflow, parsed
    from medpipe.cli import cli

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("val", 4), ("test", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).astype(np.uint8)[:, None]
    np.savez(tmp_path / "nodulemnist3d.npz", **arrays)
    result = CliRunner().invoke(cli, ["manifest", "medmnist", str(tmp_path / "nodulemnist3d.npz"), "-o",
                                      str(tmp_path / "nm.json")])  # fmt: skip
    assert result.exit_code == 0, result.output
    wf = build_workflow(MALIGNANCY, "train", {"manifest": str(tmp_path / "nm.json")})
    assert parsed(wf, "intensity_range") == [0.0, 255.0]  # uint8 crops, not HU
    entries = parsed(wf, "train::datalist")
    image = parsed(wf, "validate::preprocessing")(entries[0])["image"]
    assert tuple(image.shape) == (1, 32, 32, 32) and 0 <= float(image.min()) and float(image.max()) <= 1
    raw = arrays["train_images"][0].astype(np.float32) / 255
    assert float(image.max()) == pytest.approx(raw.max(), abs=0.02)


def test_monai_bundle_run_inference_from_another_directory(crops, random_bundle, tmp_path):
    """MONAI's own runner, another cwd, only --bundle_root: one P(malignant) per input crop."""
    import os
    import subprocess
    import sys

    inputs = tmp_path / "in"
    inputs.mkdir()
    for entry in json.loads(crops.read_text())["test"][:3]:
        shutil.copy(crops.parent / "data" / entry["image"], inputs)
    cfg = random_bundle / "configs"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
           f"['{cfg / 'common.json'}','{cfg / 'inference.json'}']", "--meta_file", str(cfg / "metadata.json"),
           "--bundle_root", str(random_bundle), "--dataset_dir", str(inputs), "--output_dir", str(tmp_path / "out")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True, env=env, timeout=300)
    rows = (tmp_path / "out" / "probabilities.csv").read_text().splitlines()
    assert sorted(Path(r.split(",")[0]).name for r in rows) == sorted(p.name for p in inputs.iterdir())
    assert all(0 <= float(r.split(",")[1]) <= 1 for r in rows)


def test_explain_dicom_series_aligned_with_convert(tiny_dataset, random_bundle, tmp_path):
    """A DICOM folder goes through medpipe's DICOM layer; the map lies on the grid `medpipe convert` writes."""
    from medpipe.convert import convert
    from medpipe.explain import explain

    torch.set_num_threads(1)
    series = tiny_dataset.parent / "data" / "dicom" / "phantom_000"
    record = explain(random_bundle, series, tmp_path / "x", echo=lambda s: None)
    convert(series, tmp_path / "nifti")
    converted = nib.load(str(next((tmp_path / "nifti").glob("*.nii.gz"))))
    heat = nib.load(record["files"]["gradcam"])
    assert heat.shape == converted.shape and np.allclose(heat.affine, converted.affine, atol=1e-4)
    assert Path(record["files"]["gradcam"]).name.startswith(
        Path(converted.get_filename()).name.split(".nii")[0]
    )
