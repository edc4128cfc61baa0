"""The archive's requests: retries with exponential backoff on transient failures, coded errors, no secret."""

from __future__ import annotations

import socket

import pydicom
import pytest
import requests
from pydicom.dataset import Dataset

from medpipe.errors import MedpipeError
from medpipe.pacs.archive import Archive, Attempts
from medpipe.pacs.config import PacsConfig

SECRET = "hunter2-CANARY"


def _http_error(status: int) -> requests.exceptions.HTTPError:
    response = requests.Response()
    response.status_code = status
    return requests.exceptions.HTTPError(f"{status} for url", response=response)


class FakeClient:
    """Stands in for DICOMwebClient: fails with the given exceptions, then stores (and lists) the instance."""

    def __init__(self, failures: list[Exception], *, list_it: bool = True) -> None:
        self.failures, self.list_it, self.stored = list(failures), list_it, []

    def store_instances(self, datasets, study_instance_uid=None):
        if self.failures:
            raise self.failures.pop(0)
        self.stored += [str(d.SOPInstanceUID) for d in datasets]
        answer = Dataset()
        item = Dataset()
        item.ReferencedSOPInstanceUID = datasets[0].SOPInstanceUID
        answer.ReferencedSOPSequence = [item]
        return answer

    def search_for_instances(self, study, series, search_filters=None, fields=None, **_):
        uid = search_filters["SOPInstanceUID"]
        return [{"00080018": {"vr": "UI", "Value": [uid]}}] if self.list_it and uid in self.stored else []


def _seg() -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = (pydicom.uid.generate_uid() for _ in range(3))
    return ds


def _archive(client: FakeClient, attempts: int = 4) -> tuple[Archive, list[float]]:
    waits: list[float] = []
    archive = Archive(PacsConfig("https://pacs.example.org/rs", username="u", password=SECRET, attempts=attempts,
                                 retry_wait_s=1.5), sleep=waits.append)  # fmt: skip
    archive.client = client  # type: ignore[assignment]
    return archive, waits


def test_a_busy_archive_is_retried_with_exponential_backoff() -> None:
    client = FakeClient([requests.exceptions.ConnectionError("refused"), _http_error(503), _http_error(429)])
    archive, waits = _archive(client)
    attempts = Attempts()
    ds = _seg()
    archive.store(ds, attempts)
    assert attempts.tries == 4 and waits == [1.5, 3.0, 6.0] and client.stored == [ds.SOPInstanceUID]


def test_a_push_that_keeps_failing_is_coded_with_its_tries() -> None:
    archive, waits = _archive(FakeClient([_http_error(503)] * 10), attempts=3)
    attempts = Attempts()
    with pytest.raises(MedpipeError) as err:
        archive.store(_seg(), attempts)
    assert err.value.code == "PACS_PUSH_FAILED" and "HTTP 503" in str(err.value) and attempts.tries == 3
    assert waits == [1.5, 3.0] and SECRET not in str(err.value)


def test_stored_but_not_listed_counts_as_failed() -> None:
    """Orthanc 1.10.1 answers STOW-RS "stored" for an instance its ReceivedInstanceFilter dropped."""
    archive, _ = _archive(FakeClient([], list_it=False), attempts=2)
    with pytest.raises(MedpipeError) as err:
        archive.store(_seg(), Attempts())
    assert err.value.code == "PACS_PUSH_FAILED" and "does not find the SEG" in str(err.value)


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_are_not_retried(status: int) -> None:
    archive, waits = _archive(FakeClient([_http_error(status)] * 5))
    attempts = Attempts()
    with pytest.raises(MedpipeError) as err:
        archive.store(_seg(), attempts)
    assert err.value.code == "PACS_AUTH_FAILED" and attempts.tries == 1 and waits == []
    assert SECRET not in str(err.value) and "basic auth" in str(err.value)


def test_a_client_error_is_not_retried() -> None:
    archive, waits = _archive(FakeClient([_http_error(400)] * 5))
    with pytest.raises(MedpipeError) as err:
        archive.store(_seg(), Attempts())
    assert err.value.code == "PACS_PUSH_FAILED" and "HTTP 400" in str(err.value) and waits == []


def test_a_closed_port_is_unreachable() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    waits: list[float] = []
    archive = Archive(PacsConfig(f"http://127.0.0.1:{port}/dicom-web", attempts=2, retry_wait_s=0.25), sleep=waits.append)
    with pytest.raises(MedpipeError) as err:
        archive.check()
    assert err.value.code == "PACS_UNREACHABLE" and f"127.0.0.1:{port}/dicom-web" in str(err.value) and waits == [0.25]


def test_tls_settings_reach_the_session(tmp_path, monkeypatch) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    archive = Archive(PacsConfig("https://h/rs", token=SECRET, ca_bundle=str(ca), client_cert=str(ca)))
    session = archive.client._session
    assert session.verify == str(ca) and session.cert == str(ca)
    assert session.headers["Authorization"] == f"Bearer {SECRET}" and session.auth is None
    # requests lets REQUESTS_CA_BUNDLE override a session's verify; ours wins
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    assert session.merge_environment_settings("https://h/rs", {}, None, None, None)["verify"] == str(ca)
    insecure = Archive(PacsConfig("https://h/rs", insecure=True)).client._session
    assert insecure.merge_environment_settings("https://h/rs", {}, None, None, None)["verify"] is False
    default = Archive(PacsConfig("https://h/rs")).client._session  # no option: the environment's bundle
    assert default.merge_environment_settings("https://h/rs", {}, None, None, None)["verify"] == (
        "/etc/ssl/certs/ca-certificates.crt"
    )
