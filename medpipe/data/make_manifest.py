"""Write manifests from datasets: an MSD task folder (``dataset.json``) or a plain folder of NIfTI files.

Splits are fixed and reproducible. For MSD data the **test split is every case whose number is
divisible by 5** (52 of Task04's 260 cases): never used for training, validation or model selection.
The validation split is drawn with a seeded generator from the rest; ``folds=k`` instead assigns every
non-test case a fold (``"fold"`` key) and validates on fold ``fold``.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
from pathlib import Path
from typing import Any

from medpipe.atomic import atomic_write_text
from medpipe.errors import Code, did_you_mean

NIFTI = (".nii.gz", ".nii")


def case_number(path: str) -> int:
    """The case number in an MSD file name: ``./imagesTr/hippocampus_015.nii.gz`` -> 15."""
    match = re.search(r"(\d+)(?:_\d{4})?\.nii(?:\.gz)?$", path)
    if match is None:
        raise Code.MANIFEST_INVALID(f"no case number in {Path(path).name!r}")
    return int(match.group(1))


def _split(
    entries: list[dict[str, Any]], *, val_fraction: float, folds: int | None, fold: int, seed: int
) -> dict[str, list[dict[str, Any]]]:
    test = [e for e in entries if case_number(e["image"]) % 5 == 0]
    rest = [e for e in entries if case_number(e["image"]) % 5 != 0]
    order = list(range(len(rest)))
    random.Random(seed).shuffle(order)
    if folds:
        if not 2 <= folds <= len(rest) or not 0 <= fold < folds:
            raise Code.MANIFEST_INVALID(f"--folds {folds} --fold {fold} is not a valid choice")
        for rank, i in enumerate(order):
            rest[i] = {**rest[i], "fold": rank % folds}
        validation = [e for e in rest if e["fold"] == fold]
        training = [e for e in rest if e["fold"] != fold]
    else:
        n_val = max(1, round(val_fraction * len(rest)))
        chosen = set(order[:n_val])
        validation = [e for i, e in enumerate(rest) if i in chosen]
        training = [e for i, e in enumerate(rest) if i not in chosen]
    return {"training": training, "validation": validation, "test": test}


def _write(output: Path, dataset_dir: Path, content: dict[str, Any]) -> dict[str, Any]:
    content["dataset_dir"] = os.path.relpath(dataset_dir.resolve(), output.resolve().parent)
    atomic_write_text(output, json.dumps(content, indent=1) + "\n")
    return content


def msd_manifest(
    dataset_dir: str | Path,
    output: str | Path,
    *,
    val_fraction: float = 0.1,
    folds: int | None = None,
    fold: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Write a manifest for an MSD task folder; return its content."""
    dataset_dir, output = Path(dataset_dir), Path(output)
    meta_path = dataset_dir / "dataset.json"
    if not meta_path.is_file():
        raise Code.MANIFEST_NOT_FOUND(f"{meta_path} does not exist (an MSD task folder has one)")
    try:
        meta = json.loads(meta_path.read_text())
        pairs = [{"image": e["image"], "label": e["label"]} for e in meta["training"]]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise Code.MANIFEST_INVALID(f"{meta_path} is not an MSD dataset.json ({e})") from e
    pairs = [{k: v.removeprefix("./") for k, v in p.items()} for p in pairs]
    missing = [p[k] for p in pairs for k in ("image", "label") if not (dataset_dir / p[k]).is_file()]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise Code.MANIFEST_MISSING_FILES(
            f"{len(missing)} files listed in dataset.json are missing: {', '.join(missing[:5])}{more}",
        )
    content = {
        "name": meta.get("name", dataset_dir.name),
        "description": meta.get("description", ""),
        "labels": meta.get("labels", {}),
        "modality": meta.get("modality", {}),
        "split_rule": "test: case number divisible by 5; validation: "
        + (
            f"fold {fold} of {folds} (seed {seed})"
            if folds
            else f"{val_fraction:.0%} of the rest (seed {seed})"
        ),
        **_split(pairs, val_fraction=val_fraction, folds=folds, fold=fold, seed=seed),
    }
    return _write(output, dataset_dir, content)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in NIFTI:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _nifti_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise Code.MANIFEST_NOT_FOUND(f"{folder} is not a folder")
    files = sorted(
        p for p in folder.iterdir() if p.name.lower().endswith(NIFTI) and not p.name.startswith(".")
    )
    return {_stem(p).removesuffix("_0000"): p for p in files}


