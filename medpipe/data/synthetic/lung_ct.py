"""The ``lung_nodule_ct_demo`` dataset: synthetic chest-CT phantoms with nodules, made on first use.

The ``lung_nodule_ct`` bundle must train anywhere, without a download, so its default manifest
(``medpipe.data.synthetic.default_manifest('lung_nodule_ct_demo')``) names a *generator* instead of
shipping volumes. The first time the manifest is used, :func:`medpipe.data.synthetic.ensure_generated`
builds every case from fixed seeds (:mod:`medpipe.data.synthetic.phantom`) and writes it as

* ``imagesTr/<case>.nii.gz`` (int16 HU) and ``labelsTr/<case>.nii.gz`` (uint8 nodule mask), and
* ``dicom/<case>/IM*.dcm``, a CT Image Storage series of the same volume (so the DICOM path runs too),
* ``cases.json``: every nodule's centre (LPS mm), diameter, density kind and shape.

Generation goes through :func:`medpipe.data.synthetic.writer.write_generated` (a temporary folder
renamed into place at the end, so an interrupted run leaves nothing half-written, and a stamp that
records the generator version so a newer recipe regenerates). The data are synthetic: they exist so the
main command runs anywhere, not to claim accuracy on patients. Point the bundle at real data
(LIDC-IDRI, LUNA16, MSD Task06) with ``--manifest``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medpipe.data.nifti import write_nifti
from medpipe.data.synthetic.phantom import PhantomSpec, generate_phantom
from medpipe.data.synthetic.writer import Generator, write_generated
from medpipe.dicom.writer import write_ct_series

__all__ = ["DEFAULT_SPLITS", "GENERATOR", "GENERATOR_NAME", "GENERATOR_VERSION", "generate_dataset",
           "manifest_content"]

GENERATOR_NAME = "lung_nodule_ct_demo"
#: Bump when the phantom recipe or layout changes: existing generated folders are then rebuilt.
GENERATOR_VERSION = 2  # 2: -2048 HU outside the reconstruction circle (PixelPaddingValue in the DICOM)
BASE_SEED = 20261123
DEFAULT_SPLITS: dict[str, int] = {"training": 24, "validation": 6, "test": 6}


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
    """The manifest of a demo dataset (what ``default_manifest('lung_nodule_ct_demo')`` writes).

    ``with_generator=False`` describes data already written by :func:`generate_dataset` (tests)."""
    content = {
        "name": GENERATOR_NAME,
        "description": (
            "SYNTHETIC chest-CT phantoms (body, lungs, airway, vessels, ribs, spine, table, -2048 HU outside the scan circle) with 1-4 nodules "
            "of 4-30 mm (solid, part-solid, ground-glass; smooth or lobulated), 0.8x0.8x2.5 mm, "
            "generated deterministically by medpipe on first use. Not patient data."
        ),
        "synthetic": True,
        "modality": "CT",
        "labels": {"0": "background", "1": "nodule"},
        "dataset_dir": dataset_dir,
        "generator": GENERATOR.stamp(splits),
        **split_entries(splits),
    }
    if not with_generator:
        del content["generator"]
    return content


def _write_case(args: tuple[Path, int, PhantomSpec | None]) -> dict[str, Any]:
    root, index, spec = args
    cid = case_id(index)
    spec = spec or PhantomSpec()
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
        padding_hu=None if spec.outside_scan_hu is None else int(spec.outside_scan_hu),
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
    spec: PhantomSpec | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write every case of a demo dataset into ``root`` atomically; returns ``root``.

    ``spec`` is a :class:`~medpipe.data.synthetic.phantom.PhantomSpec` (default: full-size chest CT);
    tests pass a small one. Cases are independent and seeded by index, so any worker count gives the
    same files.
    """
    n = sum(splits.values())
    return write_generated(
        root, ("imagesTr", "labelsTr", "dicom"), lambda tmp: [(tmp, i, spec) for i in range(n)], _write_case,
        stamp=GENERATOR.stamp(splits), what="demo data", desc="generating demo phantoms", unit="case",
        workers=workers, progress=progress,
    )  # fmt: skip


GENERATOR = Generator(GENERATOR_NAME, GENERATOR_VERSION, DEFAULT_SPLITS, manifest_content, generate_dataset)
