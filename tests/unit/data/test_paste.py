"""Nodule crops pasted into a host chest CT: where they go, what they change, which patients feed which split."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from scipy import ndimage

from medpipe.cli import cli
from medpipe.data.paste import alpha_map, blur_to, build_pasted
from medpipe.errors import ManifestError
from medpipe.lungs import lung_mask

GRID = [1.2, 1.2, 2.5]


def _host(path: Path) -> np.ndarray:
    """A chest-like CT on the bundle grid already: a soft-tissue body in -1000 air, two lungs of -850 with
    a dense line (a vessel) through each."""
    shape = (120, 100, 40)
    x, y, z = np.indices(shape)
    ct = np.full(shape, -1000.0)
    ct[((x - 60) / 55.0) ** 2 + ((y - 50) / 42.0) ** 2 <= 1] = 40.0
    for cx in (35, 85):
        ct[((x - cx) / 20.0) ** 2 + ((y - 50) / 28.0) ** 2 + ((z - 20) / 18.0) ** 2 <= 1] = -850.0
        ct[cx - 1 : cx + 1, 30:70, 10:30] = 30.0
    nib.save(nib.Nifti1Image(ct.astype(np.int16), np.diag([*GRID, 1.0])), path)
    return ct


def _crop(folder: Path, name: str, radius_mm: float) -> None:
    """A spherical 40 HU nodule in -850 lung at 0.7 x 0.7 x 1.25 mm, and its mask."""
    spacing = np.array([0.7, 0.7, 1.25])
    shape = np.ceil(4 * radius_mm / spacing).astype(int)
    grid = (np.indices(shape).T * spacing).T - (shape * spacing / 2)[:, None, None, None]
    mask = np.sqrt((grid**2).sum(0)) <= radius_mm
    image = np.where(mask, 40, -850).astype(np.int16)
    affine = np.diag([*spacing, 1.0])
    nib.save(nib.Nifti1Image(image, affine), folder / "image" / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), folder / "mask" / f"{name}.nii.gz")


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    for sub in ("image", "mask"):
        (data / "crops" / sub).mkdir(parents=True)
    _host(data / "host.nii.gz")
    splits: dict[str, list[dict[str, str]]] = {"training": [], "validation": [], "test": []}
    for split, patient, radius in [("training", "P1", 4.0), ("training", "P2", 6.0), ("validation", "P3", 5.0),
                                   ("test", "P4", 5.0)]:  # fmt: skip
        _crop(data / "crops", patient, radius)
        splits[split].append({"case_id": patient, "patient": patient, "image": f"image/{patient}.nii.gz",
                              "mask": f"mask/{patient}.nii.gz", "label": 0})  # fmt: skip
    (data / "crops.json").write_text(json.dumps({**splits, "dataset_dir": "crops"}))
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({
        "name": "t", "data_root": "data", "crops": "data/crops.json", "spacing": GRID, "feather_mm": 3.0, "seed": 1,
        "hosts": [
            {"name": "low", "path": "host.nii.gz", "slices": [0, 20], "split": "training", "volumes": 3, "per_volume": 2},
            {"name": "high", "path": "host.nii.gz", "slices": [20, 40], "split": "validation", "volumes": 2, "per_volume": 1},
        ],
    }))  # fmt: skip
    return recipe


def test_pasted_nodules_lie_in_the_lung_field_and_change_nothing_else(recipe: Path, tmp_path: Path):
    out = tmp_path / "out"
    content = build_pasted(recipe, out, echo=lambda _: None)
    host = np.asarray(nib.load(recipe.parent / "data" / "host.nii.gz").dataobj).astype(np.float32)
    assert [e["case_id"] for e in content["training"]] == ["low_000", "low_001", "low_002"]
    assert [e["case_id"] for e in content["validation"]] == ["high_000", "high_001"]
    for split, first in (("training", 0), ("validation", 20)):
        for entry in content[split]:
            image = nib.load(out / entry["image"])
            label = np.asarray(nib.load(out / entry["label"]).dataobj).astype(bool)
            array = np.asarray(image.dataobj).astype(np.float32)
            slab = host[:, :, first : first + 20]
            assert array.shape == slab.shape  # already on the grid: no resampling of the host
            # the slab's place in the world is kept (voxel 0 of the slab is voxel `first` of the host)
            assert np.allclose(image.affine[:3, 3], [0.0, 0.0, first * GRID[2]])
            nodules = content["pasted"][entry["case_id"]]["nodules"]
            _, n = ndimage.label(label)
            assert n == len(nodules) >= 1
            field = lung_mask(slab, tuple(GRID))
            assert field[label].all()  # every labelled voxel inside the lung field
            assert array[label].mean() > -200  # the nodule's own HU came along
            # no seam: outside the feathered support around each nodule the host is untouched, and the
            # image never steps by more than the nodule's own contrast
            support = ndimage.binary_dilation(label, iterations=4)
            assert np.array_equal(np.round(slab[~support]), array[~support])
            changed = np.abs(array - slab) > 1
            assert changed[~ndimage.binary_dilation(label, iterations=4)].sum() == 0
            # which patients feed which split: P1/P2 training, P3 validation, P4 (test) nowhere
            used = {p["crop"] for p in nodules}
            assert used <= ({"P1", "P2"} if split == "training" else {"P3"})
    # deterministic for a recipe and its seed
    again = build_pasted(recipe, tmp_path / "again", echo=lambda _: None)
    assert again["pasted"] == content["pasted"]
    for entry in content["training"]:
        assert (out / entry["image"]).read_bytes() != b""
        a = np.asarray(nib.load(out / entry["image"]).dataobj)
        b = np.asarray(nib.load(tmp_path / "again" / entry["image"]).dataobj)
        assert np.array_equal(a, b)


def test_blur_matches_a_coarser_host_and_alpha_leaves_the_crop_border_out():
    sharp = np.zeros((21, 21, 21), np.float32)
    sharp[10, 10, 10] = 1.0
    same = blur_to(sharp, np.array([1.0, 1.0, 1.0]), np.array([1.0, 1.0, 1.0]))
    assert np.array_equal(same, sharp)
    coarse = blur_to(sharp, np.array([1.0, 1.0, 1.0]), np.array([1.0, 1.0, 3.0]))
    # blurred along the third axis only, with a FWHM of sqrt(3^2 - 1^2) = 2.83 voxels
    assert coarse[10, 10, :].max() < 0.5 and np.isclose(coarse[10, 10, :].sum(), 1.0, atol=1e-3)
    assert np.allclose(coarse[:, 10, 10].sum() - coarse[10, 10, 10], 0.0, atol=1e-6)
    mask = np.zeros((15, 15, 15), bool)
    mask[5:10, 5:10, 5:10] = True
    alpha = alpha_map(mask, np.array([1.0, 1.0, 1.0]), 3.0)
    assert (alpha[mask] == 1).all()
    border = np.ones_like(mask)
    border[1:-1, 1:-1, 1:-1] = False
    assert (alpha[border] == 0).all()  # the crop's own box never shows


def test_bad_recipes_are_coded_errors(recipe: Path, tmp_path: Path):
    content = json.loads(recipe.read_text())
    content["hosts"][0]["slices"] = [0, 99]
    recipe.write_text(json.dumps(content))
    with pytest.raises(ManifestError) as err:
        build_pasted(recipe, tmp_path / "o", echo=lambda _: None)
    assert err.value.code == "PASTE_RECIPE_INVALID"
    content["hosts"][0]["slices"] = [0, 21]  # one slice of the validation slab: its background would leak
    recipe.write_text(json.dumps(content))
    with pytest.raises(ManifestError) as err:
        build_pasted(recipe, tmp_path / "o1", echo=lambda _: None)
    assert err.value.code == "PASTE_RECIPE_INVALID" and "overlap" in str(err.value)
    content["hosts"][0]["slices"] = [0, 20]
    content["hosts"][0]["split"] = "test"
    recipe.write_text(json.dumps(content))
    result = CliRunner().invoke(cli, ["manifest", "paste", str(recipe), "-o", str(tmp_path / "o2")])
    assert result.exit_code != 0 and "PASTE_RECIPE_INVALID" in result.output
