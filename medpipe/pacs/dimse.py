"""A classic DICOM archive (DIMSE) through pynetdicom: C-FIND, C-MOVE and C-STORE, for PACS without DICOMweb.

``--source dimse://HOST:PORT/AET``. :class:`DimseArchive` answers what :class:`~medpipe.pacs.archive.Archive`
answers, so :mod:`medpipe.pacs.run` treats both alike: C-ECHO checks the archive, C-FIND (Study Root) finds
studies, series and instances (returned as the DICOM JSON items QIDO-RS would give), C-MOVE retrieves a
series to a Storage SCP that medpipe runs for the time of the move (AE title ``calling_aet``, port
``move_port``: the archive must know this AE title at this host and port), C-STORE pushes a SEG, which
counts as pushed once a C-FIND finds it. DIMSE has no passwords: the archive admits AE titles (and
addresses). Association failures and transient statuses are retried as the DICOMweb requests are.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from medpipe.errors import Code
from medpipe.pacs.archive import MODALITY, SERIES_UID, STUDY_UID, Attempts
from medpipe.pacs.config import PacsConfig

#: C-FIND / C-MOVE / C-STORE statuses worth another try: out of resources, unable to process, busy
RETRIABLE_STATUS = (0xA700, 0xA701, 0xA702, 0xA7FF, 0xC000, 0xC001, 0xFE00)


class _Failed(Exception):
    """A DIMSE operation that did not succeed; ``transient`` when another try may."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def _item(ds: Dataset, tags: Mapping[str, str]) -> dict[str, Any]:
    """A C-FIND identifier as the DICOM JSON item QIDO-RS would give (the tags :mod:`medpipe.pacs.run` reads)."""
    return {tag: {"Value": [str(getattr(ds, kw))]} for tag, kw in tags.items() if getattr(ds, kw, None)}


