"""Where the archive is and how to log in: --source, --pacs-config, MEDPIPE_DICOMWEB_*; no secret shown."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from medpipe.errors import MedpipeError
from medpipe.pacs.config import PacsConfig, load_config, parse_source, redact

SECRET = "hunter2-CANARY"


def _code(fn, *args, **kwargs) -> MedpipeError:
    with pytest.raises(MedpipeError) as err:
        fn(*args, **kwargs)
    return err.value


def _config(tmp_path: Path, data: dict, mode: int = 0o600) -> Path:
    path = tmp_path / "pacs.json"
    path.write_text(json.dumps(data))
    os.chmod(path, mode)
    return path


def test_source_is_a_dicomweb_url() -> None:
    assert parse_source("dicomweb+http://127.0.0.1:8042/dicom-web/") == "http://127.0.0.1:8042/dicom-web"
    assert parse_source("DICOMweb+https://pacs.example.org/dcm4chee-arc/aets/DCM4CHEE/rs") == (
        "https://pacs.example.org/dcm4chee-arc/aets/DCM4CHEE/rs"
    )
    for bad in ("http://h:8042/dicom-web", "pacs.example.org", "dicomweb+ftp://h/x", "dicomweb+http:///x",
                "dicomweb+http://h:99999/x"):  # fmt: skip
        assert _code(parse_source, bad).code == "PACS_BAD_SOURCE", bad


def test_credentials_in_the_url_are_refused_without_being_repeated() -> None:
    err = _code(parse_source, f"dicomweb+https://alice:{SECRET}@pacs.example.org/rs")
    assert err.code == "PACS_BAD_SOURCE" and "MEDPIPE_DICOMWEB_USER" in str(err)
    assert SECRET not in str(err) and "alice" not in str(err)
    assert redact(f"https://alice:{SECRET}@pacs.example.org:8443/rs?token={SECRET}") == "https://pacs.example.org:8443/rs"


def test_environment_credentials_win_over_the_file(tmp_path: Path) -> None:
    path = _config(tmp_path, {"url": "https://pacs.example.org/rs", "username": "file-user", "password": SECRET,
                              "attempts": 2, "retry_wait_s": 0.5, "timeout_s": 5})  # fmt: skip
    cfg = load_config(None, path, environ={})
    assert (cfg.url, cfg.username, cfg.password, cfg.attempts, cfg.retry_wait_s, cfg.timeout_s) == (
        "https://pacs.example.org/rs", "file-user", SECRET, 2, 0.5, 5.0
    )
    env = {"MEDPIPE_DICOMWEB_USER": "env-user", "MEDPIPE_DICOMWEB_PASSWORD": "env-pw"}
    cfg = load_config("dicomweb+http://127.0.0.1:8042/dicom-web", path, environ=env)
    assert (cfg.url, cfg.username, cfg.password) == ("http://127.0.0.1:8042/dicom-web", "env-user", "env-pw")
    token = load_config("dicomweb+https://h/rs", environ={"MEDPIPE_DICOMWEB_TOKEN": SECRET})
    assert token.token == SECRET and token.auth == "token" and token.username is None
    # the config file may also come from the environment (cron jobs)
    assert load_config(None, environ={"MEDPIPE_DICOMWEB_CONFIG": str(path)}).username == "file-user"


def test_a_config_that_others_may_read_is_refused_when_it_holds_a_secret(tmp_path: Path) -> None:
    path = _config(tmp_path, {"url": "https://h/rs", "username": "u", "password": SECRET}, mode=0o644)
    err = _code(load_config, None, path, environ={})
    assert err.code == "PACS_CONFIG_INVALID" and "chmod 600" in str(err) and SECRET not in str(err)
    os.chmod(path, 0o600)
    assert load_config(None, path, environ={}).password == SECRET
    # no secret in it: any mode is fine
    assert load_config(None, _config(tmp_path, {"url": "https://h/rs"}, mode=0o644), environ={}).auth == "none"


@pytest.mark.parametrize(
    "data",
    [{"url": "https://h/rs", "pasword": "x"}, {"url": "https://h/rs", "attempts": 0},
     {"url": "https://h/rs", "retry_wait_s": "soon"}, {"url": "https://h/rs", "ca_bundle": "/no/such/ca.pem"},
     {"url": "https://h/rs", "username": "u"}, ["https://h/rs"]],
)  # fmt: skip
def test_bad_config_files_are_coded(tmp_path: Path, data) -> None:
    err = _code(load_config, None, _config(tmp_path, data), environ={})
    assert err.code == "PACS_CONFIG_INVALID", err
    (tmp_path / "bad.json").write_text("{not json")
    assert _code(load_config, None, tmp_path / "bad.json", environ={}).code == "PACS_CONFIG_INVALID"


def test_no_archive_at_all_is_a_bad_source(tmp_path: Path) -> None:
    assert _code(load_config, None, None, environ={}).code == "PACS_BAD_SOURCE"


def test_the_config_never_shows_its_secrets() -> None:
    cfg = PacsConfig("https://h/rs", username="u", password=SECRET, token=SECRET)
    assert SECRET not in repr(cfg) and SECRET not in str(cfg) and cfg.shown == "dicomweb+https://h/rs"


def test_a_dimse_source_names_the_called_ae_title(tmp_path: Path) -> None:
    assert parse_source("dimse://pacs.hospital.local:104/PACS") == "dimse://pacs.hospital.local:104/PACS"
    for bad in ("dimse://pacs:104", "dimse://pacs:104/", "dimse://me@pacs:104/PACS"):
        assert _code(parse_source, bad).code == "PACS_BAD_SOURCE", bad
    cfg = load_config(None, _config(tmp_path, {"url": "dimse://h:104/PACS", "calling_aet": "MP1", "move_port": 4000}),
                      environ={})  # fmt: skip
    assert (cfg.dimse, cfg.shown, cfg.calling_aet, cfg.move_port) == (True, "dimse://h:104/PACS", "MP1", 4000)
    for data in ({"calling_aet": "A" * 17}, {"move_port": 70000}, {"move_port": "high"}):
        err = _code(load_config, None, _config(tmp_path, {"url": "dimse://h:104/PACS", **data}), environ={})
        assert err.code == "PACS_CONFIG_INVALID", data