def folder_manifest(
    images_dir: str | Path,
    output: str | Path,
    labels_dir: str | Path | None = None,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, Any]:
    """Write a manifest for a folder of NIfTI images (and labels paired by file name; nnU-Net's ``_0000``
    image suffix is understood). Unpaired files are refused with MANIFEST_UNPAIRED, listing them.

    Without labels every image goes to ``test`` (inference only). With labels, a seeded ``test_fraction``
    is held out and ``val_fraction`` of the rest validates.
    """
    images_dir, output = Path(images_dir), Path(output)
    images = _nifti_files(images_dir)
    if not images:
        raise Code.MANIFEST_EMPTY_SPLIT(f"no .nii/.nii.gz files in {images_dir}")
    root = Path(
        os.path.commonpath([images_dir.resolve()] + ([Path(labels_dir).resolve()] if labels_dir else []))
    )
    if labels_dir is None:
        entries = [{"image": os.path.relpath(p.resolve(), root)} for p in images.values()]
        return _write(output, root, {"name": images_dir.name, "test": entries})
    labels = _nifti_files(Path(labels_dir))
    unpaired = sorted(set(images) ^ set(labels))
    if unpaired:
        side = {k: ("image without label" if k in images else "label without image") for k in unpaired}
        shown = ", ".join(f"{k} ({v})" for k, v in list(side.items())[:10])
        more = f" and {len(unpaired) - 10} more" if len(unpaired) > 10 else ""
        raise Code.MANIFEST_UNPAIRED(f"{len(unpaired)} case(s) cannot be paired by file name: {shown}{more}")
    entries = [
        {
            "image": os.path.relpath(images[k].resolve(), root),
            "label": os.path.relpath(labels[k].resolve(), root),
        }
        for k in sorted(images)
    ]
    order = list(range(len(entries)))
    random.Random(seed).shuffle(order)
    n_test = round(test_fraction * len(entries))
    n_val = max(1, round(val_fraction * (len(entries) - n_test)))
    test = sorted(order[:n_test])
    val = sorted(order[n_test : n_test + n_val])
    train = sorted(order[n_test + n_val :])
    content = {
        "name": images_dir.name,
        "split_rule": f"seeded ({seed}): test {test_fraction:.0%}, validation {val_fraction:.0%} of the rest",
        "training": [entries[i] for i in train],
        "validation": [entries[i] for i in val],
        "test": [entries[i] for i in test],
    }
    return _write(output, root, content)


def patient_splits(
    patients: list[str], *, val_fraction: float, test_fraction: float, seed: int, hold_out: tuple[str, ...] = ()
) -> dict[str, str]:
    """patient -> split: a seeded ``test_fraction`` of the patients for test, ``val_fraction`` of the rest
    for validation. All cases of a patient share its split, so no patient is both trained and tested on.
    ``hold_out`` patients go to test whatever the draw (e.g. a scan kept for an end-to-end evaluation)."""
    order = sorted(set(patients) - set(hold_out))
    random.Random(seed).shuffle(order)
    n_test = round(test_fraction * len(order))
    n_val = max(1, round(val_fraction * (len(order) - n_test))) if len(order) - n_test > 1 else 0
    split = {
        p: "test" if i < n_test else "validation" if i < n_test + n_val else "training"
        for i, p in enumerate(order)
    }
    return {**split, **{p: "test" for p in hold_out if p in set(patients)}}


def _number(text: str) -> Any:
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


