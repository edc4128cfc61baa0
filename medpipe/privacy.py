"""The one rule for patient data in what medpipe prints and writes.

Folder and file names of medical data often carry a patient's name or record number, and DICOM
headers hold names, IDs and dates. Nothing medpipe prints or writes names them by default:

* a DICOM series is named by a short hash of its SeriesInstanceUID (:func:`series_id`);
* a file or folder by ``file-`` + a short hash of its absolute path (:func:`file_id`);
* a case of a manifest by its ``case_id`` when the manifest gives one, its place in a public archive
  (``test/12`` of a MedMNIST npz), else ``case-`` + a short hash of its image path (:func:`case_id`);
* an error message that quotes a path is scrubbed of it before it goes into a report (:func:`scrub`).

Paths appear only when the user asks with ``--show-paths`` (:func:`shown_path`), relative to the
input folder where they lie inside it. Commands that follow this rule: ``medpipe dicom ls``,
``convert``, ``infer``, ``evaluate``, ``explain`` and ``train`` (tests/integration/test_patient_data.py
plants canaries in headers and names and scans every output). DICOM objects medpipe writes (a SEG)
carry the patient and study modules of their source because the standard requires it, unless
``medpipe infer --anonymize-seg`` replaces them by a :func:`pseudonym` (docs/inference.md).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

HASH_LENGTH = 10
#: the secret of the pseudonyms of one output folder (``medpipe infer --anonymize-seg``)
PSEUDONYM_KEY_FILE = "pseudonym.key"


def short_hash(text: str, length: int = HASH_LENGTH) -> str:
    """A SHA-256 prefix of ``text``: stable, short, and not reversible to the text."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def series_id(series_uid: str, length: int = HASH_LENGTH) -> str:
    """The name of a DICOM series in every output: a hash of its SeriesInstanceUID."""
    return short_hash(series_uid, length)


def file_id(path: str | os.PathLike[str]) -> str:
    """The name of a file or folder in every output: ``file-`` + a hash of its absolute path."""
    return "file-" + short_hash(str(Path(path).resolve()))


def case_id(entry: Mapping[str, Any]) -> str:
    """The name of a manifest case in reports (see the module docstring)."""
    if entry.get("case_id") not in (None, ""):
        return str(entry["case_id"])
    if "npz_index" in entry:
        return f"{entry.get('npz_split', '')}/{entry['npz_index']}"
    return "case-" + short_hash(str(entry.get("image", "")))


def shown_path(path: str | os.PathLike[str], show: bool, base: str | os.PathLike[str] | None = None) -> str | None:
    """``path`` for a report when ``show`` (relative to ``base`` if inside it), else None."""
    if not show:
        return None
    p = Path(path)
    if base is not None:
        try:
            return str(p.resolve().relative_to(Path(base).resolve()))
        except ValueError:
            pass
    return str(p)


def scrub(message: str, paths: Iterable[str | os.PathLike[str]], replacement: str) -> str:
    """``message`` with every path of ``paths``, its folder and its file name replaced by ``replacement``."""
    names: set[str] = set()
    for path in paths:
        p = Path(path)
        names |= {str(p), str(p.resolve()), os.path.dirname(str(p)), p.name}
    for name in sorted((n for n in names if n and n not in (".", os.sep)), key=len, reverse=True):
        message = message.replace(name, replacement)
    return message


def pseudonym(patient_id: str, key: bytes) -> str:
    """``anon-`` + an HMAC-SHA256 prefix of ``patient_id`` under ``key``: one patient, one pseudonym for a
    key; without the key neither reversible nor checkable by hashing guessed IDs (a plain hash of a
    record number is, the space of record numbers being small)."""
    return "anon-" + hmac.new(key, patient_id.encode(), hashlib.sha256).hexdigest()[:HASH_LENGTH]


def pseudonym_key(folder: str | os.PathLike[str]) -> bytes:
    """The key of the pseudonyms written into ``folder``: ``folder/pseudonym.key`` (32 random bytes, hex,
    readable by its owner only), made on first use, so re-runs, shards and Dask workers writing into
    one folder give a patient one pseudonym. Whoever holds the key can link pseudonyms to guessed IDs:
    share the SEGs without it; delete it and the pseudonyms stay unlinkable to anyone."""
    path = Path(folder) / PSEUDONYM_KEY_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{PSEUDONYM_KEY_FILE}-{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fp:
            fp.write(secrets.token_hex(32) + "\n")
        try:
            os.link(tmp, path)  # complete or absent: a process starting at once reads the first key made
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return bytes.fromhex(path.read_text().strip())
