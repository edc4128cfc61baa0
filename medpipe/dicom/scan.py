"""Series discovery: walk a folder tree, read headers only, and group images into stacks.

A *stack* is what becomes one volume: the images of one SeriesInstanceUID that share an orientation,
an image size and (for enhanced multi-frame objects) a file and StackID. Scanners put several stacks in
one series (a 3-plane localizer, a reformat written with the source UID), so a series that mixes
orientations or sizes is split rather than merged, and localizer/scout images are dropped from a stack
with a note. Every stack is validated from its headers at once, so ``medpipe dicom ls`` shows which
stacks will load and, for those that will not, the code and the reason -- without reading pixel data.

Stacks are named by a short hash of the SeriesInstanceUID (``3f2a9c1b07``, ``3f2a9c1b07.2`` when a
series splits): the UID itself, and any patient identity, never appear in messages or file names.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medpipe.dicom.geometry import (
    DEFAULT_OPTIONS,
    AssemblyOptions,
    StackGeometry,
    orientation_label,
    stack_geometry,
)
from medpipe.dicom.headers import FileProblem, FileResult, SliceHeader, read_file, transfer_syntax_problem
from medpipe.dicom.values import check_values
from medpipe.errors import Code, DicomError
from medpipe.privacy import series_id

#: Below this many files, reading headers in one process beats starting workers (measured: two workers
#: win from about 64 files; the pool costs 15-20 ms to start).
PARALLEL_THRESHOLD = 64


@dataclass
class Stack:
    """One would-be volume: its slices (unsorted), validation status and notes."""

    id: str
    series_uid: str = field(repr=False)
    slices: list[SliceHeader] = field(repr=False)
    notes: list[str] = field(default_factory=list)
    error: DicomError | None = None
    geometry: StackGeometry | None = field(default=None, repr=False)
    validated_with: AssemblyOptions | None = field(default=None, repr=False)

    @property
    def modality(self) -> str:
        return self.slices[0].modality

    @property
    def ok(self) -> bool:
        return self.error is None

    def summary(self) -> dict[str, Any]:
        """One ``dicom ls`` row: nothing identifying, only the hashed id and acquisition geometry."""
        first = self.slices[0]
        spacing = None
        if self.geometry is not None:
            g = self.geometry
            spacing = [round(g.pixel_spacing[1], 4), round(g.pixel_spacing[0], 4), round(g.slice_spacing, 4)]
        elif first.pixel_spacing is not None:
            spacing = [round(first.pixel_spacing[1], 4), round(first.pixel_spacing[0], 4), None]
        from pydicom.uid import UID

        return {
            "id": self.id,
            "modality": self.modality,
            "slices": len(self.slices),
            "dims": [first.columns, first.rows, len(self.slices)],
            "spacing": spacing,
            "orientation": orientation_label(first.orientation) if first.orientation else "unknown",
            "status": "ok" if self.error is None else self.error.code,
            "message": None if self.error is None else self.error.message,
            "notes": list(self.notes),
            "transfer_syntax": UID(first.transfer_syntax).name,
            "files": len({s.path for s in self.slices}),
        }


@dataclass
class ScanResult:
    """Everything found under a folder: stacks, unusable files, and what was skipped and why."""

    root: str
    stacks: list[Stack]
    problems: list[FileProblem]
    skipped: Counter[str]
    n_files: int

    def get(self, stack_id: str) -> Stack:
        for stack in self.stacks:
            if stack.id == stack_id:
                return stack
        matches = [s for s in self.stacks if s.id.startswith(stack_id)] if len(stack_id) >= 4 else []
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(s.id for s in self.stacks) or "none"
        raise Code.DICOM_SERIES_NOT_FOUND(
            f"no series {stack_id!r} under this folder (found: {known})"
        )

    def single(self) -> Stack:
        """The only loadable stack, or a coded error that lists the choices."""
        loadable = [s for s in self.stacks if s.ok]
        if len(loadable) == 1:
            return loadable[0]
        if not loadable:
            if len(self.stacks) == 1:
                raise self.stacks[0].error  # type: ignore[misc]
            raise Code.DICOM_NO_SERIES(self.nothing_usable_message())
        rows = "; ".join(f"{s.id} ({s.modality}, {len(s.slices)} slices)" for s in loadable)
        raise Code.DICOM_MULTIPLE_SERIES(
            f"{len(loadable)} series can be loaded from this folder: {rows}; choose one by its id "
            "(`medpipe dicom ls` lists them)",
        )

    def nothing_usable_message(self) -> str:
        parts = [f"{self.n_files} files"]
        if self.problems:
            parts.append(
                f"{len(self.problems)} unreadable ({Counter(p.code for p in self.problems).most_common(1)[0][0]})"
            )
        parts += [f"{n} {why}" for why, n in self.skipped.items()]
        parts += [f"series {s.id}: {s.error.code}" for s in self.stacks if s.error is not None]
        return "no loadable DICOM series: " + ", ".join(parts)


def iter_files(root: str) -> list[str]:
    """All candidate files under ``root`` (or ``root`` itself), skipping hidden files and folders."""
    if os.path.isfile(root):
        return [root]
    out = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [os.path.join(folder, f) for f in sorted(files) if not f.startswith(".")]
    return out


def _read_chunk(paths: Sequence[str]) -> list[FileResult]:
    return [read_file(p) for p in paths]


def read_headers(paths: Sequence[str], workers: int | None = None) -> list[FileResult]:
    """Read every file's header, in worker processes when there are many (header parsing is CPU-bound)."""
    workers = workers or os.cpu_count() or 1
    # A daemon process (a torch DataLoader worker, say) may not start children: read in-process there.
    if workers <= 1 or len(paths) < PARALLEL_THRESHOLD or multiprocessing.current_process().daemon:
        return _read_chunk(paths)
    n_chunks = workers * 4
    chunks = [paths[i::n_chunks] for i in range(n_chunks)]
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        results = [r for chunk in pool.map(_read_chunk, chunks) for r in chunk]
    order = {p: i for i, p in enumerate(paths)}
    return sorted(results, key=lambda r: order[r.path])


