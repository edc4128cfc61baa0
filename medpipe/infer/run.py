"""``medpipe infer``: a segmentation bundle over every series of a DICOM tree or NIfTI folder, nothing lost.

Per series (:mod:`medpipe.infer.task`; nothing of a series stays in memory once it is written): load it
(:mod:`medpipe.infer.sources`), segment it with the bundle's shipped prediction path
(:class:`~medpipe.bundle.model.BundleModel`, the same one ``medpipe evaluate`` scores), write its
outputs (:mod:`medpipe.infer.series`) and last its done record (:mod:`medpipe.infer.records`). The
series run one after another in this process, or with ``workers`` / ``scheduler`` on a Dask cluster
(:mod:`medpipe.infer.cluster`); either way this process writes the run's reports as each series ends.

A re-run skips a series whose record matches (same bundle version and weights, same input, same
output options) and whose outputs exist, and processes the rest. A series that fails with a coded
error, an unselected modality, out-of-memory or (on Dask) the death of its workers gets a failures.csv
row and the run goes on; anything else is a bug and stops the run (finished series keep their records,
so the re-run resumes). Every name in the outputs is a hashed id; error messages are scrubbed of paths
(:mod:`medpipe.privacy`) unless ``show_paths``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from medpipe import __version__
from medpipe.bundle.model import BundleModel
from medpipe.dicom.geometry import DEFAULT_OPTIONS, AssemblyOptions
from medpipe.errors import EXIT_PARTIAL, Code, look_up
from medpipe.infer.classifier import CropClassifier
from medpipe.infer.records import in_shard, parse_shard, write_reports
from medpipe.infer.sources import discover, parse_select, refuse_unselected
from medpipe.infer.task import (
    ModelSpec,
    SeriesOutcome,
    SeriesTask,
    done_earlier,
    peak_rss_mb,
    release_memory,
    run_series,
)
from medpipe.privacy import pseudonym_key

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
    #: CPU threads: torch's (per worker with ``workers``/``scheduler``; default: the CPUs shared among the
    #: workers of a machine) and the processes reading DICOM headers (default: every CPU)
    threads: int | None = None
    #: run the series on a local Dask cluster of this many worker processes
    workers: int | None = None
    #: ... or on the running Dask cluster whose scheduler has this address (``tcp://HOST:PORT``)
    scheduler: str | None = None
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
    #: the SEG's Patient and Study modules replaced by a keyed pseudonym (OUT/pseudonym.key)
    anonymize_seg: bool = False
    #: where and in which precision the network runs (:mod:`medpipe.backends`; default: torch, the bundle's)
    backend: str | None = None
    precision: str | None = None


def on_dask(options: InferOptions) -> bool:
    """Whether the run goes to a Dask cluster; ``INFER_BAD_WORKERS`` for workers < 1 or with a scheduler."""
    workers = options.workers
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise Code.INFER_BAD_WORKERS(f"--workers {workers!r} must be an integer >= 1 (Dask worker processes)")
    if workers is not None and options.scheduler is not None:
        raise Code.INFER_BAD_WORKERS(
            f"--workers {workers} starts a local Dask cluster and --scheduler {options.scheduler} uses a running "
            "one: give one of the two"
        )
    return workers is not None or options.scheduler is not None


def run_formats(options: InferOptions) -> tuple[str, ...]:
    """``options.formats`` cleaned and checked (``INFER_BAD_FORMAT``)."""
    formats = tuple(dict.fromkeys(f.strip().lower() for f in options.formats if f.strip()))
    for f in formats:
        look_up(f, FORMATS, what="--format", code=Code.INFER_BAD_FORMAT)
    return formats


def run_record(
    model: BundleModel, clf: CropClassifier | None, formats: Sequence[str], options: InferOptions
) -> dict[str, Any]:
    """The part of every series' done record that the run sets (a series adds its id and fingerprint)."""
    return {
        "bundle": model.name,
        "bundle_folder": model.layout.root.name,
        "bundle_version": model.version,
        "model_sha256": model.weights.sha256,
        "formats": sorted(formats),
        "overrides": {k: str(v) for k, v in sorted(dict(options.overrides).items())},
        "classifier": None if clf is None else [clf.model.name, clf.model.version, clf.model.weights.sha256],
        **({"anonymize_seg": True} if options.anonymize_seg else {}),  # absent when off: earlier records hold
        # absent for the bundle's own torch path, so that earlier records hold; another backend or
        # precision computes slightly different masks, so its series are done again
        **({"backend": [model.backend["backend"], model.backend["precision"]]}
           if options.backend not in (None, "torch") or options.precision else {}),  # fmt: skip
    }


