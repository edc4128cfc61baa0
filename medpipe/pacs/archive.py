"""A DICOMweb archive through dicomweb-client: QIDO-RS searches, WADO-RS retrieval, STOW-RS storage.

medpipe writes no HTTP of its own: :class:`Archive` holds a ``dicomweb_client.DICOMwebClient`` on a
``requests`` session that carries the authentication (HTTP Basic or a bearer token) and the TLS
settings of a :class:`~medpipe.pacs.config.PacsConfig`. Each request is tried ``attempts`` times, waiting
``retry_wait_s * 2**k`` between tries, when the archive is unreachable or answers 429/5xx (the client's own
retry is off, so the count is ours and is recorded); a refusal of the credentials (401/403) is not retried.
Failures become coded errors whose messages name the redacted URL, never a secret.
"""

from __future__ import annotations

import shutil
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from medpipe.errors import Code, MedpipeError
from medpipe.pacs.config import PacsConfig

T = TypeVar("T")
#: HTTP statuses worth another try (busy, gateway, unavailable)
RETRIABLE = (408, 429, 500, 502, 503, 504)
STUDY_UID, SERIES_UID, SOP_UID, MODALITY = "0020000D", "0020000E", "00080018", "00080060"


def tag_value(item: Mapping[str, Any], tag: str) -> Any:
    """The first value of ``tag`` in a DICOM JSON item (QIDO-RS answer), or None."""
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


class NotStored(requests.exceptions.HTTPError):
    """A STOW-RS answer (200/202) that lists the SEG as failed or not at all: retried like a busy archive."""


class _Session(requests.Session):
    """A session whose ``verify`` wins over ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``: plain requests lets
    the environment override a session's CA bundle, and even ``verify=False`` (psf/requests#3829), which
    made --ca-bundle and --insecure no-ops wherever those variables are set (they are on this CI machine)."""

    def __init__(self, verify: bool | str | None) -> None:
        super().__init__()
        self.explicit_verify = verify
        if verify is not None:
            self.verify = verify

    def merge_environment_settings(self, url, proxies, stream, verify, cert):  # type: ignore[no-untyped-def]
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if self.explicit_verify is not None:
            settings["verify"] = self.explicit_verify
        return settings


def _busy() -> requests.Response:
    response = requests.Response()
    response.status_code = 503  # retried like a busy archive
    return response


@dataclass
class Attempts:
    """How many tries a request took; ``error`` is the coded error of the last failed one."""

    tries: int = 0
    error: MedpipeError | None = None


