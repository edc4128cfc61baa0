"""Where the archive is and how to log in: ``--source``, ``--pacs-config`` and ``MEDPIPE_DICOMWEB_*``.

``--source dicomweb+https://HOST[:PORT]/PATH`` names the DICOMweb service root (the URL QIDO-RS, WADO-RS
and STOW-RS paths hang off: ``/dicom-web`` on Orthanc, ``/dcm4chee-arc/aets/DCM4CHEE/rs`` on DCM4CHEE).
Credentials never come from the command line, where shell history and ``ps`` would show them:

- environment: ``MEDPIPE_DICOMWEB_USER`` + ``MEDPIPE_DICOMWEB_PASSWORD`` (HTTP Basic) or
  ``MEDPIPE_DICOMWEB_TOKEN`` (``Authorization: Bearer``); they win over the config file;
- ``--pacs-config FILE`` (or ``MEDPIPE_DICOMWEB_CONFIG``): a JSON object with the keys of
  :data:`CONFIG_KEYS`. A file that holds a password or token and that group or others may read is
  refused, as ssh refuses such a private key (``chmod 600 FILE``).

A URL with ``user:password@`` is refused (``PACS_BAD_SOURCE``) and every URL medpipe prints goes
through :func:`redact`, so no message, log or report carries a secret.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from medpipe.errors import Code, look_up

USER_ENV, PASSWORD_ENV, TOKEN_ENV = "MEDPIPE_DICOMWEB_USER", "MEDPIPE_DICOMWEB_PASSWORD", "MEDPIPE_DICOMWEB_TOKEN"
CONFIG_ENV = "MEDPIPE_DICOMWEB_CONFIG"
SCHEMES = ("dicomweb+http", "dicomweb+https", "dimse")
#: the keys of a --pacs-config file
CONFIG_KEYS = (
    "url", "username", "password", "token", "ca_bundle", "client_cert", "client_key", "insecure",
    "timeout_s", "attempts", "retry_wait_s", "calling_aet", "move_port",
)  # fmt: skip


def redact(url: str) -> str:
    """``url`` without its user-info (``http://u:p@h/x`` -> ``http://h/x``) and without its query."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        netloc += f":{parts.port}" if parts.port else ""
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "<unparsable URL>"


@dataclass(frozen=True)
class PacsConfig:
    """One DICOMweb archive: its service root, how to authenticate, TLS and retry settings."""

    url: str
    username: str | None = None
    password: str | None = None
    token: str | None = None
    #: a CA bundle (PEM) to verify the archive's certificate with (default: the system's / certifi's)
    ca_bundle: str | None = None
    #: a client certificate (PEM), and its key where it is a separate file (mutual TLS)
    client_cert: str | None = None
    client_key: str | None = None
    #: no verification of the archive's certificate: for a test archive only (a warning is printed)
    insecure: bool = False
    timeout_s: float = 60.0
    #: tries of each request (QIDO, WADO, STOW) before it counts as failed, waiting retry_wait_s * 2^k between
    attempts: int = 4
    retry_wait_s: float = 2.0
    #: DIMSE (dimse://): medpipe's AE title, and the port of its Storage SCP for C-MOVE
    calling_aet: str = "MEDPIPE"
    move_port: int = 11113

    def __repr__(self) -> str:  # never the secrets
        auth = "token" if self.token else "basic" if self.username else "none"
        return f"PacsConfig(url={self.shown!r}, auth={auth}, insecure={self.insecure})"

    @property
    def shown(self) -> str:
        """The URL as medpipe prints it (``dicomweb+`` scheme, no user-info)."""
        return self.url if self.dimse else "dicomweb+" + redact(self.url)

    @property
    def dimse(self) -> bool:
        return self.url.startswith("dimse://")

    @property
    def auth(self) -> str:
        return "token" if self.token else "basic" if self.username else "none"


def parse_source(source: str) -> str:
    """``dicomweb+http(s)://HOST[:PORT]/PATH`` -> the http(s) URL; ``PACS_BAD_SOURCE`` otherwise."""
    scheme, sep, rest = str(source).partition("://")
    shown = redact(str(source))
    if not sep:
        raise Code.PACS_BAD_SOURCE(
            f"--source {shown!r} is not an archive URL: give dicomweb+http://HOST:PORT/PATH or dicomweb+https://..."
        )
    look_up(scheme.lower(), SCHEMES, what="--source scheme", code=Code.PACS_BAD_SOURCE)
    url = f"{scheme.lower().removeprefix('dicomweb+')}://{rest}"
    if scheme.lower() == "dimse" and (not rest.partition("/")[2].strip("/") or "@" in rest):
        raise Code.PACS_BAD_SOURCE(f"--source {shown!r}: a DIMSE archive is dimse://HOST:PORT/AET")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise Code.PACS_BAD_SOURCE(f"--source {shown!r} is not a valid URL ({e})") from None
    if parts.username is not None or parts.password is not None:
        raise Code.PACS_BAD_SOURCE(
            f"--source {shown!r} carries credentials in the URL, where shell history and the process list show "
            f"them: set {USER_ENV} and {PASSWORD_ENV} (or {TOKEN_ENV}), or use --pacs-config"
        )
    if not parts.hostname or port == 0:
        raise Code.PACS_BAD_SOURCE(f"--source {shown!r} names no host (dicomweb+http://HOST:PORT/PATH)")
    return url.rstrip("/")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The JSON object of a --pacs-config file, checked (keys, permissions); ``PACS_CONFIG_INVALID``."""
    p = Path(path)
    try:
        text, mode = p.read_text(encoding="utf-8"), p.stat().st_mode
        data = json.loads(text)
    except (OSError, UnicodeDecodeError) as e:
        raise Code.PACS_CONFIG_INVALID(f"--pacs-config {p}: cannot be read ({type(e).__name__})") from None
    except ValueError as e:
        raise Code.PACS_CONFIG_INVALID(f"--pacs-config {p}: not JSON ({e.__class__.__name__} at {e})") from None
    if not isinstance(data, dict):
        raise Code.PACS_CONFIG_INVALID(f"--pacs-config {p}: must be a JSON object with keys {', '.join(CONFIG_KEYS)}")
    for key in data:
        look_up(str(key), CONFIG_KEYS, what=f"--pacs-config {p}: key", code=Code.PACS_CONFIG_INVALID)
    if (data.get("password") or data.get("token")) and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise Code.PACS_CONFIG_INVALID(
            f"--pacs-config {p} holds a secret and others may read it (mode {stat.filemode(mode)}): chmod 600 {p}"
        )
    return data


def load_config(
    source: str | None,
    config_file: str | Path | None = None,
    *,
    ca_bundle: str | None = None,
    insecure: bool = False,
    environ: Mapping[str, str] | None = None,
) -> PacsConfig:
    """The archive of a run: ``--source`` (or the config file's ``url``), the config file, then the
    environment for credentials; ``--ca-bundle`` and ``--insecure`` win over the file."""
    env = os.environ if environ is None else environ
    config_file = config_file or env.get(CONFIG_ENV) or None
    data = read_config_file(config_file) if config_file else {}
    if not source and not data.get("url"):
        raise Code.PACS_BAD_SOURCE("no archive: give --source dicomweb+http(s)://HOST:PORT/PATH (or url in --pacs-config)")
    given = str(source or data["url"])
    if not source and given.lower().startswith(("http://", "https://")):  # the file's url may be plain http(s)
        given = "dicomweb+" + given
    url = parse_source(given)
    user = env.get(USER_ENV) or data.get("username")
    password = env.get(PASSWORD_ENV) or data.get("password")
    token = env.get(TOKEN_ENV) or data.get("token")
    if user and password is None:
        raise Code.PACS_CONFIG_INVALID(f"a user name for the archive but no password: set {PASSWORD_ENV}")
    try:
        numbers = {k: float(data[k]) for k in ("timeout_s", "retry_wait_s") if k in data}
        attempts = int(data.get("attempts", 4))
        move_port = int(data.get("move_port", 11113))
    except (TypeError, ValueError):
        raise Code.PACS_CONFIG_INVALID(
            "--pacs-config: timeout_s, retry_wait_s, attempts and move_port must be numbers"
        ) from None
    if attempts < 1 or any(v < 0 for v in numbers.values()) or not 0 < move_port < 65536:
        raise Code.PACS_CONFIG_INVALID(
            "--pacs-config: attempts must be >= 1, timeout_s and retry_wait_s >= 0, move_port a port number"
        )
    calling_aet = str(data.get("calling_aet", "MEDPIPE"))
    if not 0 < len(calling_aet) <= 16 or "\\" in calling_aet:
        raise Code.PACS_CONFIG_INVALID(f"--pacs-config: calling_aet {calling_aet!r} is not an AE title (1-16 characters)")
    for key in ("ca_bundle", "client_cert", "client_key"):
        value = ca_bundle if key == "ca_bundle" and ca_bundle else data.get(key)
        if value and not Path(value).is_file():
            raise Code.PACS_CONFIG_INVALID(f"{key} {value} is not a file")
    return PacsConfig(
        url=url, username=user or None, password=password if user else None, token=token or None,
        ca_bundle=ca_bundle or data.get("ca_bundle"), client_cert=data.get("client_cert"),
        client_key=data.get("client_key"), insecure=bool(insecure or data.get("insecure", False)),
        attempts=attempts, calling_aet=calling_aet, move_port=move_port, **numbers,
    )  # fmt: skip
