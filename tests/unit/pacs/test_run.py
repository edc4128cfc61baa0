"""medpipe infer --source: the options, the study records, and a batch that goes on past a failed series."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from medpipe.errors import Code, MedpipeError
from medpipe.infer.records import write_done
from medpipe.infer.run import InferOptions
from medpipe.pacs import records
from medpipe.pacs import run as pacs_run
from medpipe.pacs.run import PacsOptions, check_input_or_source, infer_pacs, parse_query
from medpipe.privacy import series_id
from tests.conftest import BUNDLE


def test_query_is_qido_parameters() -> None:
    assert parse_query("ModalitiesInStudy=CT&StudyDate=20260101-") == {"ModalitiesInStudy": "CT", "StudyDate": "20260101-"}
    assert parse_query(None) == {}
    for bad in ("ModalitiesInStudy", "=CT", "a=1&&b"):
        with pytest.raises(MedpipeError) as err:
            parse_query(bad)
        assert err.value.code == "PACS_BAD_SOURCE", bad


@pytest.mark.parametrize(
    "input_path, pacs, archive",
    [("in", PacsOptions(), False), (None, PacsOptions(source="dicomweb+http://h/x"), True),
     (None, PacsOptions(config_file="pacs.json"), True), ("in", PacsOptions(source="dicomweb+http://h/x"), None),
     (None, PacsOptions(), None), ("in", PacsOptions(studies=("1.2.3",)), None), ("in", PacsOptions(push=True), None)],
)  # fmt: skip
def test_exactly_one_of_input_and_source(input_path, pacs, archive) -> None:
    if archive is None:
        with pytest.raises(MedpipeError) as err:
            check_input_or_source(input_path, pacs)
        assert err.value.code == "INFER_INPUT_OR_SOURCE"
    else:
        assert check_input_or_source(input_path, pacs) is archive


def test_the_cli_refuses_input_with_source_and_credentials_in_the_url(tmp_path: Path) -> None:
    from medpipe.cli import cli

    base = ["infer", "--bundle", str(BUNDLE), "--output", str(tmp_path / "out")]
    result = CliRunner().invoke(cli, [*base, "--input", str(tmp_path), "--source", "dicomweb+http://h:1/x"])
    assert result.exit_code == 3 and "INFER_INPUT_OR_SOURCE" in result.output, result.output
    result = CliRunner().invoke(cli, [*base, "--source", "dicomweb+http://bob:pw-CANARY@h:1/x", "--study", "1.2"])
    assert result.exit_code == 3 and "PACS_BAD_SOURCE" in result.output and "pw-CANARY" not in result.output
    result = CliRunner().invoke(cli, [*base, "--source", "dicomweb+http://127.0.0.1:1/x"])
    assert result.exit_code == 3 and "PACS_BAD_SOURCE" in result.output and "--study" in result.output
    result = CliRunner().invoke(cli, [*base, "--source", "dicomweb+http://127.0.0.1:1/x", "--study", "1.2", "--push",
                                      "--format", "nifti"])  # fmt: skip
    assert result.exit_code == 3 and "INFER_BAD_FORMAT" in result.output and "dicom-seg" in result.output


def test_qido_fingerprint_changes_with_an_instance_not_with_order() -> None:
    a = records.qido_fingerprint({"1.2": ["1.2.1", "1.2.2"], "1.3": ["1.3.1"]})
    assert a == records.qido_fingerprint({"1.3": ["1.3.1"], "1.2": ["1.2.2", "1.2.1"]})
    assert a != records.qido_fingerprint({"1.2": ["1.2.1", "1.2.2", "1.2.3"], "1.3": ["1.3.1"]})


def test_a_study_is_done_only_while_its_done_records_hold(tmp_path: Path) -> None:
    run = {"bundle": "b", "bundle_version": "1.0.0", "model_sha256": "abc"}
    folder = tmp_path / series_id("1.2.840.1")
    record = {**run, "series": folder.name, "fingerprint": "f"}
    write_done(folder, record, {"seg": "x_seg.dcm"}, [])
    (folder / "x_seg.dcm").write_bytes(b"seg")
    assert records.done_folders(tmp_path, ["1.2.840.1"], run, set()) == {folder.name: record}
    assert records.done_folders(tmp_path, ["1.2.840.1"], run, {folder.name}) is None  # failed this run
    assert records.done_folders(tmp_path, ["1.2.840.1", "1.2.840.2"], run, set()) is None  # a series not done
    records.write_study(tmp_path, "st-1", "qido", {folder.name: record})
    assert records.study_done(tmp_path, "st-1", "qido", run) == [folder.name]
    assert records.study_done(tmp_path, "st-1", "other instances", run) is None
    assert records.study_done(tmp_path, "st-1", "qido", {**run, "bundle_version": "1.1.0"}) is None
    (folder / "x_seg.dcm").unlink()
    assert records.study_done(tmp_path, "st-1", "qido", run) is None  # an output gone: done again


class FailingArchive:
    """An archive with one study of a CT and a SEG series, whose retrievals all fail."""

    shown = "dicomweb+http://fake/rs"

    def __init__(self, config, sleep=None) -> None:
        pass

    def check(self) -> None:
        pass

    def study_exists(self, uid: str) -> bool:
        return uid in ("1.2.3", "1.2.9")

    def series(self, uid: str) -> list[dict]:
        if uid == "1.2.9":
            raise Code.PACS_REQUEST_FAILED("QIDO-RS series search at dicomweb+http://fake/rs: HTTP 500")
        return [{"0020000E": {"Value": ["1.2.3.4"]}, "00080060": {"Value": ["CT"]}},
                {"0020000E": {"Value": ["1.2.3.5"]}, "00080060": {"Value": ["SEG"]}}]  # fmt: skip

    def instance_uids(self, study: str, series: str) -> list[str]:
        return ["1.2.3.4.1", "1.2.3.4.2"]

    def retrieve_to(self, study, series, folder) -> int:
        raise Code.PACS_RETRIEVE_FAILED("WADO-RS retrieval of a series at dicomweb+http://fake/rs: HTTP 500")


def test_a_series_that_cannot_be_retrieved_is_recorded_and_the_batch_goes_on(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(pacs_run, "Archive", FailingArchive)
    out = tmp_path / "out"
    pacs = PacsOptions(source="dicomweb+http://fake/rs", studies=("1.2.9", "1.2.3"), push=True, environ={})
    report, status = infer_pacs(BUNDLE, out, InferOptions(progress=False), pacs, echo=lambda _: None)
    assert status == 4 and report["retrieve_failed"] == 2 and report["infer"] is None
    with open(out / "studies.csv", newline="") as fp:
        rows = {r["series"] or r["study"]: r for r in csv.DictReader(fp)}
    assert rows[records.study_id("1.2.9")]["status"] == "PACS_REQUEST_FAILED"  # its search failed; the next study ran
    assert rows[series_id("1.2.3.4")]["status"] == "PACS_RETRIEVE_FAILED"
    assert rows[series_id("1.2.3.5")]["status"] == "not selected (SEG)"
    assert not (out / "studies").exists()  # not done: the next run tries the study again
    assert not list(out.glob(".retrieved-*"))  # the scratch folder is gone
    assert json.loads((out / "pacs.json").read_text())["archive"] == "dicomweb+http://fake/rs"
    with pytest.raises(MedpipeError) as err:
        infer_pacs(BUNDLE, out, InferOptions(progress=False), PacsOptions(source=pacs.source, studies=("9.9",), environ={}))
    assert err.value.code == "PACS_STUDY_NOT_FOUND" and "9.9" not in str(err.value)
