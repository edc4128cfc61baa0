"""MedMNIST 3D archives (``*mnist3d.npz``) as medpipe manifests, read straight from the npz.

A MedMNIST 3D archive holds ``{train,val,test}_images`` (N, D, D, D) uint8 (D = 28 or 64) and
``{train,val,test}_labels`` (N, 1) with the official splits. :func:`medmnist_manifest` writes a
Decathlon datalist whose entries point *into* the archive::

    {"image": "vesselmnist3d.npz", "npz_split": "test", "npz_index": 12, "label": 1}

and :class:`LoadMedMNISTd` (first transform of a classifier bundle) reads such an entry as a
``MetaTensor`` (1, D, D, D) on a 1 mm identity grid, or any other image path (NIfTI, DICOM) with
MONAI's ``LoadImage``. Reading the npz directly was chosen over writing one NIfTI per case because it
is faster both to prepare and to load, and leaves the downloaded archive as the only copy of the data
(figures in docs/results.md); ``nifti_dir`` writes the NIfTI cases instead, for tools that want files.

Errors (:class:`~medpipe.errors.ManifestError`): ``MEDMNIST_UNREADABLE`` (not a readable npz),
``MEDMNIST_MISSING_KEYS``, ``MEDMNIST_BAD_SHAPE``, ``MEDMNIST_UNKNOWN_DATASET`` (number of classes
unknown: pass ``num_classes``), ``MEDMNIST_UNEXPECTED_LABELS`` (labels outside 0..num_classes-1).
"""

from __future__ import annotations

import functools
import json
import os
import zipfile
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.atomic import atomic_path, atomic_write_text
from medpipe.data.manifest import UINT8_RANGE, load_manifest
from medpipe.data.manifest import inference_inputs as nifti_inputs
from medpipe.errors import Code

#: npz split prefix -> manifest split.
NPZ_SPLITS = {"train": "training", "val": "validation", "test": "test"}
#: Class names of the MedMNIST 3D datasets (``medmnist/info.py``), by flag.
DATASETS: dict[str, dict[str, Any]] = {
    "organmnist3d": {
        "description": "OrganMNIST3D: 11 abdominal organs in CT (LiTS)",
        "labels": [
            "liver",
            "kidney-right",
            "kidney-left",
            "femur-right",
            "femur-left",
            "bladder",
            "heart",
            "lung-right",
            "lung-left",
            "spleen",
            "pancreas",
        ],
    },  # fmt: skip
    "nodulemnist3d": {
        "description": "NoduleMNIST3D: lung nodule malignancy in CT (LIDC-IDRI)",
        "labels": ["benign", "malignant"],
    },
    "adrenalmnist3d": {
        "description": "AdrenalMNIST3D: adrenal mass shape (normal / hyperplasia)",
        "labels": ["normal", "hyperplasia"],
    },
    "fracturemnist3d": {
        "description": "FractureMNIST3D: rib fracture type in CT (RibFrac)",
        "labels": ["buckle rib fracture", "nondisplaced rib fracture", "displaced rib fracture"],
    },
    "vesselmnist3d": {
        "description": "VesselMNIST3D: brain vessel segments from MRA (IntrA), vessel / aneurysm",
        "labels": ["vessel", "aneurysm"],
    },
    "synapsemnist3d": {
        "description": "SynapseMNIST3D: synapse type in electron microscopy",
        "labels": ["inhibitory synapse", "excitatory synapse"],
    },
}


def dataset_flag(path: str | Path) -> str | None:
    """``.../vesselmnist3d_64.npz`` -> ``vesselmnist3d``; None when the name is not a MedMNIST 3D flag."""
    stem = Path(path).name.removesuffix(".npz").lower()
    for flag in DATASETS:
        if stem == flag or stem.startswith(flag + "_"):
            return flag
    return None


