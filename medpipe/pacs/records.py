"""What ``medpipe infer --source`` remembers between runs: study records and push records.

- ``OUT/studies/<study id>.json``: written when every selected series of a study has a done record (and
  no failures.csv row). It holds the study's *QIDO fingerprint* (SHA-256 of the selected series' UIDs with
  their sorted SOP Instance UIDs, from QIDO-RS: metadata only) and the done record of each of its series
  folders. A later run skips the study without retrieving it when the fingerprint is the same, every
  folder's ``done.json`` still holds that record with its outputs, and the record is the one this run
  would write (bundle version, weights, options). An instance added to or replaced in the archive
  changes the fingerprint, so the study is retrieved again (its unchanged series are still skipped by
  their done records).
- ``OUT/<series id>/push.json``: one per pushed SEG: the archive (redacted URL), the SEG file's
  SHA-256, its SOP Instance UID, ``status`` (``pushed`` or the failure code), attempts, time, message.
  A SEG counts as pushed to an archive when its record says ``pushed`` there with the same SHA-256;
  every other SEG of the run's studies, and every SEG whose push failed in an earlier run, is pushed.
  A series processed again (new bundle version...) has its folder cleared, push record included.

The ids are hashes (:func:`medpipe.privacy.series_id` of the UIDs); no UID is printed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medpipe.atomic import atomic_write_text
from medpipe.infer.records import outputs_exist, read_done
from medpipe.privacy import series_id
from medpipe.tables import write_csv

STUDIES_DIR, PUSH = "studies", "push.json"
STUDY_FIELDS = ("study", "series", "modality", "instances", "status", "message")
PUSH_FIELDS = ("series", "status", "attempts", "time_utc", "archive", "message")
#: series-specific keys of a done record; the rest is the run's (bundle, weights, options)
SERIES_KEYS = ("series", "fingerprint")


def study_id(study_uid: str) -> str:
    return "st-" + series_id(study_uid)


def qido_fingerprint(series: Mapping[str, Sequence[str]]) -> str:
    """SHA-256 of ``{series UID: SOP Instance UIDs}`` (order-free): changes when an instance does."""
    lines = [f"{uid}:{','.join(sorted(sops))}" for uid, sops in sorted(series.items())]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def series_folders(out: Path, series_uid: str) -> list[Path]:
    """The output folders of a series: ``<id>``, or ``<id>.1``, ``<id>.2``... for a series split in stacks."""
    sid = series_id(series_uid)
    return sorted(p for p in out.glob(f"{sid}*") if p.is_dir() and (p.name == sid or p.name.startswith(sid + ".")))


def run_part(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in SERIES_KEYS}


def done_folders(out: Path, series_uids: Sequence[str], run: Mapping[str, Any], failed: set[str]) -> dict[str, Any] | None:
    """``{folder: done record}`` when every series has a folder done by this run's record and none failed; else None."""
    records: dict[str, Any] = {}
    for uid in series_uids:
        folders = series_folders(out, uid)
        if not folders or any(f.name in failed for f in folders) or series_id(uid) in failed:
            return None
        for folder in folders:
            done = read_done(folder)
            if done is None or run_part(done.get("record", {})) != dict(run) or not outputs_exist(folder, done):
                return None
            records[folder.name] = done["record"]
    return records


def write_study(out: Path, study: str, fingerprint: str, records: Mapping[str, Any]) -> None:
    path = out / STUDIES_DIR / f"{study}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"qido": fingerprint, "series": records}, indent=1) + "\n")


def study_done(out: Path, study: str, fingerprint: str, run: Mapping[str, Any]) -> list[str] | None:
    """The series folders of a study done earlier with this QIDO fingerprint and run record, else None."""
    try:
        saved = json.loads((out / STUDIES_DIR / f"{study}.json").read_text())
    except (OSError, ValueError):
        return None
    if saved.get("qido") != fingerprint or not saved.get("series"):
        return None
    for name, record in saved["series"].items():
        done = read_done(out / name)
        if done is None or done.get("record") != record or run_part(record) != dict(run):
            return None
        if not outputs_exist(out / name, done):
            return None
    return sorted(saved["series"])


def read_push(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / PUSH).read_text())
    except (OSError, ValueError):
        return None


def write_push(folder: Path, record: Mapping[str, Any]) -> None:
    atomic_write_text(folder / PUSH, json.dumps(dict(record), indent=1) + "\n")


def pending_pushes(out: Path, archive: str) -> list[Path]:
    """Series folders whose last push to ``archive`` failed (any earlier run): retried whatever the query."""
    records = [(p.parent, read_push(p.parent) or {}) for p in out.glob(f"*/{PUSH}")]
    return sorted(folder for folder, r in records if r.get("archive") == archive and r.get("status") != "pushed")


def write_pushes_csv(out: Path) -> list[dict[str, Any]]:
    """``OUT/pushes.csv`` from every push record in ``out`` (all runs); returns its rows."""
    rows = [{"series": p.parent.name, **(read_push(p.parent) or {})} for p in sorted(out.glob(f"*/{PUSH}"))]
    write_csv(out / "pushes.csv", rows, PUSH_FIELDS)
    return rows


def write_studies_csv(out: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    write_csv(out / "studies.csv", rows, STUDY_FIELDS)