class Archive:
    """One DICOMweb archive; every method raises a coded error (``PACS_*``) when the archive fails it."""

    def __init__(self, config: PacsConfig, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.sleep = sleep
        session = _Session(False if config.insecure else config.ca_bundle)
        if config.token:
            session.headers["Authorization"] = f"Bearer {config.token}"
        elif config.username:
            session.auth = (config.username, config.password or "")
        if config.client_cert:
            session.cert = (config.client_cert, config.client_key) if config.client_key else config.client_cert
        self.client = DICOMwebClient(config.url, session=session, timeout=config.timeout_s)
        self.client.set_http_retry_params(retry=False)

    @property
    def shown(self) -> str:
        return self.config.shown

    # --- the one place requests fail
    def _coded(self, exc: Exception, what: str, code: Code) -> MedpipeError:
        where = f"{what} at {self.shown}"
        if isinstance(exc, requests.exceptions.SSLError):
            return Code.PACS_TLS_FAILED(
                f"{where}: TLS failed ({type(exc).__name__}); pass --ca-bundle FILE with the archive's CA "
                "(or ca_bundle / client_cert in --pacs-config)"
            )
        if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            return Code.PACS_UNREACHABLE(
                f"{where}: no answer ({type(exc).__name__}); check the host, port and path of --source"
            )
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            return Code.PACS_AUTH_FAILED(
                f"{where}: HTTP {status}, the archive refuses the credentials ({self.config.auth} auth); set "
                "MEDPIPE_DICOMWEB_USER/MEDPIPE_DICOMWEB_PASSWORD or MEDPIPE_DICOMWEB_TOKEN, or --pacs-config"
            )
        reason = str(exc) if isinstance(exc, NotStored) else f"HTTP {status}" if status else type(exc).__name__
        return code(f"{where}: {reason}")

    def call(self, fn: Callable[[], T], what: str, code: Code, attempts: Attempts | None = None) -> T:
        """``fn()``, tried up to ``config.attempts`` times with exponential waits on transient failures."""
        attempts = attempts if attempts is not None else Attempts()
        while True:
            attempts.tries += 1
            try:
                with warnings.catch_warnings():  # --insecure warns once, in medpipe's words, not per request
                    warnings.simplefilter("ignore", requests.packages.urllib3.exceptions.InsecureRequestWarning)
                    return fn()
            except (requests.exceptions.RequestException, ValueError) as exc:
                attempts.error = self._coded(exc, what, code)
                status = getattr(getattr(exc, "response", None), "status_code", None)
                transient = status in RETRIABLE or (
                    status is None and isinstance(exc, requests.exceptions.RequestException)
                    and not isinstance(exc, requests.exceptions.SSLError)
                )  # fmt: skip
                if not transient or attempts.tries >= self.config.attempts:
                    raise attempts.error from None
                self.sleep(self.config.retry_wait_s * 2 ** (attempts.tries - 1))

    # --- QIDO-RS
    def check(self) -> None:
        """One cheap search, so that a wrong URL, credentials or certificate fail before anything runs."""
        self.call(lambda: self.client.search_for_studies(limit=1), "QIDO-RS search", Code.PACS_REQUEST_FAILED)

    def studies(self, filters: Mapping[str, str]) -> list[dict[str, Any]]:
        """The studies a QIDO-RS query matches (``{"ModalitiesInStudy": "CT", "StudyDate": "20260101-"}``)."""
        def search() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = []
            while True:  # page through archives that cap their answers (Orthanc, DCM4CHEE: 100 or 1000)
                page = self.client.search_for_studies(search_filters=dict(filters), offset=len(found), limit=500)
                found += page
                if len(page) < 500:
                    return found

        return self.call(search, "QIDO-RS study search", Code.PACS_REQUEST_FAILED)

    def study_exists(self, study_uid: str) -> bool:
        found = self.call(
            lambda: self.client.search_for_studies(search_filters={"StudyInstanceUID": study_uid}),
            "QIDO-RS study search", Code.PACS_REQUEST_FAILED,
        )  # fmt: skip
        return any(tag_value(s, STUDY_UID) == study_uid for s in found)

    def series(self, study_uid: str) -> list[dict[str, Any]]:
        """The series of a study (QIDO-RS), each a DICOM JSON item with SeriesInstanceUID and Modality."""
        return self.call(
            lambda: self.client.search_for_series(study_uid), "QIDO-RS series search", Code.PACS_REQUEST_FAILED
        )

    def instance_uids(self, study_uid: str, series_uid: str) -> list[str]:
        """The SOP Instance UIDs of a series (QIDO-RS, metadata only): what a re-run compares."""
        def search() -> list[str]:
            uids: list[str] = []
            while True:
                page = self.client.search_for_instances(
                    study_uid, series_uid, fields=[SOP_UID], offset=len(uids), limit=1000
                )
                uids += [u for u in (tag_value(i, SOP_UID) for i in page) if u]
                if len(page) < 1000:
                    return sorted(uids)

        return self.call(search, "QIDO-RS instance search", Code.PACS_REQUEST_FAILED)

    # --- WADO-RS
    def retrieve_to(self, study_uid: str, series_uid: str, folder: Path) -> int:
        """The instances of a series (WADO-RS), streamed one by one into ``folder`` (cleared before each
        try); returns how many; ``PACS_RETRIEVE_FAILED`` on error."""
        def once() -> int:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            n = 0
            for n, ds in enumerate(self.client.iter_series(study_uid, series_uid), 1):
                ds.save_as(folder / f"{n:06d}.dcm", enforce_file_format=True)
            return n

        return self.call(once, "WADO-RS retrieval of a series", Code.PACS_RETRIEVE_FAILED)

    # --- STOW-RS
    def store(self, dataset: pydicom.Dataset, attempts: Attempts) -> None:
        """Store one instance (STOW-RS); ``PACS_PUSH_FAILED`` unless the archive lists it as stored."""
        uid = str(dataset.SOPInstanceUID)

        def once() -> None:
            answer = self.client.store_instances([dataset], study_instance_uid=str(dataset.StudyInstanceUID))
            failed = [str(getattr(i, "FailureReason", "?")) for i in getattr(answer, "FailedSOPSequence", [])]
            stored = {str(getattr(i, "ReferencedSOPInstanceUID", "")) for i in getattr(answer, "ReferencedSOPSequence", [])}
            if failed or uid not in stored:
                raise NotStored(
                    f"the STOW-RS answer lists the SEG as not stored (failure reason {', '.join(failed) or 'none given'})",
                    response=_busy(),
                )
            # and the archive must list it: Orthanc answers "stored" for an instance its
            # ReceivedInstanceFilter dropped (seen with Orthanc 1.10.1 + DICOMweb 1.7)
            listed = self.client.search_for_instances(
                str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID), search_filters={"SOPInstanceUID": uid},
                fields=[SOP_UID],
            )  # fmt: skip
            if uid not in {tag_value(i, SOP_UID) for i in listed}:
                raise NotStored("the STOW-RS answer says stored, but a QIDO-RS search does not find the SEG", response=_busy())

        self.call(once, "STOW-RS store of a SEG", Code.PACS_PUSH_FAILED, attempts)