@functools.lru_cache(maxsize=4)
def _arrays(path: str, mtime: float) -> dict[str, np.ndarray]:
    """Every array of an npz, loaded once per (path, modification time)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise Code.MEDMNIST_UNREADABLE(
            f"{path} is not a readable npz archive ({type(e).__name__}: {e}); download it again",
        ) from None


def read_npz(path: str | Path, num_classes: int | None = None) -> dict[str, Any]:
    """Read and check a MedMNIST 3D archive; returns ``{"flag", "labels", "splits": {split: (images, labels)}}``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise Code.MEDMNIST_UNREADABLE(
            f"{p} does not exist; pass the path of a MedMNIST .npz"
        )
    arrays = _arrays(str(p.resolve()), p.stat().st_mtime)
    expected = [f"{s}_{kind}" for s in NPZ_SPLITS for kind in ("images", "labels")]
    missing = [k for k in expected if k not in arrays]
    if missing:
        raise Code.MEDMNIST_MISSING_KEYS(
            f"{p.name} lacks the key(s) {missing} of a MedMNIST archive (it has {sorted(arrays)[:8]}); "
            "expected {train,val,test}_{images,labels}",
        )
    flag = dataset_flag(p)
    if num_classes is None:
        if flag is None:
            raise Code.MEDMNIST_UNKNOWN_DATASET(
                f"cannot tell the number of classes of {p.name}: its name is none of "
                f"{sorted(DATASETS)}; pass --num-classes",
            )
        num_classes = len(DATASETS[flag]["labels"])
    names = DATASETS[flag]["labels"] if flag and len(DATASETS[flag]["labels"]) == num_classes else None
    splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for s in NPZ_SPLITS:
        images, labels = arrays[f"{s}_images"], arrays[f"{s}_labels"]
        if images.ndim != 4 or len(set(images.shape[1:])) != 1:
            raise Code.MEDMNIST_BAD_SHAPE(
                f"{p.name}: {s}_images has shape {images.shape}; a MedMNIST 3D archive holds (N, D, D, D) cubes",
            )
        labels = labels.reshape(len(labels), -1) if labels.ndim else labels
        if labels.ndim != 2 or labels.shape != (images.shape[0], 1):
            raise Code.MEDMNIST_BAD_SHAPE(
                f"{p.name}: {s}_labels has shape {arrays[f'{s}_labels'].shape} for {images.shape[0]} images; "
                "expected one label per image, (N, 1)",
            )
        values = labels[:, 0]
        bad = sorted(
            {int(v) for v in np.unique(values) if not (float(v).is_integer() and 0 <= v < num_classes)}
        )
        if bad:
            raise Code.MEDMNIST_UNEXPECTED_LABELS(
                f"{p.name}: {s}_labels hold {bad[:5]} outside the {num_classes} declared classes "
                f"0..{num_classes - 1}; pass the right --num-classes or fix the labels",
            )
        splits[s] = (images, values.astype(int))
    return {"flag": flag, "num_classes": num_classes, "labels": names, "splits": splits}


