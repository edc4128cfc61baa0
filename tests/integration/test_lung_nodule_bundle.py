"""The real lung_nodule_ct bundle end to end on tiny phantoms: train one epoch through ``medpipe
train``, export with MONAI's ``ckpt_export``, then run inference, ``verify_net_in_out`` and the
evaluate layer through ``python -m monai.bundle`` in subprocesses from another working directory.

"Tiny crop" overrides (as MONAI's model-zoo CI does): coarse pixdim and a 32x32x16 ROI.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy import ndimage

from medpipe.cli import cli
from medpipe.data.manifest import load_split
from tests.conftest import BUNDLE, TINY_SPACING

TINY = [f"pixdim={list(TINY_SPACING)}", "roi_size=[32, 32, 16]", "val_interval=1"]


def monai_bundle(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def trained(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the bundle trained for one epoch on the tiny phantoms into a run folder, and the run
    promoted into the copy (so its models/model.pt is the run's); returns the bundle folder."""
    work = tmp_path_factory.mktemp("bundle")
    bundle = work / "lung_nodule_ct"
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("model.ts", "runs", "eval"))
    shipped = {f.name: f.read_bytes() for f in (bundle / "models").iterdir()}
    args = ["train", "--bundle", str(bundle), "--manifest", str(tiny_dataset), "--max-epochs", "1", "--device", "cpu",
            "--output", str(work / "run")]  # fmt: skip
    for s in TINY:
        args += ["--set", s]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "epoch 1/1" in result.output and "val_mean_dice" in result.output and "medpipe promote" in result.output
    assert {f.name: f.read_bytes() for f in (bundle / "models").iterdir()} == shipped  # the run wrote elsewhere
    promoted = CliRunner().invoke(cli, ["promote", "--bundle", str(bundle), "--run", str(work / "run")])
    assert promoted.exit_code == 0, promoted.output
    return bundle


def test_training_writes_a_run_folder_and_promote_ships_it(trained: Path) -> None:
    run = trained.parent / "run"
    state = torch.load(run / "model.pt", map_location="cpu", weights_only=True)
    assert any(k.endswith("weight") for k in state)
    record = json.loads((run / "training_metrics.json").read_text())
    assert record["epochs_completed"] == 1 and len(record["history"]) == 1
    assert 0.0 <= record["best_metric"] <= 1.0 and np.isfinite(record["history"][0]["loss"])
    assert (run / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "epoch 1/1" in (run / "train.log").read_text()
    assert json.loads((run / "config.json").read_text())["max_epochs"] == 1  # the resolved config
    info = json.loads((run / "run.json").read_text())
    assert info["bundle_folder"] == "lung_nodule_ct" and info["best_epoch"] == 1
    # promoted: same bytes in models/, a version bump and a changelog entry naming the run
    assert (trained / "models" / "model.pt").read_bytes() == (run / "model.pt").read_bytes()
    meta = json.loads((trained / "configs" / "metadata.json").read_text())
    old = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["version"]
    major, minor, _ = (int(v) for v in old.split("."))
    assert meta["version"] == f"{major}.{minor + 1}.0" and "run" in meta["changelog"][meta["version"]]
    shipped = json.loads((trained / "models" / "training_run.json").read_text())
    portable = {k: v for k, v in shipped.items() if k not in ("manifest", "overrides")}
    assert portable == {k: v for k, v in info.items() if k not in ("manifest", "overrides")}
    # no folder of the training machine in a shipped file, neither as the record's manifest nor as an override
    assert shipped["manifest"] == shipped["overrides"]["manifest"] and not Path(shipped["manifest"]).is_absolute()
    assert shipped["manifest"].endswith(Path(info["manifest"]).name)
    assert {k: v for k, v in shipped["overrides"].items() if k != "manifest"} == {
        k: v for k, v in info["overrides"].items() if k != "manifest"
    }


def test_inference_from_another_directory_keeps_shape_and_affine(
    trained: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for entry in load_split(tiny_dataset, "test") + load_split(tiny_dataset, "validation"):
        shutil.copy(entry["image"], inputs)
    out = tmp_path / "out"
    configs = [str(trained / "configs" / "common.json"), str(trained / "configs" / "inference.json")]
    monai_bundle(
        "run", "--config_file", json.dumps(configs), "--meta_file", str(trained / "configs" / "metadata.json"),
        "--bundle_root", str(trained), "--dataset_dir", str(inputs), "--output_dir", str(out),
        "--pixdim", json.dumps(list(TINY_SPACING)), "--roi_size", "[32,32,16]",
        cwd=tmp_path,
    )
    images = sorted(inputs.glob("*.nii.gz"))
    assert len(images) == 2
    for image in images:
        seg = out / image.name.replace(".nii.gz", "_seg.nii.gz")
        assert seg.is_file(), sorted(p.name for p in out.iterdir())
        src, pred = nib.load(image), nib.load(seg)
        assert pred.shape == src.shape
        np.testing.assert_allclose(pred.affine, src.affine, atol=1e-4)
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1}


def test_one_seed_gives_the_same_weights_and_metrics(tiny_dataset: Path, tmp_path: Path) -> None:
    """``--seed``: two runs with one seed are bit-identical on CPU (weights and every epoch's figures);
    another seed draws other patches and initial weights. The seed is recorded in run.json."""
    from medpipe.train import TrainOptions, train

    def run(name: str, seed: int, deterministic: bool = False) -> tuple[dict, dict]:
        sets = {s.split("=", 1)[0]: json.loads(s.split("=", 1)[1]) for s in TINY}
        options = TrainOptions(manifest=tiny_dataset, max_epochs=2, device="cpu", sets=sets, output=tmp_path / name,
                               seed=seed, deterministic=deterministic)  # fmt: skip
        record = train(BUNDLE, options, echo=lambda _: None)
        history = json.loads((tmp_path / name / "training_metrics.json").read_text())["history"]
        history = [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in history]  # all but the clock
        return record, {"weights": torch.load(tmp_path / name / "model.pt", weights_only=True), "history": history}

    first, a = run("a", 3)
    again, b = run("b", 3, deterministic=True)
    _, c = run("c", 4)
    assert first["seed"] == 3 and first["deterministic"] is False and again["deterministic"] is True
    assert a["history"] == b["history"] and a["weights"].keys() == b["weights"].keys()
    assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])
    assert first["model_sha256"] == again["model_sha256"]
    assert not torch.are_deterministic_algorithms_enabled()  # the run's finalize switched them off again
    assert a["history"] != c["history"]
    assert not all(torch.equal(a["weights"][k], c["weights"][k]) for k in a["weights"])


