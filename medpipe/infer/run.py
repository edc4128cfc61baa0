"""``medpipe infer``: a segmentation bundle over every series of a DICOM tree or NIfTI folder, nothing lost.

Per series, one at a time (nothing of a series stays in memory once it is written): load it
(:mod:`medpipe.infer.sources`), segment it with the bundle's shipped prediction path
(:class:`~medpipe.bundle.model.BundleModel`, the same one ``medpipe evaluate`` scores), write its
outputs (:mod:`medpipe.infer.series`) and last its done record (:mod:`medpipe.infer.records`).

A re-run skips a series whose record matches (same bundle version and weights, same input, same
output options) and whose outputs exist, and processes the rest. A series that fails with a coded
error, an unselected modality or out-of-memory gets a failures.csv row and the run goes on; anything
else is a bug and stops the run (finished series keep their records, so the re-run resumes). Every
name in the outputs is a hashed id; error messages are scrubbed of paths (:mod:`medpipe.privacy`)
unless ``show_paths``.
"""

from __future__ import annotations

import ctypes
import gc
import resource
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from medpipe import __version__
from medpipe.bundle.model import BundleModel
from medpipe.dicom.geometry import DEFAULT_OPTIONS, AssemblyOptions
from medpipe.errors import EXIT_PARTIAL, Code, MedpipeError, look_up
from medpipe.infer.classifier import CropClassifier
from medpipe.infer.records import in_shard, outputs_exist, parse_shard, read_done, write_done, write_reports
from medpipe.infer.series import process_series
from medpipe.infer.sources import Source, discover, parse_select, refuse_unselected
from medpipe.privacy import scrub

FORMATS = ("nifti", "dicom-seg")


@dataclass(frozen=True)
class InferOptions:
    """Everything about a ``medpipe infer`` run except what (bundle) runs on what (input) into where (output)."""

    #: mask formats to write: ``nifti``, ``dicom-seg``
    formats: Sequence[str] = FORMATS
    #: ``modality=CT`` items (default: the bundle's input modality)
    select: Sequence[str] = ()
    #: a classifier bundle whose probability is added for a crop around each lesion
    classifier: str | Path | None = None
    #: checkpoint or training-run folder (default: the bundle's shipped weights)
    weights: str | Path | None = None
    workers: int | None = None
    device: str | None = None
    #: config overrides and the ids among them the user named (which must exist)
    overrides: Mapping[str, Any] = field(default_factory=dict)
    user_ids: Sequence[str] = ()
    assembly: AssemblyOptions = DEFAULT_OPTIONS
    #: write input paths into results.csv and leave error messages unscrubbed
    show_paths: bool = False
    progress: bool = True
    #: ``"K/N"``: only the series of shard K of N (by a hash of the series id), for array jobs
    shard: str | None = None


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


def _failure_code(exc: Exception) -> tuple[str, str] | None:
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


