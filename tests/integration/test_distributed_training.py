"""``medpipe train --nproc 2``: a real two-process DistributedDataParallel run on CPU (torchrun, gloo)
of lung_nodule_ct on tiny phantoms, against the same training in one process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from medpipe.cli import cli
from tests.conftest import BUNDLE, TINY_SHAPE, TINY_SPACING

SETS = {"pixdim": list(TINY_SPACING), "roi_size": [32, 32, 16], "val_interval": 1}
SPLITS = {"training": 4, "validation": 3}  # 3 validation cases: an uneven share (2 + 1) across 2 ranks


@pytest.fixture(scope="module")
def six_cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medpipe.data.synthetic.lung_ct import generate_dataset, manifest_content
    from medpipe.data.synthetic.phantom import PhantomSpec

    root = tmp_path_factory.mktemp("ddp") / "data"
    generate_dataset(
        root, SPLITS, spec=PhantomSpec(shape=TINY_SHAPE, spacing=TINY_SPACING), workers=1, progress=False
    )
    manifest = root.parent / "manifest.json"
    manifest.write_text(json.dumps(manifest_content("data", SPLITS, with_generator=False)))
    return manifest


def test_two_processes_write_one_run_whose_metric_covers_every_validation_case(
    six_cases: Path, tmp_path: Path
):
    from medpipe.bundle.workflow import build_workflow, parsed
    from medpipe.train import TrainOptions, train

    folder = tmp_path / "ddp"
    args = ["train", "--bundle", str(BUNDLE), "--manifest", str(six_cases), "--max-epochs", "3", "--device", "cpu",
            "--output", str(folder), "--nproc", "2"] + [x for k, v in SETS.items() for x in ("--set", f"{k}={json.dumps(v)}")]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "medpipe", *args], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "in 2 processes (DDP)" in proc.stdout
    # one run: rank 1 wrote nothing into it (rank 0's two TensorBoard files, training and validation;
    # one checkpoint, one report)
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2
    assert sorted(p.name for p in folder.glob("*.pt")) == ["checkpoint_last.pt", "model.pt"]
    assert proc.stdout.count("epoch 3/3") == 1
    record = json.loads((folder / "run.json").read_text())
    assert record["processes"] == 2 and record["epochs_completed"] == 3
    weights = torch.load(folder / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in weights)  # the bare network's names, as one process saves

    # the metric the two ranks reduced is the one-process validation of the saved model over all 3 cases
    overrides = {
        **SETS,
        "manifest": str(six_cases),
        "device": "$torch.device('cpu')",
        "output_dir": str(tmp_path / "v"),
    }
    wf = build_workflow(BUNDLE, "train", overrides)
    parsed(wf, "network").load_state_dict(weights)
    evaluator = parsed(wf, "validate::evaluator")
    evaluator.run()
    assert evaluator.state.metrics["val_mean_dice"] == pytest.approx(record["best_metric"], abs=1e-5)

    # and the same training in one process ends close to it (DDP averages 2 processes' gradients of
    # half the data each: the same recipe, not the same numbers)
    single = train(BUNDLE, TrainOptions(manifest=six_cases, max_epochs=3, device="cpu", sets=SETS,
                                        output=tmp_path / "one"), echo=lambda _: None)  # fmt: skip
    assert single["processes"] == 1
    assert abs(single["best_metric"] - record["best_metric"]) < 0.1


def test_torchrun_typed_by_hand_agrees_on_one_run_folder(six_cases: Path, tmp_path: Path) -> None:
    """``torchrun -m medpipe train`` without ``--output``: the default folder name holds the time, so
    rank 0 chooses it and the other rank takes it -- one folder, one run."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "medpipe",
           "train", "--bundle", str(BUNDLE), "--manifest", str(six_cases), "--max-epochs", "1", "--device", "cpu"]  # fmt: skip
    cmd += [x for k, v in SETS.items() for x in ("--set", f"{k}={json.dumps(v)}")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (folder,) = (tmp_path / "runs" / "lung_nodule_ct").iterdir()
    assert json.loads((folder / "run.json").read_text())["processes"] == 2 and (folder / "model.pt").is_file()


def invoke(*args: str):
    return CliRunner().invoke(cli, ["train", "--bundle", str(BUNDLE), *args])


def test_nproc_the_machine_cannot_run_is_refused_before_anything_starts(tmp_path: Path, monkeypatch) -> None:
    import os

    for n in ("1", str((os.cpu_count() or 1) + 1)):
        result = invoke("--nproc", n, "--device", "cpu", "--output", str(tmp_path / "r"))
        assert result.exit_code != 0 and "TRAIN_BAD_NPROC" in result.output, result.output
    bare = tmp_path / "bundle"
    shutil.copytree(BUNDLE / "configs", bare / "configs")
    (bare / "configs" / "multi_gpu.json").unlink()
    result = CliRunner().invoke(cli, ["train", "--bundle", str(bare), "--nproc", "2", "--device", "cpu"])
    assert "TRAIN_BAD_NPROC" in result.output and "multi_gpu.json" in result.output
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = invoke("--nproc", "2", "--device", "cpu")
    assert "TRAIN_BAD_NPROC" in result.output and "inside torchrun" in result.output
    assert not (tmp_path / "r").exists()