def medmnist_manifest(
    npz: str | Path,
    output: str | Path,
    *,
    num_classes: int | None = None,
    nifti_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Write a datalist for ``npz`` with its official splits to ``output``; returns its content.

    Entries point into the archive (``npz_split``/``npz_index``), or, with ``nifti_dir``, at one
    ``<split>_<index>.nii.gz`` per case written there (1 mm identity grid).
    """
    npz, output = Path(npz).expanduser().resolve(), Path(output).expanduser()
    info = read_npz(npz, num_classes)
    k = info["num_classes"]
    names = info["labels"] or [f"class{c}" for c in range(k)]
    flag = info["flag"] or npz.stem
    content: dict[str, Any] = {
        "name": npz.stem,
        "description": DATASETS[info["flag"]]["description"]
        if info["flag"]
        else f"MedMNIST-style archive {npz.name}",
        "labels": {str(c): n for c, n in enumerate(names)},
        "num_classes": k,
        "task": "classification",
        "intensity_range": list(UINT8_RANGE),  # uint8 crops, not HU (medpipe.data.manifest.intensity_range)
        "source": npz.name,
        "split_rule": "official MedMNIST train/val/test splits of the archive",
    }
    root = npz.parent
    if nifti_dir is not None:
        root = Path(nifti_dir).expanduser().resolve()
        _write_nifti_cases(info, root)
    for s, split in NPZ_SPLITS.items():
        images, labels = info["splits"][s]
        if nifti_dir is None:
            content[split] = [
                {"image": npz.name, "npz_split": s, "npz_index": i, "label": int(y)}
                for i, y in enumerate(labels)
            ]
        else:
            content[split] = [{"image": f"{s}_{i:05d}.nii.gz", "label": int(y)} for i, y in enumerate(labels)]
    content["dataset_dir"] = os.path.relpath(root, output.resolve().parent)
    atomic_write_text(output, _dumps(content))
    content["flag"] = flag
    return content


def _dumps(content: dict[str, Any]) -> str:
    """JSON with one line per case (a 1,900-case datalist stays readable and diffable)."""
    lines = []
    for key, value in content.items():
        if key in NPZ_SPLITS.values():
            rows = ",\n".join(f"  {json.dumps(e)}" for e in value)
            lines.append(f" {json.dumps(key)}: [\n{rows}\n ]")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _write_nifti_cases(info: dict[str, Any], folder: Path) -> None:
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    for s in NPZ_SPLITS:
        images, _ = info["splits"][s]
        for i, img in enumerate(images):
            with atomic_path(folder / f"{s}_{i:05d}.nii.gz") as tmp:
                nib.save(nib.Nifti1Image(np.asarray(img), np.eye(4)), tmp)


def npz_case(path: str | Path, split: str, index: int) -> np.ndarray:
    """One volume (D, D, D) of a MedMNIST archive."""
    p = Path(path)
    arrays = _arrays(str(p.resolve()), p.stat().st_mtime)
    key = f"{split}_images"
    if key not in arrays or not 0 <= int(index) < len(arrays[key]):
        raise Code.MANIFEST_INVALID(
            f"{p.name} has no case {split}/{index}; rebuild the manifest with 'medpipe manifest medmnist'",
        )
    return arrays[key][int(index)]


class LoadMedMNISTd:
    """Load ``keys`` of an entry: a MedMNIST npz case (entry has ``npz_split``/``npz_index``) as a
    float32 ``MetaTensor`` (1, D, D, D) with a 1 mm identity affine, or any other path with MONAI's
    ``LoadImage`` (channel first). A MONAI dictionary transform: use it as a bundle's first transform."""

    def __init__(self, keys: str | list[str] = "image", reader: Any = None) -> None:
        from monai.transforms import LoadImage

        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.loader = LoadImage(reader=reader, image_only=True, ensure_channel_first=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        import torch
        from monai.data import MetaTensor

        d = dict(data)
        for key in self.keys:
            if "npz_index" in d:
                vol = npz_case(d[key], d["npz_split"], d["npz_index"])
                meta = {
                    "filename_or_obj": f"{d[key]}#{d['npz_split']}/{int(d['npz_index'])}",
                    "original_channel_dim": "no_channel",
                    "space": "RAS",
                }
                d[key] = MetaTensor(
                    torch.from_numpy(np.asarray(vol, dtype=np.float32))[None], affine=torch.eye(4), meta=meta
                )
            else:
                d[key] = self.loader(d[key])
        return d


def inference_inputs(
    dataset_dir: str | Path | None, manifest: str | Path | None = None, split: str = "test"
) -> list[dict[str, Any]]:
    """Inputs of a classifier's inference config: NIfTI files in ``dataset_dir`` (a folder or one
    file), else the entries of ``split`` in ``manifest`` without their labels (npz cases included)."""
    if dataset_dir not in (None, "") or manifest in (None, ""):
        return nifti_inputs(dataset_dir, manifest, split)
    entries = load_manifest(manifest).split(split, required_keys=("image",))
    return [{k: v for k, v in e.items() if k != "label"} for e in entries]
