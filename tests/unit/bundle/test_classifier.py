"""Classifier-bundle helpers: crop-size check and class weights; the shipped malignancy weights."""

from __future__ import annotations

import json

import pytest
import torch
from monai.networks.nets import DenseNet121

from medpipe.bundle.classifier import check_crop_size, class_weights
from medpipe.errors import BundleError
from tests.conftest import REPO

MALIGNANCY = REPO / "bundles" / "lung_nodule_malignancy_ct"


def bundle_network():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(MALIGNANCY / "configs" / "common.json"))
    return parser.get_parsed_content("network_def"), parser.get_parsed_content("crop_size")


def test_crop_size_check():
    net, crop = bundle_network()
    check_crop_size(net, crop, num_outputs=2)
    for bad in ([0, 32, 32], [32, 32], [32, 32, 32.5], "big"):
        with pytest.raises(BundleError) as e:
            check_crop_size(net, bad)
        assert e.value.code == "BUNDLE_CROP_SIZE_INVALID"
    dense = DenseNet121(spatial_dims=3, in_channels=1, out_channels=2)  # downsamples 32x
    with pytest.raises(BundleError) as e:
        check_crop_size(dense, [8, 8, 8])
    assert e.value.code == "BUNDLE_CROP_SIZE_INVALID" and "crop_size=[8, 8, 8]" in str(e.value)
    with pytest.raises(BundleError):
        check_crop_size(net, crop, num_outputs=3)


def test_check_command_refuses_a_crop_the_network_cannot_take(tmp_path):
    import shutil

    from click.testing import CliRunner

    from medpipe.cli import cli

    bundle = tmp_path / "b"
    shutil.copytree(MALIGNANCY / "configs", bundle / "configs")
    common = json.loads((bundle / "configs" / "common.json").read_text())
    common["network_def"] = {
        "_target_": "DenseNet121",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
    }
    common["crop_size"] = [8, 8, 8]
    (bundle / "configs" / "common.json").write_text(json.dumps(common))
    result = CliRunner().invoke(cli, ["check", "--bundle", str(bundle)])
    assert result.exit_code == 3 and "BUNDLE_UNTRUSTED" in result.output  # its configs changed: untrusted
    result = CliRunner().invoke(cli, ["check", "--trust-bundle", "--bundle", str(bundle)])  # the author's own edit
    assert result.exit_code == 3
    assert "BUNDLE_CROP_SIZE_INVALID" in result.output


def test_class_weights_balance_the_classes():
    w = class_weights([{"label": 0}] * 30 + [{"label": 1}] * 10, 2)
    assert torch.allclose(w, torch.tensor([40 / 60, 40 / 20]))
    assert class_weights([{"label": 0}] * 4, 2)[1] == 1.0


def test_shipped_weights_fit_the_network_and_threshold_is_a_probability():
    from medpipe.bundle.weights import load_state_dict

    net, crop = bundle_network()
    net.load_state_dict(load_state_dict(MALIGNANCY / "models" / "model.pt"))  # strict: every tensor fits
    net.eval()
    with torch.no_grad():
        prob = torch.softmax(net(torch.zeros(2, 1, *crop)), dim=1)
    assert prob.shape == (2, 2) and torch.allclose(prob.sum(1), torch.ones(2))
    record = json.loads((MALIGNANCY / "models" / "threshold.json").read_text())
    assert 0 < record["threshold"] < 1 and record["positive_class"] == 1




def test_rating_target_scales_the_rating_into_class_probabilities():
    from medpipe.bundle.classifier import RatingTargetd
    from medpipe.errors import ManifestError

    entry = {"case_id": "n1", "image": "x.nii.gz", "label": 0, "Malignancy_value": 3.0}
    out = RatingTargetd(target="rating")(entry)
    assert torch.equal(out["label"], torch.tensor([0.5, 0.5])) and entry["label"] == 0  # the entry is not changed
    assert torch.equal(RatingTargetd(target="rating")({**entry, "Malignancy_value": 5})["label"], torch.tensor([0.0, 1.0]))
    assert torch.equal(RatingTargetd(target="rating", low=0, high=10)({**entry, "Malignancy_value": 12})["label"],
                       torch.tensor([0.0, 1.0]))  # clipped  # fmt: skip
    assert RatingTargetd(target="label")(entry) == entry  # the benign / malignant call, as before
    for missing in ({}, {"Malignancy_value": ""}, {"Malignancy_value": float("nan")}):
        with pytest.raises(ManifestError) as e:
            RatingTargetd(target="rating")({**{k: v for k, v in entry.items() if k != "Malignancy_value"}, **missing})
        assert e.value.code == "MANIFEST_INVALID" and "n1" in str(e.value)
    for bad in ({"target": "ratings"}, {"low": 5, "high": 1}):
        with pytest.raises(BundleError) as e:
            RatingTargetd(**{"target": "rating", **bad})
        assert e.value.code == "CONFIG_BAD_OVERRIDE"


def test_the_train_config_trains_on_the_rating_when_asked():
    """``--set target=rating``: the training preprocessing turns each entry's label into the scaled
    rating; validation keeps the benign / malignant labels its AUC is computed on."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(MALIGNANCY / "configs" / f) for f in ("common.json", "train.json")])
    parser["target"] = "rating"
    step = parser.get_parsed_content("train::target_transform")
    assert step.enabled and step.rating_key == "Malignancy_value" and (step.low, step.high) == (1.0, 5.0)
    assert "RatingTargetd" not in json.dumps(parser.get("validate"))
