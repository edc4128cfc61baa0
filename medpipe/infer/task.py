"""One series of ``medpipe infer`` as a unit of work: the same in the ``medpipe infer`` process and in a Dask worker.

The ``medpipe infer`` process decides what there is to do -- a :class:`SeriesTask` per series whose done
record does not match (:func:`done_earlier`) -- and owns the run's reports. Whoever runs a task, itself
(one process) or a Dask worker (``--workers``, ``--scheduler``; :mod:`medpipe.infer.cluster`), calls
:func:`run_series` with the models a :class:`ModelSpec` opens and hands back a :class:`SeriesOutcome`:
the series' results.csv row, its lesion rows and its failures.csv row, if any.

:func:`run_series` first removes whatever an earlier attempt left in the series folder (a process killed
mid-series leaves outputs without a done record, or a temporary file it was writing), then writes the
outputs and ``done.json`` last: a series is done exactly when its done record is there. A coded failure
(a ``MedpipeError``, out of memory) removes the folder and is returned as an outcome; anything else is a
bug and is raised.
"""

from __future__ import annotations

import ctypes
import gc
import resource
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medpipe.bundle.model import BundleModel
from medpipe.errors import Code, MedpipeError
from medpipe.infer.classifier import CropClassifier
from medpipe.infer.records import outputs_exist, read_done, write_done
from medpipe.infer.series import process_series
from medpipe.infer.sources import Source
from medpipe.privacy import scrub


@dataclass(frozen=True)
class ModelSpec:
    """What opens the models of a run; picklable, so a Dask worker opens the same ones (and keeps them)."""

    bundle: str
    weights: str | None = None
    device: str | None = None
    #: config overrides as (id, value) pairs, and the ids among them the user named (which must exist)
    overrides: tuple[tuple[str, Any], ...] = ()
    user_ids: tuple[str, ...] = ()
    classifier: str | None = None
    #: ``--backend`` and ``--precision`` (:mod:`medpipe.backends`)
    backend: str | None = None
    precision: str | None = None

    def open(self) -> tuple[BundleModel, CropClassifier | None]:
        model = BundleModel.open(
            self.bundle,
            weights=self.weights,
            device=self.device,
            overrides=dict(self.overrides),
            user_ids=self.user_ids,
            backend=self.backend,
            precision=self.precision,
        )
        clf = None if self.classifier is None else CropClassifier.open(self.classifier, model.device)
        return model, clf


@dataclass(frozen=True)
class SeriesTask:
    """One series to do: its source, its folder and the record its done.json must hold."""

    source: Source
    folder: Path
    record: Mapping[str, Any]
    formats: tuple[str, ...]
    show_paths: bool = False
    #: results.csv's ``source`` column (``--show-paths`` only)
    where: Mapping[str, str] = field(default_factory=dict)
    #: ``--anonymize-seg``: the key of the SEG's pseudonyms (:func:`medpipe.privacy.pseudonym_key`)
    pseudonym_key: bytes | None = None


@dataclass
class SeriesOutcome:
    """What a series adds to the run's reports; ``status`` is ``ok``, ``skipped`` or the failure code."""

    series: str
    status: str
    result: dict[str, Any]
    lesions: list[dict[str, Any]] = field(default_factory=list)
    failure: dict[str, str] | None = None

    def line(self) -> str | None:
        """The line ``medpipe infer`` prints for it (none for a series done earlier)."""
        if self.failure is not None:
            return f"{self.series}: {self.failure['code']}: {self.failure['message']}"
        if self.status == "ok":
            return f"{self.series}: {self.result['lesions']} lesion(s), {self.result['seconds']:.1f} s"
        return None


def release_memory() -> None:
    """Return freed heap memory to the OS between series (glibc ``malloc_trim``; a no-op elsewhere).

    numpy and torch free a series' large buffers, but glibc keeps freed heap pages (its mmap threshold
    rises after the first large frees), so without this the resident size crept up by ~25 MB per
    series (measured over 12 series, see docs/benchmarks.md).
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def failure_code(exc: Exception) -> tuple[str, str] | None:
    """(code, message) of a failure a run records and survives; None for a bug."""
    if isinstance(exc, MedpipeError):
        return exc.code, exc.message
    if out_of_memory(exc):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return Code.INFER_OUT_OF_MEMORY, f"out of memory ({type(exc).__name__}: {str(exc)[:200]})"
    return None


def _source_paths(source: Source) -> list[str]:
    paths = [str(source.path)] if source.path is not None else []
    return paths + ([s.path for s in source.stack.slices] if source.stack is not None else [])


def done_earlier(task: SeriesTask) -> SeriesOutcome | None:
    """The outcome of a series whose done record matches the task's and whose outputs exist, else None."""
    previous = read_done(task.folder)
    if previous is None or previous.get("record") != task.record or not outputs_exist(task.folder, previous):
        return None
    result = {**previous["result"], **task.where, "status": "ok", "note": "done earlier (skipped)"}
    return SeriesOutcome(task.source.id, "skipped", result, list(previous["lesions"]))


def failed(task: SeriesTask, code: str, message: str, seconds: float | None) -> SeriesOutcome:
    """A coded failure of a series: its folder removed (no half set of outputs), the message scrubbed of paths."""
    shutil.rmtree(task.folder, ignore_errors=True)
    source, code = task.source, str(code)
    if not task.show_paths:
        message = scrub(message, _source_paths(source), f"<series {source.id}>")
    result = {"series": source.id, "kind": source.kind, "modality": source.modality, "status": code,
              "seconds": None if seconds is None else round(seconds, 2), "note": message, **task.where}  # fmt: skip
    return SeriesOutcome(source.id, code, result, [], {"series": source.id, "code": code, "message": message})


def run_series(task: SeriesTask, model: BundleModel, clf: CropClassifier | None) -> SeriesOutcome:
    """Every output of one series, ``done.json`` last; a coded failure is returned, a bug raised."""
    t0 = time.perf_counter()
    # not done: what an earlier attempt left (outputs without a record, a killed write's temporary file)
    # must neither mix with the new outputs nor stay behind
    shutil.rmtree(task.folder, ignore_errors=True)
    try:
        if task.source.error is not None:
            raise task.source.error
        result, rows = process_series(task.source, model, clf, task.formats, task.folder, task.pseudonym_key)
    except Exception as exc:  # noqa: BLE001 - coded and out-of-memory errors are recorded; others re-raised
        coded = failure_code(exc)
        if coded is None:
            raise
        return failed(task, *coded, time.perf_counter() - t0)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    write_done(task.folder, task.record, result, rows)
    return SeriesOutcome(task.source.id, "ok", {**result, **task.where}, rows)
