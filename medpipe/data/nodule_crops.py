"""SYNTHETIC nodule crops for the malignancy classifier's embedded default training.

Each case is a small chest-CT patch in HU around one lung nodule, at the phantoms' native spacing
(0.8 x 0.8 x 2.5 mm, :mod:`medpipe.data.phantom`): lung parenchyma with texture and a gravity
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

Everything is seeded (one seed per case), so the manifest ``data_manifests/lung_nodule_malignancy_ct_demo.json``
names a generator instead of shipping volumes; the first use writes ``imagesTr/<case>.nii.gz`` (int16
HU) and ``cases.json`` (per-case diameter, shape, density, calcification, label) atomically. These are
not patient data and say nothing about accuracy on patients; train on NoduleMNIST3D or LIDC crops with
``--manifest`` for that.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.errors import Code

GENERATOR_NAME = "lung_nodule_malignancy_ct_demo"
#: Bump when the recipe changes: existing generated folders are then rebuilt.
GENERATOR_VERSION = 1
BASE_SEED = 20261124
DEFAULT_SPLITS: dict[str, int] = {"training": 480, "validation": 120, "test": 120}
STAMP = ".medpipe_generated.json"
#: Native grid of a patch (phantom spacing); 44.8 x 44.8 x 50 mm, more than the classifier's field of view.
PATCH_SHAPE = (56, 56, 20)
PATCH_SPACING = (0.8, 0.8, 2.5)
#: Window a MedMNIST-style uint8 crop is assumed to hold; HU crops are windowed to ``HU_WINDOW``.
HU_WINDOW = (-1000.0, 400.0)
UINT8_RANGE = (0.0, 255.0)

# (probability tables) shape, density kind, calcification, per class
_SHAPES = ("smooth", "lobulated", "spiculated")
_KINDS = ("solid", "part-solid", "ground-glass")
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


def _spikes(rng: np.random.Generator, g: Any, center: np.ndarray, radius: float, sl: Any) -> np.ndarray:
    """Signed distance (mm) to 6-14 thin spicules radiating from the nodule surface."""
    from medpipe.data.phantom import _capsule_sd

    sd = np.full(tuple(s.stop - s.start for s in sl), np.inf, np.float32)
    for _ in range(int(rng.integers(6, 15))):
        d = rng.standard_normal(3)
        d /= np.linalg.norm(d)
        a = center + d * radius * 0.6
        b = center + d * radius * (1.0 + rng.uniform(0.4, 1.0))
        hit = _capsule_sd(g, a, b, float(rng.uniform(0.8, 1.3)), 0.3)
        if hit is None:
            continue
        hsl, hsd = hit
        local = tuple(slice(h.start - s.start, h.stop - s.start) for h, s in zip(hsl, sl, strict=True))
        np.minimum(sd[local], hsd, out=sd[local])
    return sd


def make_crop(seed: int, label: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One synthetic patch: ``(image int16 HU [i, j, k], affine RAS 4x4, description)``.

    The same ``seed`` and ``label`` give identical arrays. ``[i, j, k]`` follow the phantom's convention
    (LPS-ordered axes, centred on the origin); the affine maps them to RAS as NIfTI expects.
    """
    from scipy import ndimage as ndi

    from medpipe.data.phantom import _capsule_sd, _correlated_noise, _Grid, _NoduleShape, _smooth_field

    if label not in (0, 1):
        raise Code.PHANTOM_INVALID_SPEC(
            f"label={label!r} must be 0 (benign) or 1 (malignant)"
        )
    rng = _case_rng(seed, label)
    g = _Grid(PATCH_SHAPE, PATCH_SPACING)
    recipe = _RECIPE[label]
    diameter = _diameter(rng, label)  # the first draw: see nominal_diameter
    shape = _SHAPES[int(rng.choice(3, p=recipe["shape"]))]
    kind = _KINDS[int(rng.choice(3, p=recipe["kind"]))]
    calcified = bool(rng.random() < recipe["calcified"])
    if calcified:
        kind = "solid"

    # Lung background: parenchyma, gravity gradient, vessels, sometimes the chest wall.
    img = np.float32(rng.uniform(-880, -820)) + 18 * _smooth_field(rng, g, 6.0)
    img += np.float32(rng.uniform(-1, 1) * 25) * (g.y / g.fov[1])[None, :, None].astype(np.float32)
    ramp = float(np.cbrt(np.prod(g.spacing)))
    frac = np.zeros(g.shape, np.float32)
    half = np.array(g.fov) / 2
    for _ in range(int(rng.integers(2, 6))):
        p = rng.uniform(-half, half)
        d = rng.standard_normal(3)
        d /= np.linalg.norm(d)
        r = float(rng.uniform(0.7, 2.2))
        hit = _capsule_sd(g, p - d * 60, p + d * 60, r, r * 0.8, pad=ramp)
        if hit is not None:
            sl, sd = hit
            np.maximum(frac[sl], np.clip(0.5 - sd / np.float32(ramp), 0, 1), out=frac[sl])
    img += frac * (np.float32(40) - img)
    wall = bool(rng.random() < 0.25)
    if wall:  # chest wall along one side, beyond the nodule
        axis, side = int(rng.integers(2)), float(rng.choice([-1.0, 1.0]))
        coord = (g.x, g.y)[axis]
        depth = side * coord - float(rng.uniform(0.32, 0.45)) * g.fov[axis]
        w = np.clip(0.5 + depth / ramp, 0, 1).astype(np.float32)
        w = w[:, None, None] if axis == 0 else w[None, :, None]
        img += w * (np.float32(45) - img)

    # The nodule, near the centre.
    center = rng.uniform(-1.5, 1.5, 3)
    nod = _NoduleShape(rng, center, diameter, "smooth" if shape == "spiculated" else shape)
    reach = nod.rmax * (2.2 if shape == "spiculated" else 1.0) + 2 * ramp
    sl = g.bbox(center - reach, center + reach)
    sd = nod.signed_distance(g, sl)
    if shape == "spiculated":
        sd = np.minimum(sd, _spikes(rng, g, center, nod.r, sl))
    tex = ndi.gaussian_filter(rng.standard_normal(sd.shape).astype(np.float32), (1.5, 1.5, 0.7))
    tex /= max(float(tex.std()), 1e-6)
    w = np.clip(0.5 - sd / np.float32(ramp), 0, 1)
    bg = img[sl]
    solid = np.float32(rng.uniform(20, 60)) + 8 * tex
    glass = np.float32(rng.uniform(-680, -520)) + 30 * tex
    if kind == "solid":
        value = solid
    elif kind == "part-solid":
        core = nod.signed_distance(g, sl, scale=float(rng.uniform(0.3, 0.6)))
        value = glass + np.clip(0.5 - core / np.float32(ramp), 0, 1) * (solid - glass)
    else:
        value = glass
    pattern = None
    if calcified:
        pattern = "eccentric" if label == 1 else str(rng.choice(["central", "diffuse", "popcorn"]))
        calc_hu = np.float32(rng.uniform(250, 700))
        if pattern == "diffuse":
            cmask = np.clip(0.5 - sd / np.float32(ramp), 0, 1) * np.float32(rng.uniform(0.6, 1.0))
        else:
            n_blobs = {"central": 1, "eccentric": 1, "popcorn": int(rng.integers(3, 6))}[pattern]
            cmask = np.zeros(sd.shape, np.float32)
            for _ in range(n_blobs):
                off = rng.standard_normal(3)
                off *= (0.0 if pattern == "central" else rng.uniform(0.3, 0.55) * nod.r) / np.linalg.norm(off)
                rb = nod.r * (rng.uniform(0.3, 0.5) if pattern == "central" else rng.uniform(0.15, 0.3))
                bsd = _capsule_sd(g, center + off, center + off, rb, rb)
                if bsd is None:
                    continue
                bsl, bvals = bsd
                local = tuple(
                    slice(b.start - s.start, b.stop - s.start) for b, s in zip(bsl, sl, strict=True)
                )
                view = cmask[local]
                np.maximum(view, np.clip(0.5 - bvals / np.float32(ramp), 0, 1), out=view)
            cmask *= (sd <= 0).astype(np.float32)
        value = value + cmask * (calc_hu - value)
    if kind == "solid":
        img[sl] = bg + w * (value - bg)
    else:
        img[sl] = bg + w * np.maximum(value - bg, 0)  # vessels stay visible through ground glass
    img += _correlated_noise(rng, g.shape, float(rng.uniform(12, 28)))
    image = np.clip(np.rint(img), -1024, 3071).astype(np.int16)
    affine_lps = np.diag([*g.spacing, 1.0])
    affine_lps[:3, 3] = g.origin
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps
    desc = {
        "label": int(label),
        "diameter_mm": round(diameter, 3),
        "shape": shape,
        "kind": kind,
        "calcification": pattern,
        "chest_wall": wall,
        "center_lps_mm": [round(float(c), 3) for c in center],
    }
    return image, affine, desc


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
    """The demo manifest (``data_manifests/lung_nodule_malignancy_ct_demo.json``). Entries carry the
    class (``label``) and the nominal diameter (``diameter_mm``, for a regression head)."""
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
        "generator": {"name": GENERATOR_NAME, "version": GENERATOR_VERSION, "splits": dict(splits)},
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
    from medpipe.data.nifti import write_nifti

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
    from medpipe.data.demo import write_generated

    plan = [(i, lab) for cases in split_plan(splits).values() for i, lab in cases]
    stamp = {"name": GENERATOR_NAME, "version": GENERATOR_VERSION, "splits": dict(splits)}
    return write_generated(
        root, ("imagesTr",), lambda tmp: [(tmp, i, lab) for i, lab in plan], _write_case, stamp=stamp,
        what="nodule crops", desc="generating nodule crops", unit="crop", workers=workers, progress=progress,
        chunksize=16,
    )  # fmt: skip


