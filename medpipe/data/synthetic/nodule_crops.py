"""SYNTHETIC nodule crops for the malignancy classifier's embedded default training.

Each case is a small chest-CT patch in HU around one lung nodule, at the phantoms' native spacing
(0.8 x 0.8 x 2.5 mm, :mod:`.phantom`): lung parenchyma with texture and a gravity
gradient, pulmonary vessels crossing the patch, sometimes the chest wall, correlated CT noise, and one
nodule near the centre. The bundle's own preprocessing then resamples it to the classifier's
``crop_spacing`` and ``crop_size``, exactly as batch inference does around each lesion found by
``lung_nodule_ct``.

Labels follow the radiological signs of malignancy, drawn from overlapping distributions so that no
single feature separates the classes:

============  ======================  ==========================================================
class         diameter (mm)           look
============  ======================  ==========================================================
0 benign      4-14 (mostly < 10)      smooth 65 %, lobulated 30 %, spiculated 5 %; solid or
                                      ground glass; calcified 35 % (central, diffuse or popcorn)
1 malignant   7-26                    spiculated 45 %, lobulated 35 %, smooth 20 %; solid 50 %,
                                      part-solid 40 %, ground glass 10 %; calcified 4 % (eccentric)
============  ======================  ==========================================================

The nodule itself is drawn with the phantoms' primitives (:mod:`.shapes`: the same surface, texture,
densities and partial-volume edges), with spicules and calcification layered on top.

Everything is seeded (one seed per case), so the default manifest
(``medpipe.data.synthetic.default_manifest('lung_nodule_malignancy_ct_demo')``) names a generator
instead of shipping volumes; the first use writes ``imagesTr/<case>.nii.gz`` (int16
HU) and ``cases.json`` (per-case diameter, shape, density, calcification, label) atomically. These are
not patient data and say nothing about accuracy on patients; train on NoduleMNIST3D or LIDC crops with
``--manifest`` for that.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.data.nifti import write_nifti
from medpipe.data.synthetic.shapes import (
    NODULE_KINDS,
    Box,
    Grid,
    NoduleShape,
    blend_nodule,
    capsule_sdf,
    correlated_noise,
    nodule_density,
    paint_capsule_fraction,
    partial_volume,
    relative_box,
    smooth_field,
    to_hu_int16,
)
from medpipe.data.synthetic.writer import Generator, write_generated
from medpipe.errors import Code

__all__ = ["DEFAULT_SPLITS", "GENERATOR", "GENERATOR_NAME", "GENERATOR_VERSION", "HU_WINDOW", "PATCH_SHAPE",
           "PATCH_SPACING", "generate_dataset", "make_crop", "manifest_content", "nominal_diameter",
           "split_plan"]

GENERATOR_NAME = "lung_nodule_malignancy_ct_demo"
#: Bump when the recipe changes: existing generated folders are then rebuilt.
GENERATOR_VERSION = 1
BASE_SEED = 20261124
DEFAULT_SPLITS: dict[str, int] = {"training": 480, "validation": 120, "test": 120}
#: Native grid of a patch (phantom spacing); 44.8 x 44.8 x 50 mm, more than the classifier's field of view.
PATCH_SHAPE = (56, 56, 20)
PATCH_SPACING = (0.8, 0.8, 2.5)
#: Window of the HU crops (the lung window), stated in the manifest as its ``intensity_range``.
HU_WINDOW = (-1000.0, 400.0)

# (probability tables) shape, density kind, calcification, per class
CROP_SHAPES = ("smooth", "lobulated", "spiculated")
_RECIPE = {
    0: {"shape": (0.65, 0.30, 0.05), "kind": (0.75, 0.05, 0.20), "calcified": 0.35},
    1: {"shape": (0.20, 0.35, 0.45), "kind": (0.50, 0.40, 0.10), "calcified": 0.04},
}


def case_id(index: int) -> str:
    return f"crop_{index:04d}"


def _diameter(rng: np.random.Generator, label: int) -> float:
    if label == 0:
        return float(np.clip(rng.gamma(3.0, 1.6) + 3.0, 4.0, 14.0))
    return float(rng.uniform(7.0, 26.0))


def _case_rng(seed: int, label: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([BASE_SEED, int(seed), int(label)]))


def nominal_diameter(seed: int, label: int) -> float:
    """The nominal diameter (mm) of case ``seed`` without rendering it (the target of a regression head)."""
    return round(_diameter(_case_rng(seed, label), label), 3)


def _lung_background(rng: np.random.Generator, grid: Grid) -> tuple[np.ndarray, bool]:
    """Lung parenchyma with texture, a gravity gradient and 2-5 vessels crossing the patch and, in a
    quarter of the cases, the chest wall along one side; returns (float32 HU image, chest wall?)."""
    image = np.float32(rng.uniform(-880, -820)) + 18 * smooth_field(rng, grid, 6.0)
    image += np.float32(rng.uniform(-1, 1) * 25) * (grid.y / grid.fov[1])[None, :, None].astype(np.float32)
    edge_mm = grid.edge_mm
    vessels = np.zeros(grid.shape, np.float32)
    half = np.array(grid.fov) / 2
    for _ in range(int(rng.integers(2, 6))):
        point = rng.uniform(-half, half)
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        radius = float(rng.uniform(0.7, 2.2))
        paint_capsule_fraction(vessels, grid, point - direction * 60, point + direction * 60, radius,
                               radius * 0.8, edge_mm)
    image += vessels * (np.float32(40) - image)
    wall = bool(rng.random() < 0.25)
    if wall:  # chest wall along one side, beyond the nodule
        axis, side = int(rng.integers(2)), float(rng.choice([-1.0, 1.0]))
        coord = (grid.x, grid.y)[axis]
        depth = side * coord - float(rng.uniform(0.32, 0.45)) * grid.fov[axis]
        weight = np.clip(0.5 + depth / edge_mm, 0, 1).astype(np.float32)
        weight = weight[:, None, None] if axis == 0 else weight[None, :, None]
        image += weight * (np.float32(45) - image)
    return image, wall


def _spicules(rng: np.random.Generator, grid: Grid, center: np.ndarray, radius: float, box: Box
              ) -> np.ndarray:
    """Signed distance (mm) on ``box`` to 6-14 thin spicules radiating from the nodule surface."""
    sd = np.full(tuple(s.stop - s.start for s in box), np.inf, np.float32)
    for _ in range(int(rng.integers(6, 15))):
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        start = center + direction * radius * 0.6
        end = center + direction * radius * (1.0 + rng.uniform(0.4, 1.0))
        hit = capsule_sdf(grid, start, end, float(rng.uniform(0.8, 1.3)), 0.3)
        if hit is None:
            continue
        spicule_box, spicule_sd = hit
        local = relative_box(spicule_box, box)
        np.minimum(sd[local], spicule_sd, out=sd[local])
    return sd


def _calcification(rng: np.random.Generator, grid: Grid, nodule: NoduleShape, box: Box, sd: np.ndarray,
                   weight: np.ndarray, label: int) -> tuple[str, np.ndarray, np.float32]:
    """Pattern, fraction (on ``box``) and HU of a calcification: eccentric (malignant) or central, diffuse
    or popcorn (benign)."""
    pattern = "eccentric" if label == 1 else str(rng.choice(["central", "diffuse", "popcorn"]))
    calcium_hu = np.float32(rng.uniform(250, 700))
    if pattern == "diffuse":
        return pattern, weight * np.float32(rng.uniform(0.6, 1.0)), calcium_hu
    n_blobs = {"central": 1, "eccentric": 1, "popcorn": int(rng.integers(3, 6))}[pattern]
    fraction = np.zeros(sd.shape, np.float32)
    for _ in range(n_blobs):
        offset = rng.standard_normal(3)
        central = pattern == "central"
        offset *= (0.0 if central else rng.uniform(0.3, 0.55) * nodule.radius) / np.linalg.norm(offset)
        blob_radius = nodule.radius * (rng.uniform(0.3, 0.5) if central else rng.uniform(0.15, 0.3))
        hit = capsule_sdf(grid, nodule.center + offset, nodule.center + offset, blob_radius, blob_radius)
        if hit is None:
            continue
        blob_box, blob_sd = hit
        view = fraction[relative_box(blob_box, box)]
        np.maximum(view, partial_volume(blob_sd, grid.edge_mm), out=view)
    fraction *= (sd <= 0).astype(np.float32)
    return pattern, fraction, calcium_hu


def make_crop(seed: int, label: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One synthetic patch: ``(image int16 HU [i, j, k], affine RAS 4x4, description)``.

    The same ``seed`` and ``label`` give identical arrays. ``[i, j, k]`` follow the phantom's convention
    (LPS-ordered axes, centred on the origin); the affine maps them to RAS as NIfTI expects.
    """
    if label not in (0, 1):
        raise Code.PHANTOM_INVALID_SPEC(
            f"label={label!r} must be 0 (benign) or 1 (malignant)"
        )
    rng = _case_rng(seed, label)
    grid = Grid(PATCH_SHAPE, PATCH_SPACING)
    recipe = _RECIPE[label]
    diameter = _diameter(rng, label)  # the first draw: see nominal_diameter
    shape = CROP_SHAPES[int(rng.choice(3, p=recipe["shape"]))]
    kind = NODULE_KINDS[int(rng.choice(3, p=recipe["kind"]))]
    calcified = bool(rng.random() < recipe["calcified"])
    if calcified:
        kind = "solid"
    image, wall = _lung_background(rng, grid)

    # The nodule, near the centre: the phantoms' renderer, with spicules and calcification on top.
    center = rng.uniform(-1.5, 1.5, 3)
    nodule = NoduleShape(rng, center, diameter, "smooth" if shape == "spiculated" else shape)
    reach = nodule.max_radius * (2.2 if shape == "spiculated" else 1.0) + 2 * grid.edge_mm
    box = grid.box(center - reach, center + reach)
    sd = nodule.signed_distance(grid, box)
    if shape == "spiculated":
        sd = np.minimum(sd, _spicules(rng, grid, center, nodule.radius, box))
    weight, value = nodule_density(rng, grid, nodule, box, sd, kind, grid.edge_mm)
    pattern = None
    if calcified:
        pattern, calcium, calcium_hu = _calcification(rng, grid, nodule, box, sd, weight, label)
        value = value + calcium * (calcium_hu - value)
    blend_nodule(image, box, weight, value, kind)
    image += correlated_noise(rng, grid.shape, float(rng.uniform(12, 28)))
    desc = {
        "label": int(label),
        "diameter_mm": round(diameter, 3),
        "shape": shape,
        "kind": kind,
        "calcification": pattern,
        "chest_wall": wall,
        "center_lps_mm": [round(float(c), 3) for c in center],
    }
    return to_hu_int16(image), grid.affine_ras(), desc