def _absolute(path: str | Path | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


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
    formats = run_formats(options)
    selected = parse_select(tuple(options.select))
    shard = parse_shard(options.shard)
    suffix = "" if shard is None else f"-{shard[0]}-of-{shard[1]}"
    out, root = Path(output), Path(input_path)
    if root.is_dir() and out.resolve().is_relative_to(root.resolve()):
        raise Code.INFER_OUTPUT_INSIDE_INPUT(
            f"--output {out} is inside --input {input_path}: a re-run would take the outputs for inputs; "
            "choose an output folder outside the input tree"
        )
    dask = on_dask(options)
    if dask:  # the workers are other processes, maybe on other machines with another working directory
        bundle, out, root = Path(str(_absolute(bundle))), out.resolve(), root.resolve()
    elif options.threads:
        torch.set_num_threads(int(options.threads))
    spec = ModelSpec(
        str(bundle), weights=_absolute(options.weights) if dask else options.weights, device=options.device,
        overrides=tuple(dict(options.overrides).items()), user_ids=tuple(options.user_ids),
        classifier=_absolute(options.classifier) if dask else options.classifier,
        backend=options.backend, precision=options.precision,
    )  # fmt: skip
    model, clf = spec.open()  # here too with Dask: a bad bundle or option fails before any cluster starts
    if not selected and model.modality:
        selected = {"modality": {model.modality}}
    found = discover(root, options.assembly, workers=options.threads)
    if shard is not None:
        found.sources[:] = [s for s in found.sources if in_shard(s.id, shard)]
        found.unreadable[:] = [u for u in found.unreadable if in_shard(u[0], shard)]
    for source in found.sources:
        refuse_unselected(source, selected)
    record_base = run_record(model, clf, formats, options)
    key = pseudonym_key(out) if options.anonymize_seg and "dicom-seg" in formats else None
    tasks = [
        SeriesTask(
            s,
            out / s.id,
            {**record_base, "series": s.id, "fingerprint": s.fingerprint},
            formats,
            options.show_paths,
            {"source": s.location(root)} if options.show_paths else {},
            key,
        )
        for s in found.sources
    ]
    earlier = {i: o for i, t in enumerate(tasks) if (o := done_earlier(t)) is not None}
    todo = {i: t for i, t in enumerate(tasks) if i not in earlier}
    # this process runs every series, or on Dask only those refused at discovery (nothing to send)
    here = {i: t for i, t in todo.items() if not dask or t.source.error is not None}
    remote = {i: t for i, t in todo.items() if i not in here}
    outcomes: dict[int, SeriesOutcome] = {}
    unreadable = [
        {"series": fid, "code": code, "message": "file cannot be read as DICOM: " + msg.split(": ", 1)[-1]}
        for fid, code, msg in found.unreadable
    ]
    start = time.perf_counter()

    def reports() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
        done = [outcomes[i] for i in sorted(outcomes)]  # in the order of the series, whoever finished first
        results = [o.result for o in done]
        lesions = [r for o in done for r in o.lesions]
        failures = unreadable + [o.failure for o in done if o.failure is not None]
        counts = {"done": 0, "skipped": 0, "failed": 0}
        for o in done:
            counts[{"ok": "done", "skipped": "skipped"}.get(o.status, "failed")] += 1
        peak = max([peak_rss_mb()] + [o.result.get("peak_rss_mb") or 0.0 for o in done if o.status == "ok"])
        summary = {
            "medpipe": __version__,
            **{k: v for k, v in record_base.items() if k != "overrides"},
            "weights": "shipped" if model.weights.shipped else "other (--weights)",
            "series": len(found.sources),
            **counts,
            "unreadable_files": len(found.unreadable),
            "lesions": sum(1 for r in lesions if not r.get("candidate")),
            "candidates": sum(1 for r in lesions if r.get("candidate")),
            "seconds": round(time.perf_counter() - start, 2),
            "peak_rss_mb": round(peak, 1),  # of this process, or of the worker that peaked highest
            "failures": sorted({f["code"] for f in failures}),
        }
        return results, lesions, failures, summary

    def write() -> dict[str, Any]:
        results, lesions, failures, summary = reports()
        write_reports(out, summary, results, lesions, failures, show_paths=options.show_paths, suffix=suffix)
        return summary

    with ExitStack() as stack:
        runner = None
        if remote:  # a cluster only when there is a series for it
            from medpipe.infer import cluster  # here: the dask import (~1 s) only for a run that uses it

            runner = stack.enter_context(
                cluster.dask_runner(options.workers, options.scheduler, options.threads)
            )
        out.mkdir(parents=True, exist_ok=True)
        echo(
            f"infer {model.layout.root.name} {model.version} on {len(found.sources)} series"
            f"{'' if shard is None else f' (shard {shard[0]} of {shard[1]})'} "
            f"({', '.join(sorted(selected.get('modality', []))) or 'any modality'}) on {model.device} "
            f"({model.backend['backend']}, {model.backend['precision']}); "
            f"weights {model.describe_weights()}{'' if runner is None else f'; on {runner.describe}'}"
        )
        bar = stack.enter_context(
            tqdm(total=len(tasks), desc="infer", unit="series", disable=not options.progress, leave=False)
        )

        def finish(i: int, outcome: SeriesOutcome) -> None:
            outcomes[i] = outcome
            if (line := outcome.line()) is not None:
                echo(line)
            release_memory()  # nothing of this series is referenced any more
            write()
            bar.update()
            if after_series:
                after_series(outcome.series, outcome.status)

        try:
            for i, outcome in earlier.items():
                finish(i, outcome)
            for i, task in here.items():
                bar.set_postfix_str(task.source.id)
                finish(i, run_series(task, model, clf))
            if runner is not None:
                for i, outcome in runner.run(remote, spec):
                    bar.set_postfix_str(outcome.series)
                    finish(i, outcome)
        finally:
            final = write()
    echo(
        f"{final['done']} done, {final['skipped']} skipped (done earlier), {final['failed']} failed "
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
