"""Embedded default data: synthetic chest-CT phantoms with nodules, made on first use.

The ``lung_nodule_ct`` bundle must train anywhere, without a download, so its default manifest
(``data_manifests/lung_nodule_ct_demo.json``) names a *generator* instead of shipping volumes.
The first time the manifest is used, :func:`ensure_generated` builds every case from fixed seeds
(:mod:`medpipe.data.phantom`) and writes it as

* ``imagesTr/<case>.nii.gz`` (int16 HU) and ``labelsTr/<case>.nii.gz`` (uint8 nodule mask), and
* ``dicom/<case>/IM*.dcm``, a CT Image Storage series of the same volume (so the DICOM path runs too),
* ``cases.json``: every nodule's centre (LPS mm), diameter, density kind and shape.

Generation goes to a temporary folder renamed into place at the end, so an interrupted run leaves
nothing half-written, and a stamp records the generator version so a newer recipe regenerates.
The data are synthetic: they exist so the main command runs anywhere, not to claim accuracy on
patients. Point the bundle at real data (LIDC-IDRI, LUNA16, MSD Task06) with ``--manifest``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from medpipe.errors import Code

GENERATOR_NAME = "lung_nodule_ct_demo"
#: Bump when the phantom recipe or layout changes: existing generated folders are then rebuilt.
GENERATOR_VERSION = 1
BASE_SEED = 20261123
DEFAULT_SPLITS: dict[str, int] = {"training": 24, "validation": 6, "test": 6}
STAMP = ".medpipe_generated.json"


def case_id(index: int) -> str:
    return f"phantom_{index:03d}"


def split_entries(splits: Mapping[str, int] = DEFAULT_SPLITS) -> dict[str, list[dict[str, str]]]:
    """Manifest entries (relative paths) for consecutive cases assigned to splits in order."""
    out: dict[str, list[dict[str, str]]] = {}
    index = 0
    for split, count in splits.items():
        out[split] = []
        for _ in range(count):
            cid = case_id(index)
            out[split].append(
                {
                    "case_id": cid,
                    "image": f"imagesTr/{cid}.nii.gz",
                    "label": f"labelsTr/{cid}.nii.gz",
                    "dicom": f"dicom/{cid}",
                }
            )
            index += 1
    return out


def manifest_content(
    dataset_dir: str, splits: Mapping[str, int] = DEFAULT_SPLITS, with_generator: bool = True
) -> dict[str, Any]:
    """The manifest of a demo dataset (what ``data_manifests/lung_nodule_ct_demo.json`` holds).

    ``with_generator=False`` describes data already written by :func:`generate_dataset` (tests)."""
    gen = {"name": GENERATOR_NAME, "version": GENERATOR_VERSION, "splits": dict(splits)}
    content = {
        "name": GENERATOR_NAME,
        "description": (
            "SYNTHETIC chest-CT phantoms (body, lungs, airway, vessels, ribs, spine) with 1-4 nodules "
            "of 4-30 mm (solid, part-solid, ground-glass; smooth or lobulated), 0.8x0.8x2.5 mm, "
            "generated deterministically by medpipe on first use. Not patient data."
        ),
        "synthetic": True,
        "modality": "CT",
        "labels": {"0": "background", "1": "nodule"},
        "dataset_dir": dataset_dir,
        "generator": gen,
        **split_entries(splits),
    }
    if not with_generator:
        del content["generator"]
    return content


def _write_case(args: tuple[Path, int, Any]) -> dict[str, Any]:
    root, index, spec = args
    from medpipe.data.nifti import write_nifti
    from medpipe.data.phantom import generate_phantom
    from medpipe.dicom.writer import write_ct_series

    cid = case_id(index)
    case = generate_phantom(BASE_SEED + index, spec)
    affine = case.affine_ras()
    write_nifti(root / "imagesTr" / f"{cid}.nii.gz", case.image, affine, dtype="int16")
    write_nifti(root / "labelsTr" / f"{cid}.nii.gz", case.label, affine, dtype="uint8")
    write_ct_series(
        case.image,
        root / "dicom" / cid,
        spacing=case.spacing,
        origin_lps=case.origin_lps,
        series_seed=f"{GENERATOR_NAME}-v{GENERATOR_VERSION}-{cid}",
        study_seed=f"{GENERATOR_NAME}-v{GENERATOR_VERSION}-study-{cid}",
        patient_id=f"PHANTOM-{index:03d}",
        series_description=f"medpipe synthetic chest CT phantom {cid}",
    )
    return {
        "case_id": cid,
        "seed": BASE_SEED + index,
        "shape": list(case.image.shape),
        "spacing_mm": list(case.spacing),
        "nodules": [
            {
                "center_lps_mm": [round(float(c), 3) for c in n.center_lps],
                "diameter_mm": round(float(n.diameter_mm), 3),
                "kind": n.kind,
                "shape": n.shape,
            }
            for n in case.nodules
        ],
    }


def generate_dataset(
    root: str | Path,
    splits: Mapping[str, int] = DEFAULT_SPLITS,
    spec: Any = None,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write every case of a demo dataset into ``root`` atomically; returns ``root``.

    ``spec`` is a :class:`medpipe.data.phantom.PhantomSpec` (default: full-size chest CT); tests pass a
    small one. Cases are independent and seeded by index, so any worker count gives the same files.
    """

    n = sum(splits.values())
    stamp = {"name": GENERATOR_NAME, "version": GENERATOR_VERSION, "splits": dict(splits)}
    return write_generated(
        root, ("imagesTr", "labelsTr", "dicom"), lambda tmp: [(tmp, i, spec) for i in range(n)], _write_case,
        stamp=stamp, what="demo data", desc="generating demo phantoms", unit="case", workers=workers,
        progress=progress,
    )  # fmt: skip


