"""The one patient-data rule: hashed ids by default, paths only with --show-paths, for every command.

Inputs live in folders named after a patient, as exports from a PACS often are; a corrupt file carries
the name too. Nothing ``convert`` and ``dicom ls`` print or write may contain it unless asked.
(``infer``: tests/integration/test_infer_run.py; ``evaluate``: tests/unit/evaluate/test_segmentation.py.)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from medpipe.cli import cli
from medpipe.privacy import (
    case_id,
    file_id,
    pseudonym,
    pseudonym_key,
    scrub,
    series_id,
    short_hash,
    shown_path,
)

PATIENT = "Smith_John_MRN0042"


@pytest.fixture
def named_tree(tiny_dataset: Path, tmp_path: Path) -> Path:
    """``<tmp>/in/<PATIENT>/ct/`` a good CT series, a gapped one, and ``<PATIENT>.dcm``, a corrupt file."""
    content = json.loads(tiny_dataset.read_text())
    data = tiny_dataset.parent / "data"
    root = tmp_path / "in" / PATIENT
    shutil.copytree(data / content["training"][0]["dicom"], root / "ct")
    shutil.copytree(data / content["training"][1]["dicom"], root / "gap")
    sorted((root / "gap").glob("*.dcm"))[3].unlink()
    (root / f"{PATIENT}.dcm").write_bytes(b"DICM" + b"\0" * 200)
    return tmp_path / "in"


def everything(folder: Path) -> str:
    return "\n".join([p.name for p in folder.rglob("*")] + [p.read_text(errors="ignore") for p in folder.rglob("*.json")])


def test_the_helpers() -> None:
    assert len(short_hash("x")) == 10 and short_hash("x") == short_hash("x") != short_hash("y")
    assert series_id("1.2.3") == short_hash("1.2.3")
    assert file_id("/data/Smith/a.dcm").startswith("file-") and "Smith" not in file_id("/data/Smith/a.dcm")
    assert case_id({"case_id": "c7", "image": "/x/Smith.nii.gz"}) == "c7"
    assert case_id({"image": "v.npz", "npz_split": "test", "npz_index": 3}) == "test/3"
    assert case_id({"image": "/x/Smith.nii.gz"}).startswith("case-") and "Smith" not in case_id({"image": "/x/Smith.nii.gz"})
    assert shown_path("/a/b/c.dcm", False) is None
    assert shown_path("/a/b/c.dcm", True, "/a") == "b/c.dcm" and shown_path("/a/b/c.dcm", True, "/z") == "/a/b/c.dcm"
    message = f"cannot read /data/{PATIENT}/ct/IM1.dcm (in /data/{PATIENT}/ct)"
    scrubbed = scrub(message, [f"/data/{PATIENT}/ct/IM1.dcm"], "<series 1>")
    assert PATIENT not in scrubbed and scrubbed.count("<series 1>") == 2


def test_pseudonyms_are_keyed_and_one_per_patient_for_a_folder(tmp_path: Path) -> None:
    key = pseudonym_key(tmp_path / "out")  # --anonymize-seg: made on first use, then read
    assert len(key) == 32 and pseudonym_key(tmp_path / "out") == key
    assert ((tmp_path / "out" / "pseudonym.key").stat().st_mode & 0o777) == 0o600
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["pseudonym.key"]
    other = pseudonym_key(tmp_path / "elsewhere")
    assert other != key
    assert pseudonym(PATIENT, key) == pseudonym(PATIENT, key) != pseudonym(PATIENT + "1", key)
    assert pseudonym(PATIENT, key) != pseudonym(PATIENT, other) and pseudonym(PATIENT, key).startswith("anon-")
    assert pseudonym(PATIENT, key) != "anon-" + short_hash(PATIENT)  # not a plain hash of the ID


def test_convert_names_nothing_after_the_patient(named_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["convert", str(named_tree), "-o", str(out)])
    assert result.exit_code == 4, result.output  # the gapped series and the corrupt file are refused
    assert PATIENT not in result.output and PATIENT not in everything(out)
    items = json.loads((out / "conversion.json").read_text())["items"]
    assert sorted(i["status"] for i in items) == ["DICOM_CORRUPT_FILE", "DICOM_MISSING_SLICES", "ok"]
    assert all("path" not in i for i in items)
    shown = CliRunner().invoke(cli, ["convert", str(named_tree), "-o", str(tmp_path / "o2"), "--show-paths"])
    items = json.loads((tmp_path / "o2" / "conversion.json").read_text())["items"]
    assert {i["path"] for i in items} == {f"{PATIENT}/ct", f"{PATIENT}/gap", f"{PATIENT}/{PATIENT}.dcm"}
    assert shown.exit_code == 4


def test_dicom_ls_names_nothing_after_the_patient(named_tree: Path) -> None:
    table = CliRunner().invoke(cli, ["dicom", "ls", str(named_tree)])
    listing = CliRunner().invoke(cli, ["dicom", "ls", str(named_tree), "--json"])
    for result in (table, listing):
        assert result.exit_code == 0, result.output
        assert PATIENT not in result.output and "Smith" not in result.output
    payload = json.loads(listing.output)
    (bad,) = payload["unreadable"]
    assert bad["file"].startswith("file-") and bad["code"] == "DICOM_CORRUPT_FILE" and "path" not in bad
    shown = json.loads(CliRunner().invoke(cli, ["dicom", "ls", str(named_tree), "--json", "--show-paths"]).output)
    assert shown["unreadable"][0]["path"] == f"{PATIENT}/{PATIENT}.dcm"