def _labels(n: int, seed: int) -> np.ndarray:
    """Class of each case of a split: 40 % malignant, in a seeded order."""
    labels = np.zeros(n, np.int64)
    labels[: round(0.4 * n)] = 1
    np.random.default_rng(seed).shuffle(labels)
    return labels


def split_plan(splits: Mapping[str, int] = DEFAULT_SPLITS) -> dict[str, list[tuple[int, int]]]:
    """``{split: [(case index, label), ...]}``: consecutive indices, labels seeded per split."""
    out, index = {}, 0
    for s, (split, count) in enumerate(splits.items()):
        out[split] = [(index + i, int(lab)) for i, lab in enumerate(_labels(count, BASE_SEED + s))]
        index += count
    return out


def manifest_content(
    dataset_dir: str, splits: Mapping[str, int] = DEFAULT_SPLITS, with_generator: bool = True
) -> dict[str, Any]:
    """The demo manifest (what ``default_manifest('lung_nodule_malignancy_ct_demo')`` writes). Entries
    carry the class (``label``) and the nominal diameter (``diameter_mm``, for a regression head)."""
    content: dict[str, Any] = {
        "name": GENERATOR_NAME,
        "description": (
            "SYNTHETIC chest-CT patches (0.8x0.8x2.5 mm, HU) around one lung nodule each: benign-looking "
            "(small, smooth, often calcified) or malignant-looking (larger, spiculated/lobulated, part-solid), "
            "with overlapping sizes; generated deterministically by medpipe on first use. Not patient data."
        ),
        "synthetic": True,
        "modality": "CT",
        "intensity_range": list(HU_WINDOW),
        "labels": {"0": "benign", "1": "malignant"},
        "dataset_dir": dataset_dir,
        "generator": GENERATOR.stamp(splits),
    }
    for split, cases in split_plan(splits).items():
        content[split] = [
            {
                "case_id": case_id(i),
                "image": f"imagesTr/{case_id(i)}.nii.gz",
                "label": lab,
                "diameter_mm": nominal_diameter(i, lab),
            }
            for i, lab in cases
        ]
    if not with_generator:
        del content["generator"]
    return content


def _write_case(args: tuple[Path, int, int]) -> dict[str, Any]:
    root, index, label = args
    image, affine, desc = make_crop(index, label)
    write_nifti(root / "imagesTr" / f"{case_id(index)}.nii.gz", image, affine, dtype="int16")
    return {"case_id": case_id(index), **desc}


def generate_dataset(
    root: str | Path,
    splits: Mapping[str, int] = DEFAULT_SPLITS,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write every crop into ``root`` (via a temporary folder renamed at the end); returns ``root``."""
    plan = [(i, lab) for cases in split_plan(splits).values() for i, lab in cases]
    return write_generated(
        root, ("imagesTr",), lambda tmp: [(tmp, i, lab) for i, lab in plan], _write_case,
        stamp=GENERATOR.stamp(splits), what="nodule crops", desc="generating nodule crops", unit="crop",
        workers=workers, progress=progress, chunksize=16,
    )  # fmt: skip


GENERATOR = Generator(GENERATOR_NAME, GENERATOR_VERSION, DEFAULT_SPLITS, manifest_content, generate_dataset)
