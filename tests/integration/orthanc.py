"""Debian's Orthanc on loopback for the PACS tests: a storage folder of its own, HTTP Basic authentication
with a test user, the DICOMweb plugin; ``skip_without_orthanc()`` where it is not installed."""

from __future__ import annotations

import glob
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

PASSWORD = "pw-CANARY-5521-secret"
USER = "radiology-bot"
PLUGIN_GLOBS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so*", "/usr/lib/orthanc/libOrthancDicomWeb.so*")
REFUSE_SEG = "function ReceivedInstanceFilter(dicom, origin, info)\n  return dicom.Modality ~= 'SEG'\nend\n"


def plugin() -> str | None:
    found = [p for g in PLUGIN_GLOBS for p in sorted(glob.glob(g))]
    return found[0] if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """Orthanc on 127.0.0.1 with a storage folder of its own; ``start(refuse_seg=...)`` / ``stop()``."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        (root / "db").mkdir(parents=True)
        (root / "refuse_seg.lua").write_text(REFUSE_SEG)

    def start(self, *, refuse_seg: bool = False, **extra) -> None:
        config = {
            "Name": "medpipe-test", "StorageDirectory": str(self.root / "db"), "IndexDirectory": str(self.root / "db"),
            "HttpPort": self.port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD}, "Plugins": [plugin()],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "LuaScripts": [str(self.root / "refuse_seg.lua")] if refuse_seg else [], **extra,
        }  # fmt: skip
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(config))
        log = open(self.root / "orthanc.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen([shutil.which("Orthanc"), str(path)], stdout=log, stderr=log, cwd=self.root)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"Orthanc exited with {self.proc.returncode}: {(self.root / 'orthanc.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/system", auth=(USER, PASSWORD), timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        pytest.fail("Orthanc did not answer /system within 30 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def get(self, path: str) -> dict:
        return requests.get(f"{self.url}{path}", auth=(USER, PASSWORD), timeout=10).json()

    def client(self):
        from dicomweb_client.api import DICOMwebClient

        session = requests.Session()
        session.auth = (USER, PASSWORD)
        return DICOMwebClient(f"{self.url}/dicom-web", session=session)




def skip_without_orthanc() -> None:
    if shutil.which("Orthanc") is None or plugin() is None:
        pytest.skip("Orthanc or its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb; "
                    ".ci/run does it when run as root)")  # fmt: skip
