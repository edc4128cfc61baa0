"""Lesion detection scores: matching with LUNA16's ignore rule, FROC, LUNA16 score, the operating point."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medpipe.errors import BundleError
from medpipe.evaluate import evaluate
from medpipe.evaluate.detection import (
    Candidate,
    Target,
    choose_operating_point,
    froc,
    match_case,
    summary_at,
)
from medpipe.infer.lesions import measure_lesions
from medpipe.operating_point import at_operating_point, read_operating_point, write_operating_point
from tests.conftest import BUNDLE, REPO

AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])


def scene():
    """A 40^3 scan: nodule 1 (4 readers), nodule 2 (1 reader), a non-nodule mark; four predicted blobs."""
    truth = np.zeros((40, 40, 40), np.uint16)
    truth[5:11, 5:11, 5:11] = 1  # 216 voxels
    truth[25:29, 5:9, 5:9] = 2
    record = {"nodules": [{"nodule": 1, "n_readers": 4}, {"nodule": 2, "n_readers": 1}],
              "non_nodules": [{"ijk": [30, 30, 30]}], "small_nodules": []}  # fmt: skip
    mask, scores = np.zeros(truth.shape, np.uint8), np.zeros(truth.shape, np.uint8)
    for box, score in (((slice(7, 13),) * 3, 250), ((slice(25, 28), slice(5, 8), slice(5, 8)), 200),
                       ((slice(32, 35),) * 3, 150), ((slice(15, 18), slice(30, 33), slice(2, 5)), 100)):  # fmt: skip
        mask[box], scores[box] = 1, score
    return mask, scores, truth, record


def test_a_candidate_finds_what_it_overlaps_and_ignored_findings_count_as_neither():
    mask, scores, truth, record = scene()
    candidates, targets = match_case("c", mask, scores, truth, AFFINE, record, min_readers=2)
    assert [(c.status, round(c.score, 3)) for c in sorted(candidates, key=lambda c: -c.score)] == [
        ("tp", 0.98), ("ignored", 0.784), ("ignored", 0.588), ("fp", 0.392)]  # 1-reader nodule; 3.5 mm from the mark
    (target,) = targets  # the 1-reader nodule is no target
    overlap = 4 * 4 * 4
    assert target.nodule == 1 and target.dice_at(0.5) == pytest.approx(2 * overlap / (216 + 216))
    assert target.dice_at(0.99) is None
    everyone = match_case("c", mask, scores, truth, AFFINE, record, min_readers=1)[1]
    assert len(everyone) == 2  # with one reader enough, nodule 2 is a target (and its blob a hit)


def test_without_a_record_the_label_components_are_the_targets():
    mask, scores, truth, _ = scene()
    candidates, targets = match_case("c", mask, scores, truth > 0, AFFINE)
    assert len(targets) == 2 and sorted(c.status for c in candidates) == ["fp", "fp", "tp", "tp"]


def test_froc_and_the_luna16_score_on_a_known_ranking():
    # 4 targets over 2 scans; false positives scoring 0.9, 0.7, 0.5, 0.3, 0.1
    targets = [Target("a", i, 4, 10, best) for i, best in enumerate((0.95, 0.8, 0.4, -1.0))]
    candidates = [Candidate("a", s, 5, "fp") for s in (0.9, 0.7, 0.5, 0.3, 0.1)]
    result = froc(candidates, targets, n_cases=2)
    at = result["sensitivity_at"]
    # 0 FPs at >0.9 (sens 1/4); 1 FP (0.5/scan) down to 0.8 (2/4); 3 FPs (1.5/scan) by 0.4 (3/4); the 4th never
    assert at[0.125] == at[0.25] == 0.25 and at[0.5] == 0.5 and at[1.0] == 0.5 and at[2.0] == at[8.0] == 0.75
    assert result["luna16_score"] == pytest.approx((0.25 * 2 + 0.5 * 2 + 0.75 * 3) / 7)
    assert choose_operating_point(result["curve"], 1.0) == pytest.approx(0.8)  # the lowest with <= 1 FP/scan
    op = summary_at(candidates, targets, 2, 0.8)
    assert (op["found"], op["false_positives"], op["fp_per_scan"]) == (2, 1, 0.5)
    # a false positive above every target: no threshold allows 0 FPs but one above the top score
    top = [Candidate("a", 1.0, 5, "fp")]
    none = choose_operating_point(froc(top, targets, n_cases=2)["curve"], 0.0)
    assert none > 1.0 and summary_at(top, targets, 2, none)["false_positives"] == 0


def test_lesions_below_the_operating_point_become_candidates(tmp_path):
    mask, scores, _, _ = scene()
    lesions = measure_lesions(mask, AFFINE, scores=scores)
    reported, dropped = at_operating_point(lesions, 0.5)
    assert sorted(round(x.score, 2) for x in reported) == [0.59, 0.78, 0.98] and [round(x.score, 2) for x in dropped] == [0.39]
    assert at_operating_point(measure_lesions(mask, AFFINE), 0.5)[1] == []  # no scores: all reported
    assert read_operating_point(tmp_path / "model.pt") == 0.0
    write_operating_point(tmp_path / "model.pt", 0.42, criterion="fp_per_scan<=4")
    assert read_operating_point(tmp_path / "model.pt") == 0.42


def test_evaluate_scores_the_lung_bundle_as_a_detector_and_chooses_an_operating_point_for_a_run(tiny_dataset, tmp_path):
    summary = evaluate(BUNDLE, manifest=tiny_dataset, split="test", output=tmp_path / "e", echo=lambda _: None)
    det = summary["detection"]
    assert det["operating_point"]["targets"] >= 1 and 0 <= det["luna16_score"] <= 1
    detection = (tmp_path / "e" / "detection.csv").read_text().splitlines()
    assert len(detection) == det["operating_point"]["targets"] + 1
    assert (tmp_path / "e" / "froc.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(BundleError) as e:  # the shipped weights are not where a choice is written
        evaluate(BUNDLE, manifest=tiny_dataset, output=tmp_path / "x", choose_fp_per_scan=4, echo=lambda _: None)
    assert e.value.code == "BUNDLE_NOT_A_RUN"
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(BUNDLE / "models" / "model.pt", run / "model.pt")
    again = evaluate(BUNDLE, manifest=tiny_dataset, weights=run, output=tmp_path / "r", choose_fp_per_scan=0.0,
                     echo=lambda _: None)  # fmt: skip
    chosen = json.loads((run / "operating_point.json").read_text())
    assert chosen["criterion"] == "fp_per_scan<=0" and again["detection"]["chosen"]["fp_per_scan"] == 0
    assert math.isfinite(chosen["score_threshold"])


def test_each_target_sits_beside_the_lesion_found_there_with_the_classifier_probability(tiny_dataset, tmp_path):
    import csv

    malignancy = REPO / "bundles" / "lung_nodule_malignancy_ct"
    summary = evaluate(BUNDLE, manifest=tiny_dataset, split="test", output=tmp_path / "e", classifier=malignancy,
                       echo=lambda _: None)  # fmt: skip
    with open(tmp_path / "e" / "lesions_vs_readers.csv") as f:
        rows = list(csv.DictReader(f))
    with open(tmp_path / "e" / "detection.csv") as f:
        detection = {(r["case"], r["nodule"]): r for r in csv.DictReader(f)}
    assert len(rows) == summary["detection"]["operating_point"]["targets"] == len(detection)
    found = [r for r in rows if r["found"] == "True"]
    assert found, "the shipped weights find phantom nodules"
    for r in rows:
        assert r["found"] == detection[(r["case"], r["nodule"])]["found"]
        assert float(r["consensus_volume_mm3"]) > 0 and float(r["consensus_diameter_mm"]) > 0
    for r in found:
        assert 0 <= float(r["classifier_probability"]) <= 1 and float(r["score"]) > 0 and float(r["dice"]) > 0
        assert float(r["volume_mm3"]) > 0 and float(r["diameter_mm"]) > 0
    with pytest.raises(BundleError) as e:  # a bundle that finds no lesions has none to classify
        evaluate(REPO / "bundles" / "hippocampus_mri", manifest=tiny_dataset, output=tmp_path / "h",
                 classifier=malignancy, echo=lambda _: None)  # fmt: skip
    assert e.value.code == "BUNDLE_NOT_LESION"


def test_keep_lesions_drops_the_components_below_the_operating_point(tmp_path: Path) -> None:
    """The bundle's post-processing step: a component scoring under the threshold becomes background, one at
    or above it is left as it was; without an operating point nothing changes."""
    from monai.data import MetaTensor

    from medpipe.operating_point import KeepLesionsd

    fg = torch.zeros(12, 12, 12)
    fg[1:4, 1:4, 1:4] = 0.97  # kept
    fg[7:10, 7:10, 7:10] = 0.8  # dropped
    fg[8, 8, 8] = 0.9
    probs = MetaTensor(torch.stack([1 - fg, fg]))
    step = KeepLesionsd(keys="pred", weights_dir=tmp_path)
    assert torch.equal(step({"pred": probs})["pred"], probs)  # no operating_point.json: every component
    write_operating_point(tmp_path / "model.pt", 0.95)
    out = step({"pred": probs})["pred"].argmax(dim=0).numpy()
    assert out[1:4, 1:4, 1:4].all() and out.sum() == 27
    lesions = measure_lesions((fg > 0.5).numpy().astype(np.uint8), AFFINE, scores=np.rint(255 * fg.numpy()).astype(np.uint8))
    reported, candidates = at_operating_point(lesions, read_operating_point(tmp_path))
    assert [les.voxels for les in reported] == [27] and [round(c.score, 2) for c in candidates] == [0.9]