def write_generated(
    root: str | Path,
    subdirs: tuple[str, ...],
    make_jobs: Callable[[Path], list[Any]],
    write_case: Callable[[Any], dict[str, Any]],
    *,
    stamp: dict[str, Any],
    what: str,
    desc: str,
    unit: str,
    workers: int | None = None,
    progress: bool = True,
    chunksize: int = 1,
) -> Path:
    """Run ``write_case`` on every job into a temporary sibling of ``root`` (processes when there are
    several jobs and workers), write ``cases.json`` and the stamp, then rename it to ``root``: a run
    killed half-way leaves no half-written dataset. Shared by the synthetic-data generators."""
    from tqdm import tqdm

    root = Path(root).resolve()
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for sub in subdirs:
            (tmp / sub).mkdir(parents=True, exist_ok=True)
        jobs = make_jobs(tmp)
        workers = workers or min(2, os.cpu_count() or 1)
        cases = []
        with tqdm(total=len(jobs), desc=desc, unit=unit, disable=not progress) as bar:
            if workers > 1 and len(jobs) > 1:
                with ProcessPoolExecutor(max_workers=workers) as pool:
                    for c in pool.map(write_case, jobs, chunksize=chunksize):
                        cases.append(c)
                        bar.update()
            else:
                for job in jobs:
                    cases.append(write_case(job))
                    bar.update()
        (tmp / "cases.json").write_text(json.dumps({"cases": cases}, indent=1))
        (tmp / STAMP).write_text(json.dumps(stamp))
        if root.exists():
            shutil.rmtree(root)
        tmp.rename(root)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise Code.DATA_GENERATION_FAILED(f"could not write {what} to {root}: {e}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def already_generated(root: Path, version: int, splits: Mapping[str, int]) -> bool:
    """True when ``root`` holds a dataset this generator version made for ``splits``; refuse
    (``DATA_DIR_CONFLICT``) a non-empty folder no generator made, rather than write into it."""
    stamp = root / STAMP
    if stamp.is_file():
        try:
            made = json.loads(stamp.read_text())
        except json.JSONDecodeError:
            made = {}
        return made.get("version") == version and made.get("splits") == dict(splits)
    if root.exists() and any(root.iterdir()):
        raise Code.DATA_DIR_CONFLICT(
            f"{root} exists and was not made by medpipe's generator; move it away or set dataset_dir "
            "to your own data",
        )
    return False


def ensure_generated(generator: Mapping[str, Any], root: str | Path) -> Path:
    """Make sure the synthetic dataset a manifest's ``generator`` describes exists in ``root``."""
    name = generator.get("name")
    from medpipe.data import nodule_crops

    if name == nodule_crops.GENERATOR_NAME:  # the malignancy classifier's synthetic nodule crops
        return nodule_crops.ensure_generated(generator, root)
    if name != GENERATOR_NAME:
        raise Code.DATA_UNKNOWN_GENERATOR(
            f"unknown data generator '{name}' in manifest; this medpipe knows '{GENERATOR_NAME}'",
        )
    version = int(generator.get("version", GENERATOR_VERSION))
    if version != GENERATOR_VERSION:
        raise Code.DATA_GENERATOR_VERSION(
            f"manifest asks for {name} version {version} but this medpipe makes version "
            f"{GENERATOR_VERSION}; regenerate the manifest with this medpipe",
        )
    splits = generator.get("splits", DEFAULT_SPLITS)
    root = Path(root)
    if already_generated(root, GENERATOR_VERSION, splits):
        return root
    return generate_dataset(root, splits)
