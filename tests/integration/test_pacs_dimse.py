"""``--source dimse://HOST:PORT/AET``: classic DICOM networking (pynetdicom) against Orthanc's DICOM server.

Orthanc on loopback knows medpipe's AE title (MEDPIPE at 127.0.0.1, the C-MOVE port). The default test
works the archive directly (C-ECHO, C-FIND at the three levels, C-MOVE of the CPTAC CT into a folder,
C-STORE of a SEG found afterwards by C-FIND); the slow one runs ``medpipe infer --source dimse://... --push``
end to end twice (the second run retrieves and pushes nothing).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from tests.conftest import BUNDLE, SHARED_DATA
from tests.integration.orthanc import PASSWORD, USER, Orthanc, free_port, skip_without_orthanc

pytest.importorskip("pynetdicom", reason="pynetdicom is not installed (pip install medpipe, which requires it)")
CPTAC = SHARED_DATA / "lung_ct_dicom_cptac_lscc" / "series"


@pytest.fixture(scope="module")
def dimse(tmp_path_factory: pytest.TempPathFactory):
    skip_without_orthanc()
    if not CPTAC.is_dir():
        pytest.skip(f"real data absent: {CPTAC}")
    import requests

    tmp = tmp_path_factory.mktemp("dimse")
    orthanc = Orthanc(tmp / "orthanc")
    dicom_port, move_port = free_port(), free_port()
    orthanc.start(DicomServerEnabled=True, DicomPort=dicom_port, DicomAet="ORTHANC", DicomCheckCalledAet=True,
                  DicomModalities={"medpipe": ["MEDPIPE", "127.0.0.1", move_port]})  # fmt: skip
    try:
        files = sorted(CPTAC.glob("*.dcm"))
        for f in files:
            requests.post(f"{orthanc.url}/instances", data=f.read_bytes(), auth=(USER, PASSWORD), timeout=30).raise_for_status()
        config = tmp / "dimse.json"
        config.write_text(json.dumps({"url": f"dimse://127.0.0.1:{dicom_port}/ORTHANC", "move_port": move_port,
                                      "attempts": 2, "retry_wait_s": 0.05}))  # fmt: skip
        yield {"orthanc": orthanc, "config": config, "tmp": tmp, "head": pydicom.dcmread(files[0], stop_before_pixels=True),
               "files": files}  # fmt: skip
    finally:
        orthanc.stop()


def test_find_move_and_store_against_orthanc(dimse: dict) -> None:
    from medpipe.dicom.scan import scan
    from medpipe.infer.seg import read_seg_labelmap, write_seg
    from medpipe.pacs.archive import Attempts, tag_value
    from medpipe.pacs.config import load_config
    from medpipe.pacs.dimse import DimseArchive

    archive = DimseArchive(load_config(None, dimse["config"], environ={}))
    archive.check()
    head = dimse["head"]
    study, series = str(head.StudyInstanceUID), str(head.SeriesInstanceUID)
    assert [tag_value(s, "0020000D") for s in archive.studies({"ModalitiesInStudy": "CT"})] == [study]
    assert archive.studies({"ModalitiesInStudy": "MR"}) == []
    assert archive.study_exists(study) and not archive.study_exists("1.2.3.4")
    assert [(tag_value(s, "0020000E"), tag_value(s, "00080060")) for s in archive.series(study)] == [(series, "CT")]
    sops = sorted(str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in dimse["files"])
    assert archive.instance_uids(study, series) == sops
    folder = dimse["tmp"] / "moved"
    assert archive.retrieve_to(study, series, folder) == 99
    stack = scan(str(folder)).single()
    assert sorted(s.sop_instance_uid for s in stack.slices) == sops
    # a SEG of a small cube, stored and found again
    mask = np.zeros((512, 512, 99), np.uint8)
    mask[200:220, 200:220, 40:45] = 1
    seg_path = dimse["tmp"] / "cube_seg.dcm"
    write_seg(seg_path, mask, stack, {0: "background", 1: "nodule"}, bundle_name="test", bundle_version="0.0.1")
    seg = pydicom.dcmread(seg_path)
    attempts = Attempts()
    archive.store(seg, attempts)
    assert attempts.tries == 1 and str(seg.SOPInstanceUID) in archive.instance_uids(study, str(seg.SeriesInstanceUID))
    moved = dimse["tmp"] / "seg_back"
    assert archive.retrieve_to(study, str(seg.SeriesInstanceUID), moved) == 1
    np.testing.assert_array_equal(read_seg_labelmap(next(moved.glob("*.dcm")), stack), mask)


def test_an_unknown_called_aet_is_unreachable(dimse: dict) -> None:
    from medpipe.errors import MedpipeError
    from medpipe.pacs.config import load_config
    from medpipe.pacs.dimse import DimseArchive

    cfg = json.loads(dimse["config"].read_text())
    waits: list[float] = []
    archive = DimseArchive(load_config(cfg["url"].replace("/ORTHANC", "/NOT-ORTHANC").replace("dimse", "dimse", 1),
                                       dimse["config"], environ={}), sleep=waits.append)  # fmt: skip
    with pytest.raises(MedpipeError) as err:
        archive.check()
    assert err.value.code == "PACS_UNREACHABLE" and "MEDPIPE" in str(err.value) and waits == []  # rejected: no retry


@pytest.mark.slow
def test_infer_over_dimse_end_to_end(dimse: dict, tmp_path: Path) -> None:
    from medpipe.cli import cli

    out = tmp_path / "out"
    args = ["infer", "--bundle", str(BUNDLE), "--pacs-config", str(dimse["config"]), "--query", "ModalitiesInStudy=CT",
            "--push", "--output", str(out), "--device", "cpu"]  # fmt: skip
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output[-3000:] + repr(first.exception)
    report = json.loads((out / "pacs.json").read_text())
    assert (report["series_retrieved"], report["pushed"], report["infer"]["done"]) == (1, 1, 1), report
    second = CliRunner().invoke(cli, args)
    assert second.exit_code == 0, second.output[-3000:]
    report = json.loads((out / "pacs.json").read_text())
    assert (report["series_retrieved"], report["series_done_earlier"], report["pushed"], report["pushed_earlier"]) == (
        0, 1, 0, 1
    ), report
