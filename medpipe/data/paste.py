"""Real nodules in real lungs: paste nodule crops with their masks into the lung fields of host chest CTs.

A segmenter trained on phantoms never sees what is *not* a nodule in a real chest: vessel branches and
crossings, airway walls, fissures, the hila. Labelled whole scans are scarce; nodule crops with masks
(``lidc_nodule_vois``: 792 of them) and unlabelled chest CTs are not. This module builds training
volumes from both, following a **recipe** (JSON, see ``data_manifests/lung_nodule_ct_pasted.recipe.json``):

* each **host** is a real chest CT (a NIfTI file or a DICOM series folder) and a slab of its slices
  (``slices: [first, stop)``) with a split: slabs of one host never overlap, so a validation slab's
  background is never seen in training;
* each host is resampled once to the bundle's grid (``spacing``, linear), and its lung field is
  :func:`medpipe.lungs.lung_mask`. A host must hold no unlabelled lesion in its slabs (it would be
  learnt as background): choose slabs that leave out a patient's tumour;
* each output volume is its slab with ``per_volume`` nodules of the split's patients pasted in. A crop is
  first blurred to the host's coarser resolution (Gaussian, FWHM matching the spacing difference per
  axis) so that a pasted nodule is no sharper than its surroundings, resampled to the grid, flipped and
  turned at random, and placed at a random point of the lung field where the whole mask falls inside
  the field and clear of earlier nodules. It is blended with ``alpha`` = 1 on the mask falling to 0
  over ``feather_mm`` outside it (and at the crop's border), so no edge of the crop is left in the image;
* labels are the pasted masks (1), background 0.

The crops come from a classification manifest with ``mask`` entries (``medpipe manifest crops``): its
training patients go into training volumes, its validation patients into validation volumes, and its
test patients nowhere. ``build_pasted(recipe, output)`` writes ``image/``, ``label/`` and a manifest with
the provenance of every pasted nodule (crop, position); it is deterministic for a recipe and seed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from medpipe.data.images import read_image
from medpipe.data.manifest import load_manifest
from medpipe.data.nifti import open_nifti, read_voxels, write_nifti
from medpipe.errors import Code
from medpipe.lungs import lung_mask

SPLITS = ("training", "validation")
#: FWHM of a Gaussian is this many sigmas
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


@dataclass
class Crop:
    case_id: str
    image: np.ndarray
    mask: np.ndarray
    spacing: np.ndarray


def to_grid(array: np.ndarray, spacing: np.ndarray, target: np.ndarray, order: int) -> np.ndarray:
    """``array`` resampled from ``spacing`` to ``target`` mm per axis (``order`` 1 linear, 0 nearest)."""
    zoom = np.asarray(spacing, dtype=np.float64) / np.asarray(target, dtype=np.float64)
    return ndimage.zoom(
        np.asarray(array, dtype=np.float32), zoom, order=order, mode="nearest", grid_mode=True
    )


def blur_to(array: np.ndarray, spacing: np.ndarray, coarser: np.ndarray) -> np.ndarray:
    """``array`` blurred along each axis where ``coarser`` (the host's spacing) exceeds ``spacing``: a
    Gaussian whose FWHM squared is the difference of the squared spacings (in voxels of ``array``)."""
    spacing = np.asarray(spacing, dtype=np.float64)
    extra = np.sqrt(np.maximum(np.asarray(coarser, dtype=np.float64) ** 2 - spacing**2, 0.0))
    sigma = extra / FWHM_PER_SIGMA / spacing
    return (
        ndimage.gaussian_filter(np.asarray(array, dtype=np.float32), sigma, mode="nearest")
        if sigma.any()
        else array
    )


def alpha_map(mask: np.ndarray, spacing: np.ndarray, feather_mm: float) -> np.ndarray:
    """1 on ``mask``, falling linearly to 0 at ``feather_mm`` outside it, and 0 on the crop's border."""
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
    alpha = np.clip(1.0 - outside / max(feather_mm, 1e-3), 0.0, 1.0)
    border = np.ones(mask.shape, dtype=bool)
    border[tuple(slice(1, -1) for _ in mask.shape)] = False
    to_border = ndimage.distance_transform_edt(~border, sampling=spacing)
    return np.minimum(alpha, np.clip(to_border / max(feather_mm, 1e-3), 0.0, 1.0)).astype(np.float32)


def _read_crop(entry: Mapping[str, Any]) -> Crop:
    image = open_nifti(entry["image"])  # crops named by a manifest: headers checked before allocation
    mask = read_voxels(open_nifti(entry["mask"]), Path(entry["mask"]).name) > 0
    spacing = np.asarray(image.header.get_zooms()[:3], dtype=np.float64)
    return Crop(
        str(entry.get("case_id", Path(entry["image"]).name)),
        np.asarray(read_voxels(image, Path(entry["image"]).name), dtype=np.float32),
        mask,
        spacing,
    )


def place(
    host: np.ndarray,
    label: np.ndarray,
    free: np.ndarray,
    crop: Crop,
    grid: np.ndarray,
    host_spacing: np.ndarray,
    rng: np.random.Generator,
    feather_mm: float,
    attempts: int = 60,
) -> tuple[int, ...] | None:
    """Paste ``crop`` into ``host`` (HU, in place) at a random point where its whole mask falls on
    ``free`` (lung field not yet used); marks ``label`` and clears ``free`` around it. The corner placed
    at, or None when no position fits."""
    image = blur_to(crop.image, crop.spacing, np.maximum(host_spacing, crop.spacing))
    image = to_grid(image, crop.spacing, grid, order=1)
    mask = to_grid(crop.mask.astype(np.float32), crop.spacing, grid, order=1) >= 0.5
    if not mask.any():
        return None
    for axis in range(3):
        if rng.random() < 0.5:
            image, mask = np.flip(image, axis), np.flip(mask, axis)
    k = int(rng.integers(4))
    if k and abs(grid[0] - grid[1]) < 1e-6:
        image, mask = np.rot90(image, k, axes=(0, 1)), np.rot90(mask, k, axes=(0, 1))
    if any(c > h for c, h in zip(mask.shape, host.shape, strict=True)):
        return None
    alpha = alpha_map(mask, grid, feather_mm)
    points = np.argwhere(free)
    if len(points) == 0:
        return None
    centre = np.argwhere(mask).mean(0).round().astype(int)
    for _ in range(attempts):
        corner = points[rng.integers(len(points))] - centre
        if (corner < 0).any() or (corner + mask.shape > host.shape).any():
            continue
        box = tuple(slice(int(c), int(c) + s) for c, s in zip(corner, mask.shape, strict=True))
        if not free[box][mask].all():
            continue
        host[box] = alpha * image + (1.0 - alpha) * host[box]
        label[box] |= mask
        used = ndimage.binary_dilation(alpha > 0, iterations=2)
        free[box] &= ~used
        return tuple(int(c) for c in corner)
    return None


def build_pasted(
    recipe_path: str | Path, output: str | Path, echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """Write the volumes of ``recipe_path`` under ``output`` and ``output/manifest.json``; the manifest."""
    recipe_path = Path(recipe_path).resolve()
    recipe = json.loads(recipe_path.read_text(encoding="utf-8"))
    root = (recipe_path.parent / recipe.get("data_root", ".")).resolve()
    grid = np.asarray(recipe["spacing"], dtype=np.float64)
    feather = float(recipe.get("feather_mm", 3.0))
    rng = np.random.default_rng(int(recipe.get("seed", 0)))
    crops_manifest = load_manifest(recipe_path.parent / recipe["crops"])
    pools = {s: crops_manifest.split(s, required_keys=("image", "mask")) for s in SPLITS}
    for s in SPLITS:
        rng.shuffle(pools[s])
    cursor = dict.fromkeys(SPLITS, 0)
    out = Path(output)
    (out / "image").mkdir(parents=True, exist_ok=True)
    (out / "label").mkdir(parents=True, exist_ok=True)
    content: dict[str, Any] = {
        "name": recipe.get("name", recipe_path.stem), "labels": {"0": "background", "1": "nodule"},
        "description": recipe.get("description", ""), "recipe": recipe_path.name, "dataset_dir": ".",
        "spacing": grid.tolist(), "training": [], "validation": [], "pasted": {},
    }  # fmt: skip
    taken: dict[str, list[tuple[int, int, str]]] = {}
    for h in recipe["hosts"]:
        split = h["split"]
        if split not in SPLITS:
            raise Code.PASTE_RECIPE_INVALID(f"host {h['name']}: split {split!r} is not one of {SPLITS}")
        source = read_image(root / h["path"])
        first, stop = h.get("slices", [0, source.array.shape[2]])
        if not 0 <= first < stop <= source.array.shape[2]:
            raise Code.PASTE_RECIPE_INVALID(
                f"host {h['name']}: slices [{first}, {stop}) outside its {source.array.shape[2]} slices"
            )
        for lo, hi, other in taken.get(str(h["path"]), []):
            if first < hi and lo < stop:
                raise Code.PASTE_RECIPE_INVALID(
                    f"host {h['name']}: slices [{first}, {stop}) overlap those of {other} [{lo}, {hi})"
                )
        taken.setdefault(str(h["path"]), []).append((first, stop, h["name"]))
        spacing = np.asarray(source.spacing, dtype=np.float64)
        slab = source.array[:, :, first:stop].astype(np.float32)
        base = to_grid(slab, spacing, grid, order=1)
        scale = np.asarray(slab.shape) / np.asarray(base.shape)
        affine = source.affine_ras.copy()
        # grid_mode zoom keeps the slab's outer corners: voxel 0's centre moves by (scale - 1) / 2 old voxels
        affine[:3, 3] = (affine @ np.r_[(scale - 1.0) / 2.0 + np.array([0.0, 0.0, first]), 1.0])[:3]
        affine[:3, :3] = affine[:3, :3] * scale
        field = lung_mask(base, tuple(grid))
        echo(f"{h['name']}: slices {first}-{stop} -> {base.shape} at {grid.tolist()} mm, lung field "
             f"{field.sum() * grid.prod() / 1e6:.2f} l")  # fmt: skip
        for v in range(int(h["volumes"])):
            image, label = base.copy(), np.zeros(base.shape, dtype=bool)
            free = field.copy()
            pasted = []
            for _ in range(int(h["per_volume"])):
                pool = pools[split]
                if not pool:
                    break
                entry = pool[cursor[split] % len(pool)]
                cursor[split] += 1
                corner = place(image, label, free, _read_crop(entry), grid, spacing, rng, feather)
                if corner is not None:
                    pasted.append({"crop": entry.get("case_id"), "corner_ijk": list(corner)})
            case = f"{h['name']}_{v:03d}"
            write_nifti(out / "image" / f"{case}.nii.gz", np.round(image), affine, dtype=np.int16)
            write_nifti(out / "label" / f"{case}.nii.gz", label, affine, dtype=np.uint8)
            content[split].append(
                {"case_id": case, "image": f"image/{case}.nii.gz", "label": f"label/{case}.nii.gz"}
            )
            # provenance beside the splits: extra keys in an entry would reach the data loader's collate
            content["pasted"][case] = {"host": h["name"], "nodules": pasted}
        echo(
            f"  {h['volumes']} {split} volumes, {sum(len(p['nodules']) for p in content['pasted'].values() if p['host'] == h['name'])} nodules pasted"
        )
    content["crops_used"] = {s: min(cursor[s], len(pools[s])) for s in SPLITS}
    (out / "manifest.json").write_text(json.dumps(content, indent=1) + "\n", encoding="utf-8")
    return content
