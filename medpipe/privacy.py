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
``convert``, ``infer`` and ``evaluate``. DICOM objects medpipe writes (a SEG) carry the patient and
study modules of their source because the standard requires it (docs/inference.md).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

HASH_LENGTH = 10


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
