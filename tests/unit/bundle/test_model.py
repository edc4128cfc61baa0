"""medpipe.bundle.model / weights: a bundle opened for prediction, and the one rule for which weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medpipe.bundle.layout import BundleLayout
from medpipe.bundle.model import BundleModel, is_classifier
from medpipe.bundle.weights import resolve_weights
from medpipe.data.images import nifti_image
from medpipe.data.manifest import load_split
from medpipe.errors import BundleError
from tests.conftest import BUNDLE, REPO

VESSEL = REPO / "bundles" / "vessel_aneurysm_mra"


def test_the_shipped_weights_by_default_a_run_folder_or_a_file_when_asked(tmp_path: Path) -> None:
    layout = BundleLayout.open(BUNDLE)
    shipped = resolve_weights(layout)
    assert shipped.shipped and shipped.path == layout.model_pt.resolve()
    assert shipped.describe(layout, "0.1.1") == f"models/model.pt (shipped with 0.1.1, sha256 {shipped.sha256[:8]})"
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(layout.model_pt, run / "model.pt")
    from_run = resolve_weights(layout, run)
    assert not from_run.shipped and from_run.path == (run / "model.pt").resolve()
    assert from_run.sha256 == shipped.sha256 and "not the shipped weights" in from_run.describe(layout, "0.1.1")
    assert resolve_weights(layout, run / "model.pt") == from_run
    for missing in (tmp_path / "nope.pt", tmp_path):  # no file; a folder without model.pt
        with pytest.raises(BundleError) as e:
            resolve_weights(layout, missing)
        assert e.value.code == "BUNDLE_NO_WEIGHTS" and "--weights" not in str(e.value)


def test_a_bundle_without_weights_is_one_coded_error_for_every_command(tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(BUNDLE / "configs", bundle / "configs")
    with pytest.raises(BundleError) as e:
        BundleModel.open(bundle)
    assert e.value.code == "BUNDLE_NO_WEIGHTS" and "medpipe train --bundle" in str(e.value)


def test_weights_of_another_network_are_refused_naming_the_tensor(tmp_path: Path) -> None:
    weights = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(1)}, weights)
    with pytest.raises(BundleError) as e:
        BundleModel.open(BUNDLE, weights=weights)
    assert e.value.code == "CHECKPOINT_MISMATCH" and "other.pt" in str(e.value)


def test_what_the_bundle_says_about_itself() -> None:
    seg = BundleModel.open(BUNDLE, device="cpu")
    assert seg.kind == "segmentation" and seg.modality == "CT" and seg.class_names == {0: "background", 1: "nodule"}
    assert not seg.network.training and seg.weights.shipped
    assert not any(type(t).__name__.startswith("SaveImage") for t in seg.postprocessing)
    clf = BundleModel.open(VESSEL, device="cpu")
    assert clf.kind == "classification" and is_classifier(VESSEL) and not is_classifier(BUNDLE)
    with pytest.raises(BundleError) as e:
        clf.segment(None)  # type: ignore[arg-type]  # refused before the input is looked at
    assert e.value.code == "BUNDLE_NOT_SEGMENTER"


def test_an_image_in_memory_is_preprocessed_exactly_as_the_bundle_loads_the_file(tiny_dataset: Path) -> None:
    """What evaluate and infer hand over equals what the bundle's own LoadImaged makes of the file."""
    model = BundleModel.open(BUNDLE, device="cpu")
    path = load_split(tiny_dataset, "test")[0]["image"]
    from_memory = model.prepare(nifti_image(path))["image"]
    from_file = model.preprocessing({"image": path})["image"]
    assert from_memory.shape == from_file.shape
    np.testing.assert_allclose(from_memory.numpy(), from_file.numpy(), atol=1e-6)
    np.testing.assert_allclose(from_memory.affine.numpy(), from_file.affine.numpy(), atol=1e-6)