@pytest.mark.parametrize("loader_workers", [0, 1])
def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(
    tiny_dataset: Path, tmp_path: Path, loader_workers: int
) -> None:
    """``medpipe train --resume``: a run SIGKILLed after its second epoch, resumed, ends bit-identical
    (CPU) to the same run left alone: weights, best checkpoint and every epoch's figures -- also with a
    data-loader worker process (MONAI seeds each worker from torch's RNG, which the checkpoint restores)."""
    import os
    import signal
    import time

    from medpipe.errors import BundleError
    from medpipe.train import TrainOptions, train

    epochs = 6
    args = ["train", "--bundle", str(BUNDLE), "--manifest", str(tiny_dataset), "--max-epochs", str(epochs),
            "--device", "cpu", "--set", f"num_workers={loader_workers}"] + [x for s in TINY for x in ("--set", s)]  # fmt: skip
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "medpipe", *args, "--output", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        mark = killed / "checkpoint.json"
        if mark.is_file() and json.loads(mark.read_text())["epoch"] >= 2:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    stopped_at = json.loads((killed / "checkpoint.json").read_text())["epoch"]
    assert proc.returncode == -signal.SIGKILL and stopped_at < epochs and not (killed / "run.json").exists()
    # written under a temporary name and renamed whole: what is there is a complete checkpoint
    saved = torch.load(killed / "checkpoint_last.pt", weights_only=True)
    assert saved["trainer"]["iteration"] // saved["trainer"]["epoch_length"] >= stopped_at
    result = CliRunner().invoke(cli, ["train", "--bundle", str(BUNDLE), "--output", str(killed), "--resume"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert f"at epoch {stopped_at + 1} (from checkpoint_last.pt)" in result.output
    full = tmp_path / "full"
    assert CliRunner().invoke(cli, [*args, "--output", str(full)]).exit_code == 0

    def strip(folder: Path) -> list[dict]:
        history = json.loads((folder / "training_metrics.json").read_text())["history"]
        return [{k: v for k, v in e.items() if k != "seconds"} for e in history]

    assert strip(killed) == strip(full) and len(strip(full)) == epochs
    assert (killed / "model.pt").read_bytes() == (full / "model.pt").read_bytes()
    last = [torch.load(f / "checkpoint_last.pt", weights_only=True)["network"] for f in (killed, full)]
    assert all(torch.equal(last[0][k], last[1][k]) for k in last[1])
    # resuming a finished run trains nothing and changes nothing (a re-submitted job is harmless)
    results = ("model.pt", "checkpoint_last.pt", "training_metrics.json", "run.json", "training_curve.png")
    before = {name: (killed / name).read_bytes() for name in results}
    result = CliRunner().invoke(cli, ["train", "--bundle", str(BUNDLE), "--output", str(killed), "--resume"])
    assert result.exit_code == 0 and "nothing to resume" in result.output, result.output
    assert {name: (killed / name).read_bytes() for name in results} == before
    # bad input: coded errors, nothing overwritten
    for output in (None, tmp_path / "empty"):
        (tmp_path / "empty").mkdir(exist_ok=True)
        with pytest.raises(BundleError) as e:
            train(BUNDLE, TrainOptions(output=output, resume=True), echo=lambda _: None)
        assert e.value.code == "TRAIN_RESUME_INVALID"
    with pytest.raises(BundleError) as e:  # the run's own options, not new ones
        train(BUNDLE, TrainOptions(output=killed, resume=True, max_epochs=9), echo=lambda _: None)
    assert e.value.code == "TRAIN_RESUME_INVALID" and "--max-epochs" in str(e.value)
    record = json.loads((killed / "resume.json").read_text())
    (killed / "resume.json").write_text(json.dumps({**record, "bundle_version": "0.0.1"}))
    with pytest.raises(BundleError) as e:
        train(BUNDLE, TrainOptions(output=killed, resume=True), echo=lambda _: None)
    assert e.value.code == "TRAIN_RESUME_INVALID" and "0.0.1" in str(e.value)
    (killed / "resume.json").write_text("{not json")
    with pytest.raises(BundleError) as e:
        train(BUNDLE, TrainOptions(output=killed, resume=True), echo=lambda _: None)
    assert e.value.code == "TRAIN_RESUME_INVALID"
    (killed / "resume.json").write_text(json.dumps(record))
    (killed / "checkpoint_last.pt").write_bytes(b"torn")
    before = (killed / "model.pt").read_bytes()
    with pytest.raises(BundleError) as e:
        train(BUNDLE, TrainOptions(output=killed, resume=True), echo=lambda _: None)
    assert e.value.code == "TRAIN_RESUME_INVALID" and (killed / "model.pt").read_bytes() == before


def test_monai_bundle_run_keeps_the_lesions_medpipe_infer_reports(tiny_dataset: Path, tmp_path: Path) -> None:
    """``python -m monai.bundle run`` writes the mask of exactly the lesions ``medpipe infer`` reports at the
    operating point beside the weights (KeepLesionsd after Invertd), not every component. The shipped
    weights find dozens of components on the phantoms, scoring from 0.5 to 1."""
    from medpipe.infer.run import InferOptions, infer

    bundle = tmp_path / "lung_nodule_ct"
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("model.ts", "runs", "eval"))
    threshold = 0.95
    (bundle / "models" / "operating_point.json").write_text(json.dumps({"score_threshold": threshold}))
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for entry in load_split(tiny_dataset, "test"):
        shutil.copy(entry["image"], inputs)
    summary = infer(bundle, inputs, tmp_path / "infer", InferOptions(formats=["nifti"], progress=False),
                    echo=lambda _: None)  # fmt: skip
    assert (summary["done"], summary["failed"]) == (1, 0)
    kept = [float(r["score"]) for f in (tmp_path / "infer").rglob("*_lesions.csv") for r in csv.DictReader(f.open())]
    dropped = [
        float(r["score"]) for f in (tmp_path / "infer").rglob("*_candidates.csv") for r in csv.DictReader(f.open())
    ]
    assert len(kept) >= 2 and len(dropped) >= 2 and min(kept) >= threshold > max(dropped), (kept, dropped)
    (ours,) = [np.asarray(nib.load(p).dataobj) for p in (tmp_path / "infer").rglob("*_seg.nii.gz")]
    out = tmp_path / "monai"
    configs = [str(bundle / "configs" / "common.json"), str(bundle / "configs" / "inference.json")]
    monai_bundle(
        "run", "--config_file", json.dumps(configs), "--meta_file", str(bundle / "configs" / "metadata.json"),
        "--bundle_root", str(bundle), "--dataset_dir", str(inputs), "--output_dir", str(out),
        cwd=tmp_path,
    )
    (image,) = inputs.glob("*.nii.gz")
    theirs = np.asarray(nib.load(out / image.name.replace(".nii.gz", "_seg.nii.gz")).dataobj)
    assert np.array_equal(theirs, ours), f"{int((theirs != ours).sum())} voxels differ"
    assert ndimage.label(theirs > 0, structure=np.ones((3, 3, 3)))[1] == len(kept)


def test_export_and_monai_checks(trained: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["export", "--bundle", str(trained)])
    assert result.exit_code == 0, result.output
    ts = trained / "models" / "model.ts"
    assert ts.is_file()
    assert "max |diff| = 0" in result.output or "e-0" in result.output
    net = torch.jit.load(str(ts))
    with torch.no_grad():
        y = net(torch.zeros(1, 1, 32, 32, 16))
    assert tuple(y.shape) == (1, 2, 32, 32, 16)
    meta, common = str(trained / "configs" / "metadata.json"), str(trained / "configs" / "common.json")
    monai_bundle("verify_net_in_out", "network_def", "--meta_file", meta, "--config_file", common,
                 "--bundle_root", str(trained), "--n", "2", cwd=tmp_path)
    monai_bundle("ckpt_export", "network_def", "--filepath", str(tmp_path / "again.ts"), "--meta_file", meta,
                 "--config_file", common, "--ckpt_file", str(trained / "models" / "model.pt"),
                 "--bundle_root", str(trained), cwd=tmp_path)
    assert (tmp_path / "again.ts").is_file()


def test_evaluate_layer_runs_with_monai(trained: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    c = trained / "configs"
    configs = [str(c / "common.json"), str(c / "train.json"), str(c / "evaluate.json")]
    monai_bundle(
        "run", "--config_file", json.dumps(configs), "--meta_file", str(c / "metadata.json"),
        "--bundle_root", str(trained), "--manifest", str(tiny_dataset), "--eval_dir", str(tmp_path / "eval"),
        "--pixdim", json.dumps(list(TINY_SPACING)), "--roi_size", "[32,32,16]",
        cwd=tmp_path,
    )
    rows = (tmp_path / "eval" / "metrics.csv").read_text().strip().splitlines()
    name, value = rows[0].split(",")
    assert name == "val_mean_dice" and 0.0 <= float(value) <= 1.0


def test_train_config_runs_under_monai_bundle(tiny_dataset: Path, tmp_path: Path) -> None:
    """The train config is also a plain MONAI bundle workflow (no medpipe CLI involved)."""
    c = BUNDLE / "configs"
    configs = [str(c / "common.json"), str(c / "train.json")]
    monai_bundle(
        "run", "--config_file", json.dumps(configs), "--meta_file", str(c / "metadata.json"),
        "--bundle_root", str(BUNDLE), "--manifest", str(tiny_dataset), "--max_epochs", "1",
        "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "runs"),
        "--pixdim", json.dumps(list(TINY_SPACING)), "--roi_size", "[32,32,16]", "--val_interval", "1",
        cwd=tmp_path,
    )
    assert (tmp_path / "runs" / "model.pt").is_file()  # into output_dir: never into models/
    assert (tmp_path / "runs" / "training_metrics.json").is_file()
    assert not (tmp_path / "models").exists()


def test_a_copied_bundle_trains_on_its_embedded_default_data(tmp_path: Path) -> None:
    """A bundle is shared by copying its folder: the copy finds (generates) its default data by itself."""
    copy = tmp_path / "elsewhere" / "deep" / "lung_nodule_ct"
    shutil.copytree(BUNDLE, copy, ignore=shutil.ignore_patterns("*.ts", "runs", "eval"))
    args = ["train", "--bundle", str(copy), "--max-epochs", "1", "--output", str(tmp_path / "run")]
    for s in TINY:
        args += ["--set", s]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "24 training / 6 validation cases" in result.output  # the embedded default, not a manifest given
    assert json.loads((tmp_path / "run" / "run.json").read_text())["epochs_completed"] == 1
