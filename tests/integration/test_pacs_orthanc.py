"""``medpipe infer --source dicomweb+http://...`` against a real archive: Debian's Orthanc with its DICOMweb
plugin on loopback (a temporary storage folder, HTTP Basic authentication with a test user).

One module fixture uploads the real CPTAC-LSCC chest CT (99 slices) and runs the command four times:

1. ``--pacs-config`` (mode 600) ``--study UID --push`` while a Lua ``ReceivedInstanceFilter`` makes
   Orthanc drop every SEG (yet answer STOW-RS with "stored"): the series is segmented, the push is
   tried 3 times and recorded as failed (exit 4);
2. Orthanc restarted without the filter, credentials from the environment, ``--query``: the study is
   not retrieved again (done earlier), the failed push is retried and succeeds;
3. the same again: nothing new is pushed;
4. a wrong password: ``PACS_AUTH_FAILED``.

5. ``--input`` the same series from ../shared/data into the same OUT: skipped, done by the archive run.

Every logger is at DEBUG (pydicom's at INFO, as in test_patient_data.py) and the password must appear in
no output, log or file. Skipped when Orthanc, its plugin or ../shared/data is missing (``.ci/run``
installs orthanc + orthanc-dicomweb as root).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import certifi
import nibabel as nib
import numpy as np
import pydicom
import pytest
import requests
from click.testing import CliRunner

from tests.conftest import BUNDLE, SHARED_DATA, every_logger_at_debug
from tests.integration.orthanc import PASSWORD, USER, Orthanc, skip_without_orthanc

CPTAC = SHARED_DATA / "lung_ct_dicom_cptac_lscc" / "series"
ENV_KEYS = ("MEDPIPE_DICOMWEB_USER", "MEDPIPE_DICOMWEB_PASSWORD", "MEDPIPE_DICOMWEB_TOKEN", "MEDPIPE_DICOMWEB_CONFIG")




@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory):
    skip_without_orthanc()
    if not CPTAC.is_dir():
        pytest.skip(f"real data absent: {CPTAC}")
    from medpipe.cli import cli

    tmp = tmp_path_factory.mktemp("pacs")
    orthanc = Orthanc(tmp / "orthanc")
    orthanc.start(refuse_seg=True)
    try:
        files = sorted(CPTAC.glob("*.dcm"))
        for f in files:  # Orthanc's REST upload; the command under test uses DICOMweb
            requests.post(f"{orthanc.url}/instances", data=f.read_bytes(), auth=(USER, PASSWORD), timeout=30).raise_for_status()
        head = pydicom.dcmread(files[0], stop_before_pixels=True)
        config = tmp / "pacs.json"
        config.write_text(json.dumps({"url": f"{orthanc.url}/dicom-web", "username": USER, "password": PASSWORD,
                                      "attempts": 3, "retry_wait_s": 0.05}))  # fmt: skip
        os.chmod(config, 0o600)
        out = tmp / "out"
        common = ["infer", "--bundle", str(BUNDLE), "--output", str(out), "--device", "cpu"]
        no_env = dict.fromkeys(ENV_KEYS)
        by_env = {**no_env, "MEDPIPE_DICOMWEB_USER": USER, "MEDPIPE_DICOMWEB_PASSWORD": PASSWORD}
        source = ["--source", f"dicomweb+{orthanc.url}/dicom-web"]
        results, captured, snapshots = {}, [], {}
        with every_logger_at_debug() as handler:
            for name, args, env in (
                ("refused", [*common, "--pacs-config", str(config), "--study", str(head.StudyInstanceUID), "--push"], no_env),
                ("retry", [*common, *source, "--query", "ModalitiesInStudy=CT", "--push"], by_env),
                ("again", [*common, *source, "--query", "ModalitiesInStudy=CT", "--push"], by_env),
                ("badauth", [*common, *source, "--study", str(head.StudyInstanceUID)],
                 {**by_env, "MEDPIPE_DICOMWEB_PASSWORD": "wrong-" + PASSWORD[::-1]}),
                # the same series from a folder into the same OUT: done by the archive run, so skipped
                ("folder", [*common, "--input", str(CPTAC)], no_env),
            ):  # fmt: skip
                t0 = time.perf_counter()
                result = CliRunner().invoke(cli, args, env=env)
                results[name] = (result, round(time.perf_counter() - t0, 1))
                captured += [result.output, repr(result.exception) if result.exception else ""]
                snapshots[name] = {
                    "summary": json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else None,
                    "pacs": json.loads((out / "pacs.json").read_text()) if (out / "pacs.json").is_file() else None,
                    "pushes": list(csv.DictReader(open(out / "pushes.csv"))) if (out / "pushes.csv").is_file() else [],
                    "instances": orthanc.get("/statistics")["CountInstances"],
                }
                if name == "refused":
                    orthanc.stop()
                    orthanc.start(refuse_seg=False)
        captured += handler.lines
        yield {"orthanc": orthanc, "out": out, "results": results, "snap": snapshots, "captured": captured,
               "head": head, "tmp": tmp}  # fmt: skip
    finally:
        orthanc.stop()


def _output(runs: dict, name: str) -> str:
    result, _ = runs["results"][name]
    return result.output[-3000:] + repr(result.exception)


def test_a_refused_push_is_recorded_with_its_attempts(runs: dict) -> None:
    result, seconds = runs["results"]["refused"]
    assert result.exit_code == 4, _output(runs, "refused")
    snap = runs["snap"]["refused"]
    assert snap["pacs"]["series_retrieved"] == 1 and snap["pacs"]["infer"]["done"] == 1, snap
    assert snap["pacs"]["push_failed"] == 1 and snap["pacs"]["pushed"] == 0
    [row] = snap["pushes"]
    assert row["status"] == "PACS_PUSH_FAILED" and row["attempts"] == "3", row
    assert "QIDO-RS search does not find the SEG" in row["message"]  # Orthanc answered "stored" and dropped it
    assert snap["instances"] == 99  # the CT only: the filter dropped the SEG
    print(f"first run (retrieve + infer + 3 refused pushes): {seconds} s")


def test_the_next_run_retries_the_push_without_retrieving_the_study(runs: dict) -> None:
    result, seconds = runs["results"]["retry"]
    assert result.exit_code == 0, _output(runs, "retry")
    pacs = runs["snap"]["retry"]["pacs"]
    assert (pacs["series_retrieved"], pacs["series_done_earlier"], pacs["pushed"], pacs["infer"]) == (0, 1, 1, None), pacs
    [row] = runs["snap"]["retry"]["pushes"]
    assert row["status"] == "pushed" and row["attempts"] == "4", row  # 3 refused + 1
    assert runs["snap"]["retry"]["instances"] == 100
    print(f"second run (study skipped, push retried): {seconds} s")


def test_the_seg_in_orthanc_references_the_series_and_equals_the_local_mask(runs: dict) -> None:
    from medpipe.dicom.scan import scan
    from medpipe.infer.seg import read_seg_labelmap

    head, client = runs["head"], runs["orthanc"].client()
    segs = [s for s in client.search_for_series(str(head.StudyInstanceUID)) if s["00080060"]["Value"] == ["SEG"]]
    assert len(segs) == 1, segs
    [seg] = client.retrieve_series(str(head.StudyInstanceUID), segs[0]["0020000E"]["Value"][0])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == head.SeriesInstanceUID
    stack = scan(str(CPTAC)).single()
    local = runs["out"] / stack.id
    assert seg.SOPInstanceUID == pydicom.dcmread(local / f"{stack.id}_seg.dcm").SOPInstanceUID
    path = runs["tmp"] / "from_orthanc.dcm"
    seg.save_as(path, enforce_file_format=True)
    mask = np.asarray(nib.load(local / f"{stack.id}_seg.nii.gz").dataobj)
    assert mask.any()  # the shipped weights find lesions on this CT (4 at 0.2.2): a real comparison
    np.testing.assert_array_equal(read_seg_labelmap(path, stack), mask)


def test_a_second_run_pushes_nothing_new(runs: dict) -> None:
    result, seconds = runs["results"]["again"]
    assert result.exit_code == 0, _output(runs, "again")
    pacs = runs["snap"]["again"]["pacs"]
    assert (pacs["series_retrieved"], pacs["pushed"], pacs["pushed_earlier"], pacs["push_failed"]) == (0, 0, 1, 0), pacs
    assert runs["snap"]["again"]["pushes"] == runs["snap"]["retry"]["pushes"]
    assert runs["snap"]["again"]["instances"] == 100
    print(f"third run (nothing to do): {seconds} s")


def test_a_wrong_password_is_a_coded_refusal(runs: dict) -> None:
    result, _ = runs["results"]["badauth"]
    assert result.exit_code == 3 and "PACS_AUTH_FAILED" in result.output, _output(runs, "badauth")


def test_the_password_is_in_no_output_log_or_file(runs: dict) -> None:
    needles = (PASSWORD, PASSWORD[::-1])
    text = "\n".join(runs["captured"])
    assert "PACS_AUTH_FAILED" in text and "urllib3" in text  # the scan does see the verbose logs
    assert not [n for n in needles if n in text]
    for path in runs["out"].rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not [n for n in needles if n.encode() in data or n in path.name], path


class _Qido(BaseHTTPRequestHandler):
    """Answers every GET with an empty DICOM JSON list: a QIDO-RS search that matches nothing."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b"[]"
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory):
    """An HTTPS server with a self-signed certificate for 127.0.0.1 (openssl) that answers QIDO-RS with no
    match. Not Orthanc: Debian's Orthanc 1.10.1 dies (SIGSEGV) on its first HTTPS request here."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (it makes the test certificate)")
    tmp = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(tmp / "key.pem"), "-out", str(tmp / "ca.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Qido)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp / "ca.pem", tmp / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", tmp / "ca.pem"
    server.shutdown()
    server.server_close()


def test_tls_is_verified_against_the_ca_bundle(tls_server) -> None:
    """--ca-bundle verifies the archive (the unknown study is then the error), without it TLS fails, and
    --insecure connects but warns."""
    from medpipe.cli import cli

    url, ca = tls_server
    base = ["infer", "--bundle", str(BUNDLE), "--output", str(ca.parent / "out"), "--source",
            f"dicomweb+{url}/dicom-web", "--study", "1.2.3.4.5"]  # fmt: skip
    # a CA bundle in the environment (as on many machines) must not override --ca-bundle or --insecure
    env = {**dict.fromkeys(ENV_KEYS), "MEDPIPE_DICOMWEB_TOKEN": PASSWORD, "REQUESTS_CA_BUNDLE": certifi.where()}
    verified = CliRunner().invoke(cli, [*base, "--ca-bundle", str(ca)], env=env)
    assert verified.exit_code == 3 and "PACS_STUDY_NOT_FOUND" in verified.output, verified.output
    unverified = CliRunner().invoke(cli, base, env=env)
    assert unverified.exit_code == 3 and "PACS_TLS_FAILED" in unverified.output, unverified.output
    insecure = CliRunner().invoke(cli, [*base, "--insecure"], env=env)
    assert insecure.exit_code == 3 and "PACS_STUDY_NOT_FOUND" in insecure.output, insecure.output
    assert "warning: --insecure" in insecure.output and "warning" not in verified.output
    assert PASSWORD not in verified.output + unverified.output + insecure.output


def test_the_archive_run_is_the_folder_run(runs: dict) -> None:
    """Same done record (the input fingerprint of the series as medpipe reads it from a folder): a folder
    run into the same output folder finds the series done."""
    from medpipe.dicom.scan import scan
    from medpipe.infer.records import read_done
    from medpipe.infer.sources import stack_fingerprint

    stack = scan(str(CPTAC)).single()
    assert read_done(runs["out"] / stack.id)["record"]["fingerprint"] == stack_fingerprint(stack)
    result, _ = runs["results"]["folder"]
    assert result.exit_code == 0, _output(runs, "folder")
    summary = runs["snap"]["folder"]["summary"]
    assert (summary["series"], summary["skipped"], summary["done"]) == (1, 1, 0), summary
