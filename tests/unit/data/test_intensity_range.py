"""``medpipe.data.manifest.intensity_range``: the input window a manifest's images need."""

from __future__ import annotations

import json

import numpy as np

from medpipe.data.manifest import UINT8_RANGE, intensity_range
from medpipe.data.medmnist import medmnist_manifest

HU = [-1000.0, 400.0]


def test_explicit_range_wins_else_npz_entries_are_uint8_else_default(tmp_path):
    m = tmp_path / "m.json"
    m.write_text(json.dumps({"intensity_range": [-1200, 600], "training": [{"image": "a.nii.gz"}]}))
    assert intensity_range(m, HU) == [-1200.0, 600.0]
    npz_entry = {"image": "x.npz", "npz_split": "train", "npz_index": 0, "label": 1}
    m.write_text(json.dumps({"intensity_range": [-1200, 600], "training": [npz_entry]}))
    assert intensity_range(m, HU) == [-1200.0, 600.0]
    m.write_text(json.dumps({"training": [npz_entry]}))
    assert intensity_range(m, HU) == [0.0, 255.0]
    # the name or description no longer decide: an HU manifest called "...mnist..." keeps the default
    m.write_text(json.dumps({"name": "nodulemnist3d", "training": [{"image": "a.nii.gz"}]}))
    assert intensity_range(m, HU) == HU
    m.write_text(json.dumps({"intensity_range": "wide", "training": []}))
    assert intensity_range(m, HU) == HU


def test_missing_or_unreadable_manifest_gets_the_default(tmp_path):
    assert intensity_range(tmp_path / "absent.json", HU) == HU
    assert intensity_range(None, (0, 1)) == [0.0, 1.0]
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert intensity_range(bad, HU) == HU


def test_medmnist_manifests_state_their_uint8_range(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 3), ("val", 2), ("test", 2)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).astype(np.uint8)[:, None]
    np.savez(tmp_path / "nodulemnist3d.npz", **arrays)
    out = tmp_path / "nm.json"
    medmnist_manifest(tmp_path / "nodulemnist3d.npz", out)
    assert json.loads(out.read_text())["intensity_range"] == list(UINT8_RANGE)
    assert intensity_range(out, HU) == [0.0, 255.0]