def _orientation_clusters(slices: Iterable[SliceHeader], tol: float = 1e-3) -> dict[int, list[SliceHeader]]:
    reps: list[np.ndarray | None] = []
    groups: dict[int, list[SliceHeader]] = defaultdict(list)
    for s in slices:
        ori = None if s.orientation is None else np.asarray(s.orientation)
        if ori is not None and not np.isfinite(ori).all():
            ori = None  # damaged (NaN) cosines cluster with the absent ones; the stack is then refused
        for i, rep in enumerate(reps):
            if (rep is None and ori is None) or (
                rep is not None and ori is not None and np.abs(rep - ori).max() <= tol
            ):
                groups[i].append(s)
                break
        else:
            reps.append(ori)
            groups[len(reps) - 1].append(s)
    return groups


def group_stacks(
    slices: Sequence[SliceHeader], root: str = ""
) -> list[tuple[str, list[SliceHeader], list[str]]]:
    """Split slices into stacks: (series_uid, slices, notes), in a stable order."""
    by_series: dict[str, list[SliceHeader]] = defaultdict(list)
    seen: set[tuple[Any, ...]] = set()
    duplicates: Counter[str] = Counter()
    for s in slices:
        # The same instance copied twice (same UID *and* place); a UID reused for different images
        # (careless de-identification) is kept: dropping those would silently lose slices.
        key = (s.sop_instance_uid, s.position, s.frame, s.rows, s.columns)
        if key in seen:
            duplicates[s.series_uid] += 1
            continue
        seen.add(key)
        by_series[s.series_uid].append(s)

    # A series without SeriesInstanceUID (broken de-identification) is grouped by folder, never merged
    # with another folder's; the note says so.
    no_uid = by_series.pop("", [])
    for s in no_uid:
        folder = os.path.relpath(os.path.dirname(s.path), root) if root else os.path.dirname(s.path)
        by_series[f"(no SeriesInstanceUID) {folder}"].append(s)

    out = []
    for uid, members in by_series.items():
        notes = (
            ["SeriesInstanceUID is empty: the images of one folder are taken as one series"]
            if uid.startswith("(no SeriesInstanceUID)")
            else []
        )
        if duplicates[uid]:
            notes.append(f"{duplicates[uid]} duplicate file(s) of the same instance ignored")
        localizers = [s for s in members if s.is_localizer]
        if localizers and len(localizers) < len(members):
            members = [s for s in members if not s.is_localizer]
            notes.append(f"{len(localizers)} localizer/scout image(s) dropped")
        groups: dict[tuple[Any, ...], list[SliceHeader]] = defaultdict(list)
        for s in members:
            groups[(s.stack_key, s.rows, s.columns)].append(s)
        parts = []
        for group in groups.values():
            parts += list(_orientation_clusters(group).values())
        if len(parts) > 1:
            what = []
            if len({(s.rows, s.columns) for s in members}) > 1:
                what.append("image sizes")
            if len({s.stack_key for s in members}) > 1:
                what.append("multi-frame objects/stacks")
            if len(_orientation_clusters(members)) > 1:
                what.append("orientations")
            notes.append(f"series split into {len(parts)} stacks (it mixes {' and '.join(what)})")
        parts.sort(key=lambda p: (-len(p), min(s.path for s in p), p[0].frame or 0))
        out += [(uid, part, list(notes)) for part in parts]
    return out