def ensure_generated(generator: Mapping[str, Any], root: str | Path) -> Path:
    """Make sure the crops a manifest's ``generator`` describes exist in ``root``."""
    version = int(generator.get("version", GENERATOR_VERSION))
    if version != GENERATOR_VERSION:
        raise Code.DATA_GENERATOR_VERSION(
            f"manifest asks for {GENERATOR_NAME} version {version} but this medpipe makes version "
            f"{GENERATOR_VERSION}; regenerate the manifest with this medpipe",
        )
    splits = dict(generator.get("splits", DEFAULT_SPLITS))
    from medpipe.data.demo import already_generated

    root = Path(root)
    if already_generated(root, GENERATOR_VERSION, splits):
        return root
    return generate_dataset(root, splits)


def intensity_range(manifest: str | os.PathLike | None, default: Any = HU_WINDOW) -> list[float]:
    """Input intensity window of a manifest's images, mapped to [0, 1] by the bundle's ``crop_transforms``.

    A manifest may say it with ``"intensity_range": [low, high]``; a MedMNIST manifest (uint8 crops, as
    ``medpipe manifest medmnist`` writes for NoduleMNIST3D) gets ``[0, 255]``; anything else is CT in HU
    and gets ``default`` (the lung window). A missing manifest also gets ``default``, so inference from
    a copied bundle still works.
    """
    try:
        content = json.loads(Path(manifest).read_text()) if manifest else {}
    except (OSError, ValueError):
        content = {}
    rng = content.get("intensity_range")
    if isinstance(rng, list) and len(rng) == 2 and all(isinstance(v, (int, float)) for v in rng):
        return [float(rng[0]), float(rng[1])]
    text = json.dumps({k: content.get(k) for k in ("name", "source", "format", "description")}).lower()
    if "mnist" in text:  # "medmnist", "nodulemnist3d", ...
        return list(UINT8_RANGE)
    return [float(v) for v in default]
