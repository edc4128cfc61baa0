"""What ``medpipe infer`` leaves on disk besides masks: per-series done records and the run's reports.

``OUT/<id>/done.json`` is written last for a series, after all its outputs: it holds the record that
must match for a re-run to skip the series (bundle name, version and weights hash, the input
fingerprint, the options that change outputs) with the series' result and lesion rows. Run level:
``results.csv`` (one row per series), ``lesions.csv``, ``candidates.csv`` (components below the
operating point), ``failures.csv`` (series, code, message) and ``summary.json``, rewritten after every series so an interrupted run still reports what it did.

``--shard K/N`` (:func:`parse_shard`, :func:`in_shard`) splits the series by a hash of their ids for
array jobs sharing one output folder: each shard writes its own run-level reports
(``results-K-of-N.csv``...), and a run without ``--shard`` afterwards skips every series done and
writes the combined ones.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medpipe.atomic import atomic_write_text
from medpipe.errors import Code
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
    suffix: str = "",
) -> None:
    """The run-level reports in ``out`` (``results<suffix>.csv``...: a shard's are its own, see ``--shard``)."""
    write_csv(out / f"results{suffix}.csv", results, RESULT_FIELDS + ((SOURCE_FIELD,) if show_paths else ()))
    write_csv(out / f"lesions{suffix}.csv", [r for r in lesions if not r.get("candidate")], LESION_FIELDS)
    write_csv(out / f"candidates{suffix}.csv", [r for r in lesions if r.get("candidate")], LESION_FIELDS)
    write_csv(out / f"failures{suffix}.csv", failures, FAILURE_FIELDS)
    atomic_write_text(out / f"summary{suffix}.json", json.dumps(summary, indent=1) + "\n")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"K/N"`` -> (K, N) with 1 <= K <= N (``INFER_BAD_SHARD`` otherwise); ``None`` for no sharding."""
    if text is None:
        return None
    try:
        k, n = (int(part) for part in str(text).split("/"))
    except ValueError:
        k = n = 0
    if not 1 <= k <= n:
        raise Code.INFER_BAD_SHARD(
            f"--shard {text!r} must be K/N with 1 <= K <= N (e.g. 1/4 ... 4/4: one per SLURM array task, "
            "K = $SLURM_ARRAY_TASK_ID + 1 for --array=0-3)"
        )
    return k, n


def in_shard(series_id: str, shard: tuple[int, int] | None) -> bool:
    """Whether a series belongs to shard K of N: by a hash of its id, so the split of one series never
    depends on which other series the input holds (a task started later sees the same split)."""
    if shard is None:
        return True
    k, n = shard
    return int(hashlib.sha256(series_id.encode("utf-8")).hexdigest(), 16) % n == k - 1
