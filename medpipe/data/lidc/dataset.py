"""``medpipe manifest lidc ROOT``: LIDC-IDRI in TCIA's layout -> images, consensus masks, a datalist.

For every reader XML under ROOT (``<patient>/<study>/<series>/NNN.xml`` beside the series' DICOM
files) the series is read with :mod:`medpipe.dicom` and its marks are grouped into nodules
(:mod:`medpipe.data.lidc.nodules`). Written into the output's data folder, per case
(``<patient>-<series id>``):

* ``images/<case>.nii.gz``: the CT, int16 HU (the volume ``medpipe convert`` writes);
* ``labels/<case>.nii.gz``: uint8, 1 on the consensus of every nodule marked by at least
  ``min_readers`` readers, at ``agreement`` (default 50 % of the nodule's readers);
* ``labels/<case>_nodules.nii.gz``: uint16 instance map, nodule ``n`` where its consensus is;
* ``nodules/<case>.json``: every nodule (readers, consensus size, centroid in LPS mm, readers' median
  ratings), the nodules under 3 mm and the non-nodule marks as points, and the warnings of the case.

The datalist has patient-level splits (a patient's series all go to one split; seeded), and
``nodules.csv`` next to it has one row per nodule. A case that cannot be used (unreadable XML, a series
UID that matches no images here, a series refused by the DICOM layer) is reported with its code and
the others go on; patient ids are LIDC's own de-identified ids (``LIDC-IDRI-0003``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.atomic import atomic_write_text
from medpipe.data.lidc.nodules import Nodule, SeriesGrid, group_marks, place
from medpipe.data.lidc.xml import LidcRead, read_lidc_xml
from medpipe.data.make_manifest import patient_splits
from medpipe.data.nifti import write_nifti
from medpipe.dicom.scan import scan
from medpipe.dicom.volume import LPS_TO_RAS, load_stack
from medpipe.errors import Code, MedpipeError
from medpipe.tables import write_csv

NODULE_FIELDS = (
    "case_id", "patient", "nodule", "n_readers", "consensus_voxels", "volume_mm3", "centroid_lps",
    "malignancy_median", "split",
)  # fmt: skip


def find_reads(root: Path) -> list[Path]:
    """Every LIDC reader XML under ``root``, sorted (one per series in TCIA's layout)."""
    return sorted(p for p in root.rglob("*.xml") if p.is_file() and not p.name.startswith("."))


def point_record(mark: Any, grid: SeriesGrid) -> dict[str, Any] | None:
    sop, z, (col, row) = mark.point
    k = grid.slice_index(sop, z)
    if k is None:
        return None
    lps = grid.to_mm(np.array([[col, row, k]]))[0]
    return {"reader": mark.reader, "ijk": [round(float(col), 1), round(float(row), 1), int(k)],
            "lps": [round(float(v), 2) for v in lps]}  # fmt: skip


def lidc_case(
    read: LidcRead, folder: Path, data_dir: Path, *, agreement: float, min_readers: int
) -> dict[str, Any]:
    """Write the image, masks and nodule record of one series; returns its datalist entry and records."""
    found = scan(str(folder))
    stacks = [s for s in found.stacks if s.series_uid == read.series_uid]
    if not stacks:
        raise Code.LIDC_SERIES_MISMATCH(
            f"the reader file names series ...{read.series_uid[-12:]}, which is not among the "
            f"{len(found.stacks)} series of its folder"
        )
    stack = max(stacks, key=lambda s: len(s.slices))
    grid = SeriesGrid.of_stack(stack)
    volume = load_stack(stack)
    patient = folder.parents[1].name  # TCIA layout: <patient>/<study>/<series>/
    case = f"{patient}-{stack.id}"
    placed = [place(m, grid) for m in read.nodules]
    warnings = list(read.warnings) + [w for p in placed for w in p.warnings]
    usable = [p for p in placed if p.contours]
    warnings += [f"reader {p.mark.reader} mark {p.mark.mark_id!r} has no contour on the series; dropped"
                 for p in placed if not p.contours]  # fmt: skip
    nodules = [Nodule(g) for g in group_marks(usable, grid, len(read.readers))]
    instances = np.zeros(grid.shape, dtype=np.uint16)
    records = []
    for index, nodule in enumerate(nodules, start=1):
        box, mask = nodule.consensus(grid.shape, agreement)
        view = instances[box]
        view[mask & (view == 0)] = index
        records.append(nodule.record(index, grid, agreement))
    targets = [r["nodule"] for r in records if r["n_readers"] >= min_readers]
    affine = LPS_TO_RAS @ grid.affine_lps
    write_nifti(data_dir / "images" / f"{case}.nii.gz", volume.array, affine)
    write_nifti(
        data_dir / "labels" / f"{case}.nii.gz",
        np.isin(instances, targets).astype(np.uint8),
        affine,
        dtype=np.uint8,
    )
    write_nifti(data_dir / "labels" / f"{case}_nodules.nii.gz", instances, affine, dtype=np.uint16)
    detail = {
        "case_id": case, "patient": patient, "series_id": stack.id, "readers": len(read.readers),
        "agreement": agreement, "min_readers": min_readers, "nodules": records,
        "small_nodules": [r for m in read.small if (r := point_record(m, grid))],
        "non_nodules": [r for m in read.non_nodules if (r := point_record(m, grid))],
        "warnings": warnings,
    }  # fmt: skip
    atomic_write_text(data_dir / "nodules" / f"{case}.json", json.dumps(detail, indent=1) + "\n")
    entry = {
        "case_id": case, "patient": patient, "image": f"images/{case}.nii.gz", "label": f"labels/{case}.nii.gz",
        "instances": f"labels/{case}_nodules.nii.gz", "nodules": f"nodules/{case}.json",
    }  # fmt: skip
    return {"entry": entry, "records": records, "warnings": warnings}


def lidc_manifest(
    root: str | Path,
    output: str | Path,
    *,
    data_dir: str | Path | None = None,
    agreement: float = 0.5,
    min_readers: int = 1,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    hold_out: tuple[str, ...] = (),
    echo: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Write the data, the datalist ``output`` and ``nodules.csv`` beside it; returns the datalist."""
    root, output = Path(root), Path(output)
    if not 0 < agreement <= 1:
        raise Code.CONFIG_BAD_OVERRIDE(
            f"--agreement {agreement} must be in (0, 1] (0.5: half of the readers)"
        )
    reads = find_reads(root)
    if not reads:
        raise Code.INPUT_NO_IMAGES(
            f"no LIDC reader XML under {root} (TCIA layout: <patient>/<study>/<series>/NNN.xml)"
        )
    data = Path(data_dir) if data_dir is not None else output.parent / "lidc_data"
    cases, failures = [], []
    for xml in reads:
        try:
            cases.append(
                lidc_case(read_lidc_xml(xml), xml.parent, data, agreement=agreement, min_readers=min_readers)
            )
            c = cases[-1]
            echo(f"{c['entry']['case_id']}: {len(c['records'])} nodule(s), {len(c['warnings'])} warning(s)")
        except MedpipeError as e:
            failures.append({"xml": str(xml.relative_to(root)), "code": e.code, "message": e.message})
            echo(f"{xml.relative_to(root)}: {e.code}: {e.message}")
    if not cases:
        raise Code.INPUT_NO_IMAGES(
            f"no usable LIDC series under {root}: " + "; ".join(f["code"] for f in failures)
        )
    split_of = patient_splits([c["entry"]["patient"] for c in cases], val_fraction=val_fraction,
                              test_fraction=test_fraction, seed=seed, hold_out=tuple(hold_out))  # fmt: skip
    content: dict[str, Any] = {
        "name": "LIDC-IDRI",
        "description": f"LIDC-IDRI chest CT with reader consensus masks (agreement {agreement:g}, nodules of "
        f">= {min_readers} reader(s)); splits by patient",
        "labels": {"0": "background", "1": "nodule"},
        "modality": "CT",
        "split_rule": f"by patient, seeded ({seed}): test {test_fraction:.0%}, validation {val_fraction:.0%} of the rest"
        + (f"; held out for test: {', '.join(hold_out)}" if hold_out else ""),
        "failures": failures,
    }
    for split in ("training", "validation", "test"):
        content[split] = [c["entry"] for c in cases if split_of[c["entry"]["patient"]] == split]
    content["dataset_dir"] = os.path.relpath(data.resolve(), output.resolve().parent)
    atomic_write_text(output, json.dumps(content, indent=1) + "\n")
    rows = [{**r, "case_id": c["entry"]["case_id"], "patient": c["entry"]["patient"],
             "split": split_of[c["entry"]["patient"]]} for c in cases for r in c["records"]]  # fmt: skip
    write_csv(output.with_name("nodules.csv"), rows, NODULE_FIELDS)
    return content
