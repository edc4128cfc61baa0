"""Synthetic nodule crops: deterministic, labelled by overlapping signs, written atomically on first use."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medpipe.data.manifest import intensity_range, load_split
from medpipe.data.synthetic import ensure_generated
from medpipe.data.synthetic import nodule_crops as nc
from medpipe.data.synthetic.writer import STAMP
from medpipe.errors import DataGenerationError


def test_crop_is_deterministic_hu_and_centred():
    a, affine, desc = nc.make_crop(7, 1)
    b, _, desc_b = nc.make_crop(7, 1)
    assert np.array_equal(a, b) and desc == desc_b
    assert a.dtype == np.int16 and a.shape == nc.PATCH_SHAPE
    # RAS affine at the phantom spacing, centred on the origin
    assert np.allclose(np.abs(np.diag(affine)[:3]), nc.PATCH_SPACING)
    centre = affine @ np.array([*(np.array(a.shape) - 1) / 2, 1.0])
    assert np.allclose(centre[:3], 0, atol=1e-6)
    # lung background around a denser nodule near the centre
    c = tuple(s // 2 for s in a.shape)
    assert np.median(a) < -700
    assert a[c[0] - 2 : c[0] + 3, c[1] - 2 : c[1] + 3, c[2]].mean() > -700
    assert desc["diameter_mm"] == nc.nominal_diameter(7, 1)


def test_classes_overlap_but_differ_in_distribution():
    descs = {lab: [nc.make_crop(i, lab)[2] for i in range(40)] for lab in (0, 1)}
    d0 = np.array([d["diameter_mm"] for d in descs[0]])
    d1 = np.array([d["diameter_mm"] for d in descs[1]])
    assert d0.mean() < d1.mean()
    assert d0.max() > d1.min()  # sizes overlap: diameter alone does not separate the classes
    spic = [sum(d["shape"] == "spiculated" for d in descs[lab]) for lab in (0, 1)]
    calc = [sum(d["calcification"] is not None for d in descs[lab]) for lab in (0, 1)]
    assert spic[1] > spic[0] and calc[0] > calc[1]
    with pytest.raises(DataGenerationError):
        nc.make_crop(0, 2)


def test_manifest_content_and_its_intensity_range(tmp_path):
    splits = {"training": 10, "validation": 5, "test": 5}
    content = nc.manifest_content("data", splits)
    assert [len(content[s]) for s in splits] == [10, 5, 5]
    labels = [e["label"] for e in content["training"]]
    assert set(labels) == {0, 1} and sum(labels) == 4
    assert content["synthetic"] is True and content["labels"] == {"0": "benign", "1": "malignant"}
    assert content["generator"] == {"name": nc.GENERATOR_NAME, "version": nc.GENERATOR_VERSION,
                                    "splits": splits}
    assert "generator" not in nc.manifest_content("data", splits, with_generator=False)
    m = tmp_path / "m.json"
    m.write_text(json.dumps(content))
    assert intensity_range(m, default=[0.0, 1.0]) == list(nc.HU_WINDOW)  # stated by the manifest


def test_generated_on_first_use_through_the_manifest(tmp_path):
    splits = {"training": 4, "validation": 2, "test": 2}
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(nc.manifest_content("crops", splits)))
    entries = load_split(manifest, "validation")
    assert len(entries) == 2 and all(isinstance(e["label"], int) for e in entries)
    root = tmp_path / "crops"
    assert (root / STAMP).is_file() and len(list((root / "imagesTr").iterdir())) == 8
    cases = json.loads((root / "cases.json").read_text())["cases"]
    assert [c["label"] for c in cases] == [
        e["label"] for s in splits for e in nc.manifest_content("x", splits)[s]
    ]
    assert not list(tmp_path.glob(".crops.tmp-*"))
    other = tmp_path / "other"
    (other / "x").mkdir(parents=True)
    with pytest.raises(DataGenerationError) as e:
        ensure_generated(nc.manifest_content("x", splits)["generator"], other)
    assert e.value.code == "DATA_DIR_CONFLICT"


def test_default_manifest_content_matches_the_generator():
    """What ``default_manifest('lung_nodule_malignancy_ct_demo')`` writes: 720 crops, 40 % malignant."""
    content = nc.manifest_content(".")
    assert content["dataset_dir"] == "." and content["generator"]["splits"] == nc.DEFAULT_SPLITS
    for split, count in nc.DEFAULT_SPLITS.items():
        assert len(content[split]) == count and sum(e["label"] for e in content[split]) == round(0.4 * count)
    ids = [e["case_id"] for s in nc.DEFAULT_SPLITS for e in content[s]]
    assert len(ids) == len(set(ids)) == sum(nc.DEFAULT_SPLITS.values())  # no case in two splits
