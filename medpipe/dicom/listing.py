"""``medpipe dicom ls``: what a folder holds, as a table for people and as JSON for machines.

One row per stack (headers only, never pixel data): hashed id, modality, slice count, dimensions,
spacing (column x row x slice, mm), orientation and status (``ok`` or the code that refuses it), then
the reason for each refusal and the notes. Unreadable files are counted by code; the JSON lists them
by ``file-<hash>`` id (:mod:`medpipe.privacy`), with their paths relative to the folder only when
``show_paths``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from medpipe.dicom.scan import ScanResult
from medpipe.privacy import file_id, shown_path

HEADER = f"{'ID':<13} {'MOD':<4} {'SLICES':>6}  {'DIMS':<13} {'SPACING mm':<22} {'ORIENTATION':<24} STATUS"


def listing(result: ScanResult, *, show_paths: bool = False) -> dict[str, Any]:
    """The JSON form: file count, skipped files by reason, one object per series, the unreadable files."""
    unreadable = []
    for p in result.problems:
        item = {"file": file_id(p.path), "code": p.code, "message": p.message}
        if show_paths:
            item["path"] = shown_path(p.path, True, result.root)
        unreadable.append(item)
    return {
        "files": result.n_files,
        "skipped": dict(result.skipped),
        "series": [s.summary() for s in result.stacks],
        "unreadable": unreadable,
    }


def table(result: ScanResult) -> list[str]:
    """The lines of the human-readable table, its notes and a summary line."""
    rows = [s.summary() for s in result.stacks]
    lines = [HEADER]
    for r in rows:
        dims = "x".join(str(d) for d in r["dims"])
        spacing = "x".join("?" if v is None else f"{v:.3g}" for v in r["spacing"]) if r["spacing"] else "?"
        lines.append(
            f"{r['id']:<13} {r['modality']:<4} {r['slices']:>6}  {dims:<13} {spacing:<22} "
            f"{r['orientation']:<24} {r['status']}"
        )
    for r in rows:
        for line in ([f"{r['status']}: {r['message']}"] if r["message"] else []) + r["notes"]:
            lines.append(f"  {r['id']}: {line}")
    skipped = ", ".join(f"{n} {why}" for why, n in result.skipped.items())
    summary = f"{result.n_files} files, {len(rows)} series"
    if result.problems:
        codes = ", ".join(f"{n} {c}" for c, n in Counter(p.code for p in result.problems).items())
        summary += f", {len(result.problems)} unreadable ({codes}; --json lists them)"
    lines.append(summary + (f", skipped: {skipped}" if skipped else ""))
    return lines
