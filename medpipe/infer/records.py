"""What ``medpipe infer`` leaves on disk besides masks: per-series done records and the run's reports.

``OUT/<id>/done.json`` is written last for a series, after all its outputs: it holds the record that
must match for a re-run to skip the series (bundle name, version and weights hash, the input
fingerprint, the options that change outputs) with the series' result and lesion rows. Run level:
``results.csv`` (one row per series), ``lesions.csv``, ``candidates.csv`` (components below the
operating point), ``failures.csv`` (series, code, message) and ``summary.json``, rewritten after every series so an interrupted run still reports what it did.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medpipe.atomic import atomic_write_text
from medpipe.tables import write_csv

RESULT_FIELDS = (
    "series", "kind", "modality", "status", "shape", "spacing_mm", "lesions", "candidates", "lesion_volume_mm3",
    "seconds", "peak_rss_mb", "mask", "seg", "preview", "note",
)  # fmt: skip
LESION_FIELDS = (
    "series", "label", "label_name", "lesion", "score", "voxels", "volume_mm3", "diameter_mm",
    "centroid_lps_x", "centroid_lps_y", "centroid_lps_z", "mean_intensity", "intensity_unit",
    "classifier_probability",
)  # fmt: skip
FAILURE_FIELDS = ("series", "code", "message")
#: added to results.csv with --show-paths only
SOURCE_FIELD = "source"
DONE = "done.json"


def read_done(folder: Path) -> dict[str, Any] | None:
    """The done record of a series folder, or None (absent or torn)."""
    try:
        return json.loads((folder / DONE).read_text())
    except (OSError, ValueError):
        return None


def outputs_exist(folder: Path, done: Mapping[str, Any]) -> bool:
    """Every output file a done record names is still there."""
    result = done.get("result", {})
    names = [result.get(k) for k in ("mask", "seg", "preview", "lesion_table", "candidate_table")]
    return all((folder / n).is_file() for n in names if n)


def write_done(
    folder: Path, record: Mapping[str, Any], result: Mapping[str, Any], rows: Sequence[Any]
) -> None:
    atomic_write_text(
        folder / DONE, json.dumps({"record": record, "result": result, "lesions": rows}, indent=1) + "\n"
    )


def write_reports(
    out: Path,
    summary: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    lesions: Sequence[Mapping[str, Any]],
    failures: Sequence[Mapping[str, Any]],
    *,
    show_paths: bool = False,
) -> None:
    """The run-level reports in ``out``."""
    write_csv(out / "results.csv", results, RESULT_FIELDS + ((SOURCE_FIELD,) if show_paths else ()))
    write_csv(out / "lesions.csv", [r for r in lesions if not r.get("candidate")], LESION_FIELDS)
    write_csv(out / "candidates.csv", [r for r in lesions if r.get("candidate")], LESION_FIELDS)
    write_csv(out / "failures.csv", failures, FAILURE_FIELDS)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
