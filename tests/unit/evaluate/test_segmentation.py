"""Segmentation evaluate on generated phantoms: it scores the very mask ``medpipe infer`` writes, with the
metrics' definitions, and names cases without their paths."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medpipe.bundle.model import BundleModel
from medpipe.data.manifest import load_split
from medpipe.evaluate import evaluate
from medpipe.infer.run import InferOptions, infer
from medpipe.privacy import case_id
from tests.conftest import BUNDLE


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fp:
        return list(csv.DictReader(fp))


@pytest.fixture(scope="module")
def scored(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("eval")
    summary = evaluate(BUNDLE, manifest=tiny_dataset, split="test", output=out / "e", echo=lambda _: None)
    return {"summary": summary, "out": out / "e", "entry": load_split(tiny_dataset, "test")[0], "root": out}


def test_evaluate_scores_the_mask_infer_writes(scored: dict) -> None:
    entry = scored["entry"]
    infer(BUNDLE, entry["image"], scored["root"] / "infer", InferOptions(progress=False), echo=lambda _: None)
    (mask_path,) = (scored["root"] / "infer").glob("*/*_seg.nii.gz")
    mask = np.asarray(nib.load(mask_path).dataobj)
    label = np.asarray(nib.load(entry["label"]).dataobj)
    assert mask.sum() > 0 and label.sum() > 0  # a vacuous comparison otherwise
    dice = 2 * np.logical_and(mask == 1, label == 1).sum() / ((mask == 1).sum() + (label == 1).sum())
    (row,) = rows(scored["out"] / "metrics.csv")
    assert float(row["dice_nodule"]) == pytest.approx(dice, abs=1e-5)


def test_summary_is_the_statistics_of_the_per_case_table(scored: dict) -> None:
    (row,) = rows(scored["out"] / "metrics.csv")
    m = json.loads((scored["out"] / "summary.json").read_text())["metrics"]
    for column in ("dice_nodule", "hd95_nodule", "nsd_nodule", "dice_mean"):
        # the table keeps 6 significant digits (medpipe.tables), the summary the full value
        assert m[column]["mean"] == pytest.approx(float(row[column]), rel=1e-5, abs=1e-5) and m[column]["n"] == 1
    assert scored["summary"]["weights_sha256"] == BundleModel.open(BUNDLE).weights.sha256


def test_cases_are_named_by_hash_and_paths_appear_only_when_asked(scored: dict, tiny_dataset: Path, tmp_path) -> None:
    entry = scored["entry"]
    (row,) = rows(scored["out"] / "metrics.csv")
    assert row["case"] == case_id(entry) == entry["case_id"] and "image" not in row  # the manifest's own id
    for path in [*scored["out"].glob("*.csv"), *scored["out"].glob("*.json")]:
        text = path.read_text()
        assert str(tiny_dataset.parent) not in text and "imagesTr" not in text  # no path at all
    evaluate(BUNDLE, manifest=tiny_dataset, split="test", output=tmp_path, show_paths=True, echo=lambda _: None)
    (shown,) = rows(tmp_path / "metrics.csv")
    assert shown["image"] == entry["image"]


def test_a_perfect_prediction_scores_perfectly(tiny_dataset: Path, tmp_path, monkeypatch) -> None:
    """The metric plumbing alone: the label as the prediction gives Dice 1, HD95 0 mm, NSD 1."""
    entry = load_split(tiny_dataset, "test")[0]
    label = np.asarray(nib.load(entry["label"]).dataobj).astype(np.uint8)
    monkeypatch.setattr(BundleModel, "segment_with_scores", lambda self, image, name="", scores=True: (label, None))
    summary = evaluate(BUNDLE, manifest=tiny_dataset, output=tmp_path, echo=lambda _: None)
    m = summary["metrics"]
    assert m["dice_nodule"]["mean"] == 1.0 and m["hd95_nodule"]["mean"] == 0.0 and m["nsd_nodule"]["mean"] == 1.0