def validate_stack(stack: Stack, options: AssemblyOptions) -> None:
    """Set ``stack.error`` / ``stack.geometry`` from headers alone (no pixel data is read)."""
    slices = stack.slices
    stack.notes = [n for n in stack.notes if not n.startswith("DICOM_")]  # geometry notes of an earlier pass
    try:
        if all(s.is_localizer for s in slices):
            raise Code.DICOM_LOCALIZER("localizer/scout images only, not a volume")
        problems = Counter(s.problem for s in slices if s.problem)
        if problems:
            code, count = problems.most_common(1)[0]
            what = {
                Code.DICOM_NO_PIXEL_DATA: "have no Pixel Data element",
                Code.DICOM_CORRUPT_FILE: "are truncated (Pixel Data shorter than Rows x Columns x Frames)",
                Code.DICOM_NO_GEOMETRY: "are multi-frame images without per-frame positions (no functional groups)",
            }.get(code, "are unusable")
            raise Code(code)(f"{count} of {len(slices)} images {what}")
        for syntax in sorted({s.transfer_syntax for s in slices}):  # one image of another syntax is enough
            ts_problem = transfer_syntax_problem(syntax)
            if ts_problem:
                raise Code.DICOM_UNSUPPORTED_TRANSFER_SYNTAX(ts_problem)
        if slices[0].samples_per_pixel != 1:
            raise Code.DICOM_UNSUPPORTED_IMAGE(
                f"{slices[0].samples_per_pixel} samples per pixel (colour); only greyscale volumes are supported",
            )
        check_values(slices)  # NaN / zero / negative numbers: refused before any is used
        missing = [
            s for s in slices if s.position is None or s.orientation is None or s.pixel_spacing is None
        ]
        if missing:
            raise Code.DICOM_NO_GEOMETRY(
                f"{len(missing)} of {len(slices)} images lack ImagePositionPatient, ImageOrientationPatient or "
                "PixelSpacing, so their place in the patient is unknown",
            )
        first = slices[0]
        stack.geometry = stack_geometry(
            np.array([s.position for s in slices]),
            np.array([s.orientation for s in slices]),
            np.array([s.pixel_spacing for s in slices]),
            options,
            single_slice_spacing=first.spacing_between_slices or first.slice_thickness,
        )
        stack.notes += list(stack.geometry.notes)
        stack.error = None
    except DicomError as e:
        stack.error = e
        stack.geometry = None
    stack.validated_with = options


def scan(root: str, options: AssemblyOptions = DEFAULT_OPTIONS, *, workers: int | None = None) -> ScanResult:
    """Find and validate every DICOM stack under ``root`` (a folder tree or one file)."""
    if not os.path.exists(root):
        raise Code.INPUT_NOT_FOUND(f"{root} does not exist")
    paths = iter_files(root)
    results = read_headers(paths, workers)
    problems = [r.problem for r in results if r.problem is not None]
    skipped = Counter(r.skipped for r in results if r.skipped)
    slices = [s for r in results for s in r.slices]
    stacks: list[Stack] = []
    grouped = group_stacks(slices, root if os.path.isdir(root) else os.path.dirname(root))
    per_uid: Counter[str] = Counter(uid for uid, _, _ in grouped)
    index: Counter[str] = Counter()
    for uid, members, notes in grouped:
        index[uid] += 1
        sid = series_id(uid) + (f".{index[uid]}" if per_uid[uid] > 1 else "")
        stack = Stack(sid, uid, members, notes)
        validate_stack(stack, options)
        stacks.append(stack)
    stacks.sort(key=lambda s: s.id)
    return ScanResult(root, stacks, problems, skipped, len(paths))
