"""The one threshold policy (criteria accuracy, youden, sensitivity:T), its schema, and the figures it reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.inferers import SimpleInferer

from medpipe.errors import BundleError
from medpipe.evaluate.metrics import classification_figures, predicted_classes
from medpipe.evaluate.threshold import (
    ThresholdRecord,
    ValidationThreshold,
    choose_threshold,
    describe,
    read_threshold,
    threshold_beside,
)
from tests.conftest import REPO


def test_threshold_maximises_accuracy_and_figures_match_definitions():
    prob = np.array([0.1, 0.2, 0.35, 0.4, 0.6, 0.7, 0.8, 0.9])
    label = np.array([0, 0, 1, 0, 1, 1, 0, 1])
    thr = choose_threshold(prob, label)
    acc = ((prob >= thr) == label).mean()
    assert acc == max(((prob >= t) == label).mean() for t in np.linspace(0, 1, 1001))
    out = classification_figures(np.stack([1 - prob, prob], 1), label, 0.5)
    assert (predicted_classes(np.stack([1 - prob, prob], 1), 0.5) == (prob >= 0.5)).all()
    assert out["confusion_matrix"] == [[3, 1], [1, 3]]
    assert out["accuracy"] == 0.75 and out["precision"] == 0.75 and out["recall"] == 0.75
    assert out["specificity"] == 0.75 and abs(out["auc"] - 0.75) < 1e-9  # 12 of 16 pairs ranked right


PROB = np.array([0.1, 0.2, 0.35, 0.4, 0.6, 0.7, 0.8, 0.9])
LABEL = np.array([0, 0, 0, 1, 0, 1, 1, 1])


def test_youden_maximises_sensitivity_plus_specificity():
    thr = choose_threshold(PROB, LABEL, "youden")
    pred = PROB >= thr
    j = pred[LABEL == 1].mean() + (~pred[LABEL == 0]).mean() - 1
    best = max((PROB >= t)[LABEL == 1].mean() + (PROB < t)[LABEL == 0].mean() - 1 for t in np.linspace(0, 1, 1001))
    assert j == pytest.approx(best) and (0.35 < thr <= 0.4 or 0.6 < thr <= 0.7)
    figs = classification_figures(np.stack([1 - PROB, PROB], 1), LABEL, thr)
    assert figs["accuracy"] == pytest.approx(7 / 8) and figs["auc"] == pytest.approx(15 / 16)


@pytest.mark.parametrize("target", [0.5, 0.75, 1.0])
def test_target_sensitivity_is_met_with_the_best_specificity(target):
    thr = choose_threshold(PROB, LABEL, f"sensitivity:{target}")
    sensitivity = (PROB >= thr)[LABEL == 1].mean()
    assert sensitivity >= target
    # no higher threshold (fewer false positives) keeps the sensitivity
    higher = [t for t in np.unique(PROB) if t > thr]
    assert all((PROB >= t)[LABEL == 1].mean() < target for t in higher)


def test_one_class_only_gives_half_and_bad_criteria_are_refused():
    assert choose_threshold(PROB, np.zeros(8, int), "youden") == 0.5
    for bad, hint in (("youdens", "did you mean 'youden'"), ("sensitivity:1.5", "(0, 1]"), ("accuracy:0.9", "only")):
        with pytest.raises(BundleError) as e:
            choose_threshold(PROB, LABEL, bad)
        assert e.value.code == "CONFIG_INVALID" and hint in str(e.value), str(e.value)


def test_the_record_round_trips_and_a_broken_file_is_a_coded_error(tmp_path):
    record = ThresholdRecord(0.42, criterion="youden", description=describe("youden"), inferer="SimpleInferer",
                             epoch=3, validation={"n": 8})  # fmt: skip
    record.write(tmp_path / "threshold.json")
    assert read_threshold(tmp_path / "threshold.json") == record
    assert threshold_beside(tmp_path / "model.pt") == record  # next to the weights it belongs to
    assert read_threshold(tmp_path / "absent.json") is None
    (tmp_path / "bad.json").write_text(json.dumps({"criterion": "youden"}))
    with pytest.raises(BundleError) as e:
        read_threshold(tmp_path / "bad.json")
    assert e.value.code == "BUNDLE_INVALID"


@pytest.mark.parametrize("bundle", ["vessel_aneurysm_mra", "lung_nodule_malignancy_ct"])
def test_the_shipped_thresholds_use_the_one_schema(bundle):
    path = REPO / "bundles" / bundle / "models" / "threshold.json"
    content = json.loads(path.read_text())
    assert set(content) == set(ThresholdRecord.__dataclass_fields__)
    record = read_threshold(path)
    assert record.criterion in ("accuracy", "youden") and record.validation["n"] > 0


def test_the_handler_chooses_on_the_best_checkpoint_with_the_given_inferer(tmp_path):
    """Trained net or not, the handler predicts the validation split from the checkpoint file and records it."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 2))
    torch.save(net.state_dict(), tmp_path / "model.pt")
    with torch.no_grad():
        net[1].weight.zero_()  # the handler must reload the checkpoint, not use this state
    rng = np.random.default_rng(0)
    datalist = [{"image": rng.normal(size=(1, 2, 2, 2)).astype(np.float32), "label": i % 2} for i in range(12)]

    class Validator:
        class state:  # noqa: N801 - an engine state stand-in
            best_metric_epoch = 4

    handler = ValidationThreshold(
        net, datalist, lambda d: {"image": torch.as_tensor(d["image"])}, SimpleInferer(), tmp_path,
        criterion="sensitivity:0.8", validator=Validator(),
    )  # fmt: skip
    record = handler()
    saved = read_threshold(tmp_path / "threshold.json")
    assert saved == record and saved.epoch == 4 and saved.criterion == "sensitivity:0.8"
    net.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    with torch.no_grad():
        prob = torch.softmax(net(torch.stack([torch.as_tensor(d["image"]) for d in datalist])), 1)[:, 1].numpy()
    label = np.array([d["label"] for d in datalist])
    assert saved.threshold == pytest.approx(choose_threshold(prob, label, "sensitivity:0.8"), abs=1e-6)
    assert saved.validation["recall"] >= 0.8 and saved.validation["n"] == 12
