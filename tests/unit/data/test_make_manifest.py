"""Manifests made from datasets: crops + a table (split by patient), the patient-level split itself."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from medpipe.cli import cli
from medpipe.data.make_manifest import crops_manifest, patient_splits
from medpipe.errors import ManifestError
from tests.conftest import SHARED_DATA

VOIS = SHARED_DATA / "lidc_nodule_vois"


def crops(tmp_path: Path, rows: list[dict[str, str]], with_mask: bool = True, missing: int = 0) -> tuple[Path, Path]:
    """Crops (and masks) for the rows of a table, but for the last ``missing`` rows."""
    images, masks = tmp_path / "image", tmp_path / "mask"
    images.mkdir()
    masks.mkdir()
    for row in rows[: len(rows) - missing]:
        name = f"{row['patient_id']}_R_{row['nodule_id']}.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.eye(4)), images / name)
        if with_mask:
            nib.save(nib.Nifti1Image(np.ones((8, 8, 4), np.uint8), np.eye(4)), masks / name)
    table = tmp_path / "nodules.csv"
    with open(table, "w", newline="") as fp:
        writer = csv.DictWriter(fp, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return images, table


def test_patient_splits_never_share_a_patient_and_are_seeded():
    patients = [f"p{i // 3}" for i in range(90)]  # 30 patients, 3 cases each
    split = patient_splits(patients, val_fraction=0.2, test_fraction=0.2, seed=1)
    assert sorted(set(split.values())) == ["test", "training", "validation"] and len(split) == 30
    assert list(split.values()).count("test") == 6 and list(split.values()).count("validation") == 5
    assert split == patient_splits(list(reversed(patients)), val_fraction=0.2, test_fraction=0.2, seed=1)
    assert split != patient_splits(patients, val_fraction=0.2, test_fraction=0.2, seed=2)


def test_crops_become_a_classifier_datalist_split_by_patient(tmp_path):
    rows = [{"patient_id": f"P{i // 2}", "nodule_id": str(i % 2 + 1), "Diagnosis": "Malign" if i % 3 else "Benign",
             "Malignancy_value": str(1 + i % 5)} for i in range(40)]  # fmt: skip
    rows.append({"patient_id": "P99", "nodule_id": "1", "Diagnosis": "Benign", "Malignancy_value": "2"})
    images, table = crops(tmp_path, rows, missing=1)  # the last row names no crop
    content = crops_manifest(images, table, tmp_path / "m.json", masks_dir=tmp_path / "mask",
                             classes=["Benign", "Malign"], keep_columns=("Malignancy_value",), seed=3)  # fmt: skip
    entries = content["training"] + content["validation"] + content["test"]
    assert len(entries) == 40 and content["skipped"] == ["P99_R_1"] and content["labels"] == {"0": "Benign", "1": "Malign"}
    by_split = {s: {e["patient"] for e in content[s]} for s in ("training", "validation", "test")}
    assert not (by_split["training"] & by_split["test"]) and not (by_split["training"] & by_split["validation"])
    e = next(e for e in entries if e["case_id"] == "P1_R_2")
    assert e["label"] == 0 and e["Malignancy_value"] == 4.0 and e["mask"] == "mask/P1_R_2.nii.gz"  # row 3: Benign, 4
    written = json.loads((tmp_path / "m.json").read_text())
    assert (tmp_path / written["dataset_dir"] / e["image"]).is_file()


def test_a_missing_column_or_value_is_a_coded_error_naming_the_closest(tmp_path):
    images, table = crops(tmp_path, [{"patient_id": "P1", "nodule_id": "1", "Diagnosis": "Benign"}], with_mask=False)
    result = CliRunner().invoke(cli, ["manifest", "crops", str(images), str(table), "-o", str(tmp_path / "m.json"),
                                      "--label-column", "diagnosis"])  # fmt: skip
    assert result.exit_code == 3 and "MANIFEST_NO_COLUMN" in result.output and "did you mean 'Diagnosis'" in result.output
    with pytest.raises(ManifestError) as e:
        crops_manifest(images, table, tmp_path / "m.json", classes=["benign", "malignant"])
    assert e.value.code == "MANIFEST_INVALID" and "Benign" in str(e.value)
    with pytest.raises(ManifestError) as e:
        crops_manifest(images, table, tmp_path / "m.json", name_format="{patient}_{nodule}")
    assert e.value.code == "MANIFEST_NO_COLUMN"


@pytest.mark.skipif(not VOIS.is_dir(), reason="shared lidc_nodule_vois not present")
def test_the_lidc_nodule_crops(tmp_path):
    result = CliRunner().invoke(cli, [
        "manifest", "crops", str(VOIS / "image"), str(VOIS / "nodules.csv"), "-o", str(tmp_path / "m.json"),
        "--masks", str(VOIS / "nodule_mask"), "--classes", "Benign,Malign", "--keep", "Malignancy_value"])  # fmt: skip
    assert result.exit_code == 0, result.output
    content = json.loads((tmp_path / "m.json").read_text())
    entries = content["training"] + content["validation"] + content["test"]
    assert len(entries) == 792 and sorted(content["skipped"]) == ["LIDC-IDRI-1002_R_1", "LIDC-IDRI-1002_R_2"]
    assert sum(e["label"] for e in entries) == 286  # Malign crops with an image (PROVENANCE.md)
    patients = [{e["patient"] for e in content[s]} for s in ("training", "validation", "test")]
    assert sum(len(p) for p in patients) == 444 and not (patients[0] & patients[2])


def test_held_out_patients_go_to_test_and_leave_the_draw_unchanged():
    patients = [f"p{i // 3}" for i in range(90)]
    plain = patient_splits([p for p in patients if p != "p7"], val_fraction=0.2, test_fraction=0.2, seed=1)
    held = patient_splits(patients, val_fraction=0.2, test_fraction=0.2, seed=1, hold_out=("p7", "absent"))
    assert held["p7"] == "test" and "absent" not in held
    assert {p: s for p, s in held.items() if p != "p7"} == plain
