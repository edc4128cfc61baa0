"""The staged-folder writer: all or nothing, a stamp per dataset, never into a folder it did not make."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medpipe.data.synthetic.writer import MANIFEST_NAME, STAMP, already_generated, write_generated
from medpipe.errors import DataGenerationError

SPLITS = {"training": 2, "validation": 1}


def _write_text_case(job: tuple[Path, int]) -> dict:
    tmp, index = job
    (tmp / "cases" / f"case_{index}.txt").write_text(f"case {index}\n")
    return {"case_id": index}


def _failing_case(job: tuple[Path, int]) -> dict:
    if job[1] == 2:
        raise KeyboardInterrupt  # the user pressing Ctrl-C half-way
    return _write_text_case(job)


def _disk_full_case(job: tuple[Path, int]) -> dict:
    raise OSError(28, "No space left on device")


def _write(root: Path, write_case=_write_text_case, version: int = 1, n: int = 3) -> Path:
    return write_generated(
        root, ("cases",), lambda tmp: [(tmp, i) for i in range(n)], write_case,
        stamp={"name": "test", "version": version, "splits": SPLITS}, what="test data", desc="test",
        unit="case", workers=1, progress=False,
    )  # fmt: skip


def test_writes_cases_stamp_and_case_records(tmp_path):
    root = _write(tmp_path / "data")
    assert sorted(p.name for p in (root / "cases").iterdir()) == ["case_0.txt", "case_1.txt", "case_2.txt"]
    assert json.loads((root / "cases.json").read_text()) == {"cases": [{"case_id": i} for i in range(3)]}
    assert json.loads((root / STAMP).read_text())["version"] == 1
    assert already_generated(root, 1, SPLITS)
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no temporary folder left


def test_interrupted_generation_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path / "data", _failing_case)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataGenerationError) as e:
        _write(tmp_path / "data", _disk_full_case)
    assert e.value.code == "DATA_GENERATION_FAILED" and "No space left" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_regeneration_keeps_the_previous_dataset(tmp_path):
    root = _write(tmp_path / "data")
    with pytest.raises(KeyboardInterrupt):
        _write(root, _failing_case, version=2)
    assert already_generated(root, 1, SPLITS) and [p.name for p in tmp_path.iterdir()] == ["data"]


def test_foreign_folder_is_refused_but_a_manifest_alone_is_not(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "scan.nii.gz").write_bytes(b"x")
    with pytest.raises(DataGenerationError) as e:
        already_generated(foreign, 1, SPLITS)
    assert e.value.code == "DATA_DIR_CONFLICT" and str(foreign) in str(e.value)
    assert not already_generated(tmp_path / "absent", 1, SPLITS)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / MANIFEST_NAME).write_text("{}")
    assert not already_generated(cache, 1, SPLITS)  # the default manifest lives in its dataset folder


def test_stamp_mismatch_regenerates_and_keeps_the_manifest(tmp_path):
    root = _write(tmp_path / "data")
    (root / MANIFEST_NAME).write_text('{"training": []}')
    (root / "cases" / "stale.txt").write_text("from an older recipe")
    assert not already_generated(root, 2, SPLITS)  # a newer generator version
    assert not already_generated(root, 1, {"training": 5})  # other splits
    (root / STAMP).write_text("{not json")
    assert not already_generated(root, 1, SPLITS)  # a torn stamp
    _write(root, version=2, n=2)
    assert already_generated(root, 2, SPLITS)
    assert sorted(p.name for p in (root / "cases").iterdir()) == ["case_0.txt", "case_1.txt"]
    assert (root / MANIFEST_NAME).read_text() == '{"training": []}'