class DimseArchive:
    """A DIMSE archive; every method raises a coded error (``PACS_*``) when the archive fails it."""

    def __init__(self, config: PacsConfig, *, sleep: Callable[[float], None] = time.sleep) -> None:
        parts = urlsplit(config.url)
        self.config, self.sleep = config, sleep
        self.host, self.port = parts.hostname or "", parts.port or 104
        self.called = parts.path.strip("/") or "ANY-SCP"

    @property
    def shown(self) -> str:
        return self.config.shown

    # --- the one place operations fail
    @contextmanager
    def _association(self, contexts: list[Any]) -> Iterator[Any]:
        ae = AE(ae_title=self.config.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.config.timeout_s
        for context in contexts:
            ae.add_requested_context(context)
        assoc = ae.associate(self.host, self.port, ae_title=self.called)
        if not assoc.is_established:
            raise _Failed("no association (refused, rejected or no answer)", transient=not assoc.is_rejected)
        try:
            yield assoc
        finally:
            assoc.release()

    def call(self, fn: Callable[[], Any], what: str, code: Code, attempts: Attempts | None = None) -> Any:
        attempts = attempts if attempts is not None else Attempts()
        while True:
            attempts.tries += 1
            try:
                return fn()
            except _Failed as exc:
                where = f"{what} at {self.shown}"
                if "association" in str(exc):
                    attempts.error = Code.PACS_UNREACHABLE(
                        f"{where}: {exc}; check the host, port and called AE title of --source, and that the "
                        f"archive admits the calling AE title {self.config.calling_aet}"
                    )
                else:
                    attempts.error = code(f"{where}: {exc}")
                if not exc.transient or attempts.tries >= self.config.attempts:
                    raise attempts.error from None
                self.sleep(self.config.retry_wait_s * 2 ** (attempts.tries - 1))

    def _find(self, level: str, keys: Mapping[str, str], returned: tuple[str, ...]) -> list[Dataset]:
        query = Dataset()
        query.QueryRetrieveLevel = level
        for keyword in returned:
            setattr(query, keyword, "")
        for keyword, value in keys.items():
            setattr(query, keyword, value)

        def once() -> list[Dataset]:
            found = []
            with self._association([StudyRootQueryRetrieveInformationModelFind]) as assoc:
                for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
                    value = getattr(status, "Status", None)
                    if value is None:
                        raise _Failed("no C-FIND answer (aborted or timed out)", transient=True)
                    if value in (0xFF00, 0xFF01) and identifier is not None:
                        found.append(identifier)
                    elif value not in (0x0000, 0xFF00, 0xFF01):
                        raise _Failed(f"C-FIND status 0x{value:04X}", transient=value in RETRIABLE_STATUS)
            return found

        return self.call(once, f"C-FIND ({level})", Code.PACS_REQUEST_FAILED)

    # --- what medpipe.pacs.run asks
    def check(self) -> None:
        def once() -> None:
            with self._association([Verification]) as assoc:
                status = assoc.send_c_echo()
                if getattr(status, "Status", None) != 0x0000:
                    raise _Failed("C-ECHO failed", transient=True)

        self.call(once, "C-ECHO", Code.PACS_REQUEST_FAILED)

    def studies(self, filters: Mapping[str, str]) -> list[dict[str, Any]]:
        unknown = [k for k in filters if k not in pydicom.datadict.keyword_dict]
        if unknown:
            raise Code.PACS_BAD_SOURCE(f"--query over DIMSE takes DICOM keywords (StudyDate=...); not {', '.join(unknown)}")
        found = self._find("STUDY", filters, ("StudyInstanceUID",))
        return [_item(ds, {STUDY_UID: "StudyInstanceUID"}) for ds in found]

    def study_exists(self, study_uid: str) -> bool:
        found = self._find("STUDY", {"StudyInstanceUID": study_uid}, ())
        return any(getattr(ds, "StudyInstanceUID", None) == study_uid for ds in found)

    def series(self, study_uid: str) -> list[dict[str, Any]]:
        found = self._find("SERIES", {"StudyInstanceUID": study_uid}, ("SeriesInstanceUID", "Modality"))
        return [_item(ds, {SERIES_UID: "SeriesInstanceUID", MODALITY: "Modality"}) for ds in found]

    def instance_uids(self, study_uid: str, series_uid: str) -> list[str]:
        found = self._find("IMAGE", {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid}, ("SOPInstanceUID",))
        return sorted(str(ds.SOPInstanceUID) for ds in found if getattr(ds, "SOPInstanceUID", None))

    def retrieve_to(self, study_uid: str, series_uid: str, folder: Path) -> int:
        """C-MOVE of a series to medpipe's Storage SCP, which writes each instance into ``folder``."""
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID, query.SeriesInstanceUID = study_uid, series_uid

        def once() -> int:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            received: list[int] = []

            def on_store(event: Any) -> int:
                ds = event.dataset
                ds.file_meta = event.file_meta
                received.append(1)
                ds.save_as(folder / f"{len(received):06d}.dcm", enforce_file_format=True)
                return 0x0000

            scp = AE(ae_title=self.config.calling_aet)
            scp.supported_contexts = AllStoragePresentationContexts
            server = scp.start_server(("", self.config.move_port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
            try:
                with self._association([StudyRootQueryRetrieveInformationModelMove]) as assoc:
                    for status, _ in assoc.send_c_move(query, self.config.calling_aet, StudyRootQueryRetrieveInformationModelMove):
                        value = getattr(status, "Status", None)
                        if value is None:
                            raise _Failed("no C-MOVE answer (aborted or timed out)", transient=True)
                        if value not in (0x0000, 0xFF00):
                            raise _Failed(f"C-MOVE status 0x{value:04X} (does the archive know the AE title "
                                          f"{self.config.calling_aet} at this host, port {self.config.move_port}?)",
                                          transient=value in RETRIABLE_STATUS)  # fmt: skip
            finally:
                server.shutdown()
            if not received:
                raise _Failed("the C-MOVE sent no instance", transient=False)
            return len(received)

        return self.call(once, "C-MOVE of a series", Code.PACS_RETRIEVE_FAILED)

    def store(self, dataset: Dataset, attempts: Attempts) -> None:
        """C-STORE one instance; ``PACS_PUSH_FAILED`` unless the archive then finds it (C-FIND)."""
        uid = str(dataset.SOPInstanceUID)

        def once() -> None:
            with self._association([dataset.SOPClassUID]) as assoc:
                status = assoc.send_c_store(dataset)
                value = getattr(status, "Status", None)
                if value is None or value not in (0x0000, 0xB000, 0xB007, 0xB006):
                    raise _Failed(f"C-STORE status {'none' if value is None else f'0x{value:04X}'}",
                                  transient=value is None or value in RETRIABLE_STATUS)  # fmt: skip
            if uid not in self.instance_uids(str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID)):
                raise _Failed("C-STORE answered success, but a C-FIND does not find the SEG", transient=True)

        self.call(once, "C-STORE of a SEG", Code.PACS_PUSH_FAILED, attempts)