def infer(
    bundle: str | Path,
    input_path: str | Path,
    output: str | Path,
    options: InferOptions = InferOptions(),
    *,
    echo: Callable[[str], None] = print,
    after_series: Callable[[str, str], None] | None = None,
) -> dict[str, Any]:
    """Run ``bundle`` on every series of ``input_path`` into ``output``; returns summary.json."""
    formats = tuple(dict.fromkeys(f.strip().lower() for f in options.formats if f.strip()))
    for f in formats:
        look_up(f, FORMATS, what="--format", code=Code.INFER_BAD_FORMAT)
    selected = parse_select(tuple(options.select))
    shard = parse_shard(options.shard)
    suffix = "" if shard is None else f"-{shard[0]}-of-{shard[1]}"
    out, root = Path(output), Path(input_path)
    if root.is_dir() and out.resolve().is_relative_to(root.resolve()):
        raise Code.INFER_OUTPUT_INSIDE_INPUT(
            f"--output {out} is inside --input {input_path}: a re-run would take the outputs for inputs; "
            "choose an output folder outside the input tree"
        )
    if options.workers:
        torch.set_num_threads(int(options.workers))
    model = BundleModel.open(
        bundle,
        weights=options.weights,
        device=options.device,
        overrides=options.overrides,
        user_ids=options.user_ids,
    )
    if not selected and model.modality:
        selected = {"modality": {model.modality}}
    clf = None if options.classifier is None else CropClassifier.open(options.classifier, model.device)
    found = discover(input_path, options.assembly, workers=options.workers)
    if shard is not None:
        found.sources[:] = [s for s in found.sources if in_shard(s.id, shard)]
        found.unreadable[:] = [u for u in found.unreadable if in_shard(u[0], shard)]
    for source in found.sources:
        refuse_unselected(source, selected)
    out.mkdir(parents=True, exist_ok=True)
    record_base = {
        "bundle": model.name,
        "bundle_folder": model.layout.root.name,
        "bundle_version": model.version,
        "model_sha256": model.weights.sha256,
        "formats": sorted(formats),
        "overrides": {k: str(v) for k, v in sorted(dict(options.overrides).items())},
        "classifier": None if clf is None else [clf.model.name, clf.model.version, clf.model.weights.sha256],
    }
    echo(
        f"infer {model.layout.root.name} {model.version} on {len(found.sources)} series"
        f"{'' if shard is None else f' (shard {shard[0]} of {shard[1]})'} "
        f"({', '.join(sorted(selected.get('modality', []))) or 'any modality'}) on {model.device}; "
        f"weights {model.describe_weights()}"
    )
    results: list[dict[str, Any]] = []
    lesions: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = [
        {"series": fid, "code": code, "message": "file cannot be read as DICOM: " + msg.split(": ", 1)[-1]}
        for fid, code, msg in found.unreadable
    ]
    counts = {"done": 0, "skipped": 0, "failed": 0}
    start = time.perf_counter()

    def summary() -> dict[str, Any]:
        return {
            "medpipe": __version__,
            **{k: v for k, v in record_base.items() if k != "overrides"},
            "weights": "shipped" if model.weights.shipped else "other (--weights)",
            "series": len(found.sources),
            **counts,
            "unreadable_files": len(found.unreadable),
            "lesions": sum(1 for r in lesions if not r.get("candidate")),
            "candidates": sum(1 for r in lesions if r.get("candidate")),
            "seconds": round(time.perf_counter() - start, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "failures": sorted({f["code"] for f in failures}),
        }

    def finish(series: str, status: str) -> None:
        release_memory()  # nothing of this series is referenced any more
        write_reports(out, summary(), results, lesions, failures, show_paths=options.show_paths, suffix=suffix)
        if after_series:
            after_series(series, status)

    try:
        bar = tqdm(found.sources, desc="infer", unit="series", disable=not options.progress, leave=False)
        for source in bar:
            bar.set_postfix_str(source.id)
            folder = out / source.id
            where = {"source": source.location(root)} if options.show_paths else {}
            record = {**record_base, "series": source.id, "fingerprint": source.fingerprint}
            previous = read_done(folder)
            if previous is not None and previous.get("record") == record and outputs_exist(folder, previous):
                results.append(
                    {**previous["result"], **where, "status": "ok", "note": "done earlier (skipped)"}
                )
                lesions += previous["lesions"]
                counts["skipped"] += 1
                finish(source.id, "skipped")
                continue
            t0 = time.perf_counter()
            (folder / "done.json").unlink(missing_ok=True)  # a stale record must not vouch for new outputs
            try:
                if source.error is not None:
                    raise source.error
                result, rows = process_series(source, model, clf, formats, folder)
            except Exception as exc:  # noqa: BLE001 - coded and out-of-memory errors are recorded; others re-raised
                failed = _failure_code(exc)
                if failed is None:
                    raise
                shutil.rmtree(folder, ignore_errors=True)  # no half set of outputs for a failed series
                code, message = failed
                if not options.show_paths:
                    message = scrub(message, _source_paths(source), f"<series {source.id}>")
                failures.append({"series": source.id, "code": code, "message": message})
                results.append(
                    {"series": source.id, "kind": source.kind, "modality": source.modality, "status": code,
                     "seconds": round(time.perf_counter() - t0, 2), "note": message, **where}
                )  # fmt: skip
                counts["failed"] += 1
                echo(f"{source.id}: {code}: {message}")
                finish(source.id, code)
                continue
            result["seconds"] = round(time.perf_counter() - t0, 2)
            result["peak_rss_mb"] = round(peak_rss_mb(), 1)
            write_done(folder, record, result, rows)
            results.append({**result, **where})
            lesions += rows
            counts["done"] += 1
            echo(f"{source.id}: {result['lesions']} lesion(s), {result['seconds']:.1f} s")
            finish(source.id, "ok")
    finally:
        final = summary()
        write_reports(out, final, results, lesions, failures, show_paths=options.show_paths, suffix=suffix)
    echo(
        f"{counts['done']} done, {counts['skipped']} skipped (done earlier), {counts['failed']} failed "
        f"in {final['seconds']:.0f} s; reports in {out} (results{suffix}.csv, lesions{suffix}.csv, "
        f"failures{suffix}.csv, summary{suffix}.json)"
    )
    return final


def outcome(summary: Mapping[str, Any], output: str | Path) -> int:
    """Exit status of ``medpipe infer``: 0 all done, EXIT_PARTIAL some failed; raises when nothing was done."""
    if summary["done"] + summary["skipped"] == 0:
        raise Code.INFER_NOTHING_DONE(
            f"no series could be processed ({', '.join(summary['failures']) or 'nothing found'}); see "
            f"{Path(output) / 'failures.csv'}"
        )
    return EXIT_PARTIAL if summary["failed"] or summary["unreadable_files"] else 0