def crops_manifest(
    images_dir: str | Path,
    table: str | Path,
    output: str | Path,
    *,
    masks_dir: str | Path | None = None,
    name_format: str = "{patient_id}_R_{nodule_id}",
    label_column: str = "Diagnosis",
    classes: list[str] | None = None,
    patient_column: str = "patient_id",
    keep_columns: tuple[str, ...] = (),
    hold_out: tuple[str, ...] = (),
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, Any]:
    """A classifier (and crop-segmenter) datalist from a folder of crops and a table with one row per crop.

    Each row names its crop by ``name_format`` over the row's columns (``{patient_id}_R_{nodule_id}``:
    ``LIDC-IDRI-0003_R_2.nii.gz`` in ``lidc_nodule_vois``); its class is ``classes.index(row[label_column])``
    (default: the sorted distinct values); ``masks_dir`` adds each crop's mask as ``mask``, and
    ``keep_columns`` copies columns (numbers as numbers) into the entries, e.g. a malignancy rating
    for a regression head. Splits are by ``patient_column``. Rows without a crop are listed under
    ``skipped`` in the manifest; a missing column is ``MANIFEST_NO_COLUMN``.
    """
    images_dir, output = Path(images_dir), Path(output)
    with open(table, newline="", encoding="utf-8") as fp:
        rows = list(csv.DictReader(fp))
    columns = list(rows[0]) if rows else []
    for column in (label_column, patient_column, *keep_columns):
        if column not in columns:
            raise Code.MANIFEST_NO_COLUMN(
                f"{Path(table).name} has no column {column!r}{did_you_mean(column, columns)} (columns: "
                f"{', '.join(columns[:12])})"
            )
    classes = list(classes) if classes else sorted({r[label_column] for r in rows})
    unknown = sorted({r[label_column] for r in rows} - set(classes))
    if unknown:
        raise Code.MANIFEST_INVALID(f"{label_column} values {unknown[:5]} are none of the classes {classes}")
    images = _nifti_files(images_dir)
    root = Path(
        os.path.commonpath([images_dir.resolve()] + ([Path(masks_dir).resolve()] if masks_dir else []))
    )
    masks = _nifti_files(Path(masks_dir)) if masks_dir else {}
    entries, skipped = [], []
    for row in rows:
        try:
            name = name_format.format(**row)
        except KeyError as e:
            raise Code.MANIFEST_NO_COLUMN(
                f"--name-format {name_format!r} names column {e}, which the table lacks"
            ) from None
        if name not in images:
            skipped.append(name)
            continue
        entry: dict[str, Any] = {
            "case_id": name,
            "patient": row[patient_column],
            "image": os.path.relpath(images[name].resolve(), root),
            "label": classes.index(row[label_column]),
        }
        if name in masks:
            entry["mask"] = os.path.relpath(masks[name].resolve(), root)
        entry.update({c: _number(row[c]) for c in keep_columns})
        entries.append(entry)
    if not entries:
        raise Code.MANIFEST_EMPTY_SPLIT(
            f"no row of {Path(table).name} names a crop in {images_dir} ({name_format!r})"
        )
    split_of = patient_splits(
        [e["patient"] for e in entries], val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
        hold_out=tuple(hold_out),
    )  # fmt: skip
    content: dict[str, Any] = {
        "name": images_dir.parent.name if images_dir.name.lower() in ("image", "images") else images_dir.name,
        "labels": {str(i): c for i, c in enumerate(classes)},
        "num_classes": len(classes),
        "task": "classification",
        "split_rule": f"by {patient_column}, seeded ({seed}): test {test_fraction:.0%}, validation "
        f"{val_fraction:.0%} of the rest" + (f"; held out for test: {', '.join(hold_out)}" if hold_out else ""),
        "skipped": skipped,
    }
    for split in ("training", "validation", "test"):
        content[split] = [e for e in entries if split_of[e["patient"]] == split]
    return _write(output, root, content)
