"""medpipe promote: the one deliberate step that changes a bundle's shipped weights, with a version bump."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from medpipe.bundle.promote import next_version, promote
from medpipe.cli import cli
from medpipe.errors import BundleError
from tests.conftest import BUNDLE


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    copy = tmp_path / "lung_nodule_ct"
    shutil.copytree(BUNDLE, copy, ignore=shutil.ignore_patterns("*.ts", "runs", "eval"))
    return copy


def fake_run(folder: Path, bundle: Path, *, threshold: bool = False) -> Path:
    """A finished run folder: the shipped weights perturbed, and the files medpipe train writes."""
    folder.mkdir(parents=True)
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, folder / "model.pt")
    (folder / "training_metrics.json").write_text(json.dumps({"best_metric": 0.5, "best_epoch": 3}))
    record = {"bundle_folder": bundle.name, "key_metric": "val_mean_dice", "best_metric": 0.5, "best_epoch": 3,
              "manifest": str(bundle.parents[2] / "elsewhere" / "m.json"),
              "command": f"medpipe train --bundle b --manifest {bundle.parents[2] / 'elsewhere' / 'm.json'} --output {folder}"}  # fmt: skip
    (folder / "run.json").write_text(json.dumps(record))
    if threshold:
        (folder / "threshold.json").write_text(json.dumps({"threshold": 0.3}))
    return folder


def test_versions() -> None:
    assert next_version("0.1.1") == "0.2.0" and next_version("0.1.1", "0.1.2") == "0.1.2"
    for current, asked in (("0.2.0", "0.2.0"), ("0.2.0", "0.1.9"), ("0.2.0", "v1"), ("x", None)):
        with pytest.raises(BundleError) as e:
            next_version(current, asked)
        assert e.value.code == "BUNDLE_VERSION_INVALID"


def test_promote_ships_the_run_and_records_it(bundle: Path, tmp_path: Path) -> None:
    run = fake_run(tmp_path / "runs" / "r1", bundle)
    (bundle / "models" / "threshold.json").write_text('{"threshold": 0.9}')  # stale: of other weights
    old = json.loads((bundle / "configs" / "metadata.json").read_text())
    result = CliRunner().invoke(cli, ["promote", "--bundle", str(bundle), "--run", str(run), "--note", "retrained"])
    assert result.exit_code == 0, result.output
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["version"] == next_version(old["version"]) and list(meta["changelog"])[0] == meta["version"]
    entry = meta["changelog"][meta["version"]]
    assert "r1" in entry and "val_mean_dice 0.5000 at epoch 3" in entry and entry.endswith(": retrained")
    changed = ("version", "changelog", "weights_sha256")
    assert {k: v for k, v in meta.items() if k not in changed} == {k: v for k, v in old.items() if k not in changed}
    assert (bundle / "models" / "model.pt").read_bytes() == (run / "model.pt").read_bytes()
    # the shipped weights' sha256 is recorded, and every later load checks it
    assert meta["weights_sha256"] == {"model.pt": hashlib.sha256((run / "model.pt").read_bytes()).hexdigest()}
    shipped_run = json.loads((bundle / "models" / "training_run.json").read_text())
    assert shipped_run["bundle_folder"] == bundle.name
    assert shipped_run["manifest"] == "m.json"  # no folder of the training machine in a shipped file
    assert shipped_run["command"] == "medpipe train --bundle b --manifest m.json --output r1"
    assert not (bundle / "models" / "threshold.json").exists()  # a threshold of other weights would mislead


def test_promote_refuses_what_is_not_a_finished_run_of_this_bundle(bundle: Path, tmp_path: Path) -> None:
    before = (bundle / "models" / "model.pt").read_bytes()
    half = tmp_path / "half"
    half.mkdir()
    torch.save({}, half / "model.pt")  # no run.json: training did not finish
    other = fake_run(tmp_path / "other", bundle)
    (other / "run.json").write_text(json.dumps({"bundle_folder": "hippocampus_mri"}))
    misfit = fake_run(tmp_path / "misfit", bundle)
    torch.save({"conv.weight": torch.zeros(1)}, misfit / "model.pt")
    for run, code in ((half, "BUNDLE_NOT_A_RUN"), (other, "BUNDLE_NOT_A_RUN"), (misfit, "CHECKPOINT_MISMATCH")):
        with pytest.raises(BundleError) as e:
            promote(bundle, run)
        assert e.value.code == code, run
    with pytest.raises(BundleError) as e:
        promote(bundle, fake_run(tmp_path / "ok", bundle), version="0.0.1")
    assert e.value.code == "BUNDLE_VERSION_INVALID"
    assert (bundle / "models" / "model.pt").read_bytes() == before  # nothing shipped by a refused promote
