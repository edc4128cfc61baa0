"""Manifests: structure checks, path resolution and coded errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medpipe.data.manifest import UINT8_RANGE, inference_inputs, intensity_range, load_manifest, load_split
from medpipe.data.medmnist import medmnist_manifest
from medpipe.errors import InputError, ManifestError


def write(path: Path, content) -> Path:
    path.write_text(json.dumps(content) if not isinstance(content, str) else content)
    return path


@pytest.fixture
def small(tmp_path: Path) -> Path:
    (tmp_path / "d").mkdir()
    for name in ("a.nii.gz", "a_seg.nii.gz", "b.nii.gz", "b_seg.nii.gz"):
        (tmp_path / "d" / name).write_bytes(b"x")
    return write(
        tmp_path / "m.json",
        {
            "dataset_dir": "d",
            "training": [{"image": "a.nii.gz", "label": "a_seg.nii.gz"}],
            "validation": [{"image": "b.nii.gz", "label": "b_seg.nii.gz", "case_id": "b"}],
            "test": [],
        },
    )


def test_paths_resolve_against_dataset_dir_relative_to_manifest(small: Path) -> None:
    (entry,) = load_split(small, "validation")
    assert entry["image"] == str(small.parent / "d" / "b.nii.gz")
    assert entry["label"] == str(small.parent / "d" / "b_seg.nii.gz")
    assert entry["case_id"] == "b"  # non-path keys pass through


def test_dataset_dir_override_moves_the_root(small: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere"
    (small.parent / "d").rename(moved)
    with pytest.raises(ManifestError) as e:
        load_split(small, "training")
    assert e.value.code == "MANIFEST_MISSING_FILES"
    (entry,) = load_split(small, "training", dataset_dir=moved)
    assert entry["image"] == str(moved / "a.nii.gz")


def test_missing_files_are_listed(small: Path) -> None:
    (small.parent / "d" / "a_seg.nii.gz").unlink()
    with pytest.raises(ManifestError) as e:
        load_split(small, "training")
    assert e.value.code == "MANIFEST_MISSING_FILES"
    assert "a_seg.nii.gz" in str(e.value)


def test_missing_files_message_is_bounded(tmp_path: Path) -> None:
    entries = [{"image": f"img{i}.nii.gz", "label": f"lab{i}.nii.gz"} for i in range(20)]
    m = write(tmp_path / "m.json", {"training": entries})
    with pytest.raises(ManifestError) as e:
        load_split(m, "training")
    assert "40 file(s)" in str(e.value) and "and 35 more" in str(e.value)


def test_empty_split(small: Path) -> None:
    with pytest.raises(ManifestError) as e:
        load_split(small, "test")
    assert e.value.code == "MANIFEST_EMPTY_SPLIT"


def test_unknown_split_names_known_ones(small: Path) -> None:
    with pytest.raises(ManifestError) as e:
        load_split(small, "holdout")
    assert e.value.code == "MANIFEST_UNKNOWN_SPLIT"
    assert "training, validation, test" in str(e.value)


def test_entry_without_required_key(tmp_path: Path) -> None:
    m = write(tmp_path / "m.json", {"training": [{"image": "a.nii.gz"}]})
    with pytest.raises(ManifestError) as e:
        load_split(m, "training")
    assert e.value.code == "MANIFEST_INVALID" and "label" in str(e.value)


@pytest.mark.parametrize(
    "content",
    ["{not json", "[1, 2]", {"images": []}, {"training": {"image": "a"}}, {"training": ["a.nii.gz"]}],
)
def test_malformed_manifests(tmp_path: Path, content) -> None:
    with pytest.raises(ManifestError) as e:
        load_manifest(write(tmp_path / "m.json", content))
    assert e.value.code == "MANIFEST_INVALID"


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as e:
        load_manifest(tmp_path / "nope.json")
    assert e.value.code == "MANIFEST_NOT_FOUND"
    assert isinstance(e.value, ValueError)  # generic handlers still catch it


def test_inference_inputs_from_folder_and_errors(tmp_path: Path) -> None:
    (tmp_path / "b.nii.gz").write_bytes(b"x")
    (tmp_path / "a.nii").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not an image")
    assert [Path(e["image"]).name for e in inference_inputs(tmp_path)] == ["a.nii", "b.nii.gz"]
    with pytest.raises(InputError) as e:
        inference_inputs(tmp_path / "absent")
    assert e.value.code == "INPUT_NOT_FOUND"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError) as e:
        inference_inputs(empty)
    assert e.value.code == "INPUT_NO_IMAGES"


def test_tiny_dataset_manifest_resolves(tiny_dataset: Path) -> None:
    for split in ("training", "validation", "test"):
        for entry in load_split(tiny_dataset, split):
            assert Path(entry["image"]).is_file() and Path(entry["label"]).is_file()
            assert any(Path(entry["dicom"]).glob("*.dcm"))


# --- intensity_range: the input window a manifest's images need

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
