"""``medpipe manifest medmnist``: official splits from any MedMNIST 3D npz, read directly or as NIfTI,
and one coded line for every bad archive."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from medpipe.cli import cli
from medpipe.data.manifest import load_split
from medpipe.data.medmnist import LoadMedMNISTd, dataset_flag, medmnist_manifest
from medpipe.errors import ManifestError

SIZES = {"train": 6, "val": 3, "test": 4}


def write_npz(path: Path, side: int = 28, num_classes: int = 2, seed: int = 0, **replace) -> Path:
    """A MedMNIST-shaped archive with distinct random volumes and labels 0..num_classes-1."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in SIZES.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, side, side, side), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % num_classes).astype(np.uint8)[:, None]
    arrays.update(replace)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez_compressed(path, **arrays)
    return path


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize("side", [28, 64])
def test_manifest_keeps_official_splits_and_each_entry_loads_its_own_volume(tmp_path, side):
    npz = write_npz(tmp_path / f"nodulemnist3d{'_64' if side == 64 else ''}.npz", side=side)
    out = tmp_path / "manifests" / "nodule.json"
    result = run("manifest", "medmnist", str(npz), "-o", str(out))
    assert result.exit_code == 0, result.output
    content = json.loads(out.read_text())
    assert content["labels"] == {"0": "benign", "1": "malignant"} and content["num_classes"] == 2
    assert content["dataset_dir"] == ".."  # relative to the manifest: portable
    assert {s: len(content[s]) for s in ("training", "validation", "test")} == {
        "training": 6,
        "validation": 3,
        "test": 4,
    }
    arrays = np.load(npz)
    load = LoadMedMNISTd("image")
    for split, npz_split in (("training", "train"), ("test", "test")):
        entries = load_split(out, split)
        for i, entry in enumerate(entries):
            assert entry["label"] == int(arrays[f"{npz_split}_labels"][i, 0])
            image = load(entry)["image"]
            assert tuple(image.shape) == (1, side, side, side)
            np.testing.assert_array_equal(image[0].numpy(), arrays[f"{npz_split}_images"][i])
            assert np.allclose(image.affine.numpy(), np.eye(4))
            assert str(image.meta["filename_or_obj"]).endswith(f"#{npz_split}/{i}")


def test_nifti_cases_hold_the_same_voxels_as_the_npz(tmp_path):
    npz = write_npz(tmp_path / "organmnist3d.npz", num_classes=11)
    out = tmp_path / "organ.json"
    content = medmnist_manifest(npz, out, nifti_dir=tmp_path / "nii")
    assert content["num_classes"] == 11 and content["labels"]["10"] == "pancreas"
    entries = load_split(out, "validation")
    for i, entry in enumerate(entries):
        img = nib.load(entry["image"])
        np.testing.assert_array_equal(np.asarray(img.dataobj), np.load(npz)["val_images"][i])
        np.testing.assert_array_equal(img.affine, np.eye(4))
        loaded = LoadMedMNISTd("image")(entry)["image"]  # the same loader serves NIfTI paths
        np.testing.assert_array_equal(loaded[0].numpy(), np.load(npz)["val_images"][i])


def test_dataset_flag_from_file_name():
    assert dataset_flag("/x/vesselmnist3d.npz") == "vesselmnist3d"
    assert dataset_flag("fracturemnist3d_64.npz") == "fracturemnist3d"
    assert dataset_flag("my_volumes.npz") is None


@pytest.mark.parametrize(
    "name, kwargs, args, code",
    [
        ("vesselmnist3d.npz", {"val_labels": None}, [], "MEDMNIST_MISSING_KEYS"),
        (
            "vesselmnist3d.npz",
            {"test_labels": np.array([[0], [1], [2], [1]], np.uint8)},
            [],
            "MEDMNIST_UNEXPECTED_LABELS",
        ),
        (
            "fracturemnist3d.npz",
            {"train_labels": np.full((6, 1), 3, np.uint8)},
            [],
            "MEDMNIST_UNEXPECTED_LABELS",
        ),
        ("vesselmnist3d.npz", {"train_labels": np.zeros((6, 2), np.uint8)}, [], "MEDMNIST_BAD_SHAPE"),
        ("vesselmnist3d.npz", {"test_images": np.zeros((4, 28, 28), np.uint8)}, [], "MEDMNIST_BAD_SHAPE"),
        ("my_volumes.npz", {}, [], "MEDMNIST_UNKNOWN_DATASET"),
        (
            "my_volumes.npz",
            {"val_labels": np.full((3, 1), 4, np.uint8)},
            ["--num-classes", "3"],
            "MEDMNIST_UNEXPECTED_LABELS",
        ),
    ],
)
def test_bad_archives_end_with_one_coded_line(tmp_path, name, kwargs, args, code):
    npz = write_npz(tmp_path / name, **kwargs)
    result = run("manifest", "medmnist", str(npz), "-o", str(tmp_path / "m.json"), *args)
    assert result.exit_code == 3
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert result.output.startswith(f"error: {code}: ")
    assert not (tmp_path / "m.json").exists()


def test_num_classes_option_makes_unknown_archives_usable(tmp_path):
    npz = write_npz(tmp_path / "my_volumes.npz", num_classes=3)
    content = medmnist_manifest(npz, tmp_path / "m.json", num_classes=3)
    assert content["labels"] == {"0": "class0", "1": "class1", "2": "class2"}


@pytest.mark.parametrize("payload", [b"", b"PK\x03\x04 not really a zip", b"\x93NUMPY garbage"])
def test_corrupt_npz_is_refused(tmp_path, payload):
    npz = tmp_path / "vesselmnist3d.npz"
    npz.write_bytes(payload)
    with pytest.raises(ManifestError) as info:
        medmnist_manifest(npz, tmp_path / "m.json")
    assert info.value.code == "MEDMNIST_UNREADABLE"
    result = run("manifest", "medmnist", str(tmp_path / "absent.npz"), "-o", str(tmp_path / "m.json"))
    assert result.exit_code == 3 and "MEDMNIST_UNREADABLE" in result.output
