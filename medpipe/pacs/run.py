"""``medpipe infer --source dicomweb+http(s)://...``: studies from a DICOMweb archive, SEGs back to it.

1. The studies: ``--study UID`` (each checked with QIDO-RS, ``PACS_STUDY_NOT_FOUND``) and those a
   ``--query 'ModalitiesInStudy=CT&StudyDate=20260101-'`` matches (QIDO-RS search parameters).
2. Per study, its series (QIDO-RS) of the selected modalities (``--select``, default the bundle's input
   modality; SEG, SR and other non-image series never) and their SOP Instance UIDs. A study done
   earlier with the same instances and the same bundle, weights and options is skipped without being
   retrieved (:mod:`medpipe.pacs.records`).
3. The other studies' selected series are retrieved (WADO-RS) into a scratch folder in OUT
   (``OUT/.retrieved-*``, removed when the run ends) and go through :func:`medpipe.infer.run.infer`
   exactly as a folder would: the same outputs, done records, results.csv and failures.csv. A series
   that cannot be retrieved is recorded (``PACS_RETRIEVE_FAILED`` in studies.csv) and the batch goes on.
4. ``--push``: each SEG not yet pushed to this archive is stored (STOW-RS), retried with exponential
   backoff; each push is recorded (``OUT/<id>/push.json``, ``OUT/pushes.csv``), and a push that failed is
   retried by the next run, whatever its query.

``--source dimse://HOST:PORT/AET`` does the same over classic DICOM networking (C-FIND, C-MOVE,
C-STORE: :mod:`medpipe.pacs.dimse`).

``OUT/studies.csv`` lists every series of every study considered (status ``retrieved``, ``done earlier``,
``not selected (MODALITY)`` or a failure code) and ``OUT/pacs.json`` the counts of the run.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pydicom

from medpipe.atomic import atomic_write_text, file_sha256
from medpipe.errors import EXIT_PARTIAL, Code, MedpipeError
from medpipe.infer.records import parse_shard, read_done
from medpipe.infer.run import InferOptions, infer, outcome, run_formats, run_record
from medpipe.infer.sources import parse_select
from medpipe.infer.task import ModelSpec
from medpipe.pacs import records
from medpipe.pacs.archive import MODALITY, SERIES_UID, STUDY_UID, Archive, Attempts, tag_value
from medpipe.pacs.config import load_config
from medpipe.pacs.dimse import DimseArchive
from medpipe.privacy import series_id

#: series that are results or documents, never images to segment
NOT_IMAGES = frozenset({"SEG", "SR", "PR", "KO", "DOC", "RTSTRUCT", "RTPLAN", "RTDOSE", "REG", "OT"})


@dataclass(frozen=True)
class PacsOptions:
    """Where the studies come from and whether the SEGs go back (the rest is :class:`InferOptions`)."""

    source: str | None = None
    studies: Sequence[str] = ()
    #: QIDO-RS study search parameters, ``Key=Value&Key=Value``
    query: str | None = None
    push: bool = False
    config_file: str | None = None
    ca_bundle: str | None = None
    insecure: bool = False
    environ: Mapping[str, str] | None = field(default=None, repr=False)


def check_input_or_source(input_path: str | None, pacs: PacsOptions) -> bool:
    """Whether the run reads an archive; ``INFER_INPUT_OR_SOURCE`` unless exactly one of the two is given."""
    archive = bool(pacs.source or pacs.config_file)
    if input_path and archive:
        raise Code.INFER_INPUT_OR_SOURCE(
            "--input reads a folder and --source/--pacs-config an archive: give one of the two"
        )
    if not input_path and not archive:
        raise Code.INFER_INPUT_OR_SOURCE(
            "nothing to run on: give --input FOLDER, or --source dicomweb+http(s)://HOST:PORT/PATH with --study/--query"
        )
    if not archive and (pacs.studies or pacs.query or pacs.push or pacs.ca_bundle or pacs.insecure):
        raise Code.INFER_INPUT_OR_SOURCE(
            "--study, --query, --push, --ca-bundle and --insecure are for an archive: add --source (or use --input alone)"
        )
    return archive


def parse_query(text: str | None) -> dict[str, str]:
    """``'ModalitiesInStudy=CT&StudyDate=20260101-'`` -> a dict; ``PACS_BAD_SOURCE`` when malformed."""
    if not text:
        return {}
    try:
        pairs = parse_qsl(text, strict_parsing=True, keep_blank_values=False)
    except ValueError:
        pairs = []
    if not pairs or any(not k.strip() for k, _ in pairs):
        raise Code.PACS_BAD_SOURCE(
            f"--query {text!r} is not QIDO-RS parameters KEY=VALUE joined by &, e.g. 'ModalitiesInStudy=CT&StudyDate=20260101-'"
        )
    return {k.strip(): v.strip() for k, v in pairs}


def _study_uids(archive: Archive, pacs: PacsOptions) -> list[str]:
    uids = list(dict.fromkeys(str(u).strip() for u in pacs.studies if str(u).strip()))
    for uid in uids:
        if not archive.study_exists(uid):
            raise Code.PACS_STUDY_NOT_FOUND(
                f"the archive {archive.shown} has no study {records.study_id(uid)} (the StudyInstanceUID given "
                "with --study); check the UID, or search with --query"
            )
    if pacs.query:
        found = archive.studies(parse_query(pacs.query))
        uids += [u for u in (tag_value(s, STUDY_UID) for s in found) if u and u not in uids]
    return uids


def _select_series(
    archive: Archive, uid: str, study: str, wanted: set[str]
) -> tuple[dict[str, list[str]], list[dict[str, Any]]]:
    """``{series UID: SOP Instance UIDs}`` of the study's selected series (QIDO-RS), and a studies.csv row
    for each series of the study."""
    chosen: dict[str, list[str]] = {}
    rows: list[dict[str, Any]] = []
    for item in archive.series(uid):
        suid, modality = tag_value(item, SERIES_UID), str(tag_value(item, MODALITY) or "").upper()
        if not suid:
            continue
        row = {"study": study, "series": series_id(suid), "modality": modality}
        if modality in NOT_IMAGES or (wanted and modality not in wanted):
            rows.append({**row, "status": f"not selected ({modality or 'no modality'})"})
            continue
        chosen[suid] = archive.instance_uids(uid, suid)
        rows.append({**row, "instances": len(chosen[suid]), "status": "retrieved"})
    return chosen, rows


def _failed_series(out: Path, suffix: str) -> set[str]:
    import csv

    try:
        with open(out / f"failures{suffix}.csv", newline="") as fp:
            return {row["series"] for row in csv.DictReader(fp)}
    except OSError:
        return set()


def _push(archive: Archive | DimseArchive, out: Path, folders: Iterable[Path], echo: Callable[[str], None]) -> dict[str, int]:
    """Push every SEG of ``folders`` not yet pushed to this archive; a record per push."""
    counts = {"pushed": 0, "push_failed": 0, "pushed_earlier": 0}
    for folder in sorted(set(folders)):
        done = read_done(folder)
        seg = (done or {}).get("result", {}).get("seg")
        if not seg or not (folder / seg).is_file():
            continue
        digest = file_sha256(folder / seg)
        previous = records.read_push(folder) or {}
        if previous.get("status") == "pushed" and previous.get("archive") == archive.shown \
                and previous.get("seg_sha256") == digest:  # fmt: skip
            counts["pushed_earlier"] += 1
            continue
        dataset = pydicom.dcmread(folder / seg)
        attempts = Attempts()
        t0 = time.perf_counter()
        try:
            archive.store(dataset, attempts)
            status, message = "pushed", ""
        except MedpipeError as e:
            status, message = str(e.code), e.message
        record = {
            "archive": archive.shown, "seg": seg, "seg_sha256": digest, "sop_instance_uid": str(dataset.SOPInstanceUID),
            "status": status, "attempts": int(previous.get("attempts", 0)) + attempts.tries,
            "seconds": round(time.perf_counter() - t0, 2), "message": message,
            "time_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }  # fmt: skip
        records.write_push(folder, record)
        counts["pushed" if status == "pushed" else "push_failed"] += 1
        echo(f"{folder.name}: SEG pushed to {archive.shown}" if status == "pushed" else f"{folder.name}: {status}: {message}")
    return counts


def infer_pacs(
    bundle: str | Path,
    output: str | Path,
    options: InferOptions,
    pacs: PacsOptions,
    *,
    echo: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[dict[str, Any], int]:
    """Run ``bundle`` on the archive's studies into ``output`` (and push the SEGs); (pacs.json, exit status)."""
    config = load_config(pacs.source, pacs.config_file, ca_bundle=pacs.ca_bundle, insecure=pacs.insecure,
                         environ=pacs.environ)  # fmt: skip
    if not pacs.studies and not pacs.query:
        raise Code.PACS_BAD_SOURCE("--source needs the studies to run on: --study UID (repeatable) or --query 'KEY=VALUE&...'")
    parse_query(pacs.query)
    if config.insecure:
        echo(f"warning: --insecure: the certificate of {config.shown} is not verified; anyone on the network path "
             "can read the images and the credentials")  # fmt: skip
    formats = run_formats(options)
    if pacs.push and "dicom-seg" not in formats:
        raise Code.INFER_BAD_FORMAT(f"--push stores DICOM SEGs, and --format {','.join(formats)} writes none: add dicom-seg")
    selected = parse_select(tuple(options.select))
    shard = parse_shard(options.shard)
    suffix = "" if shard is None else f"-{shard[0]}-of-{shard[1]}"
    model, clf = ModelSpec(
        str(bundle), weights=options.weights, device=options.device, overrides=tuple(dict(options.overrides).items()),
        user_ids=tuple(options.user_ids), classifier=options.classifier, backend=options.backend,
        precision=options.precision,
    ).open()  # fmt: skip
    run = run_record(model, clf, formats, options)
    wanted = selected.get("modality") or ({model.modality} if model.modality else set())
    archive = (DimseArchive if config.dimse else Archive)(config, sleep=sleep)
    archive.check()
    uids = _study_uids(archive, pacs)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    plans: dict[str, tuple[str, list[str]]] = {}  # study uid -> (fingerprint, selected series uids)
    skipped: list[Path] = []
    retrieved = failed = 0
    scratch = Path(tempfile.mkdtemp(prefix=".retrieved-", dir=out))
    summary: dict[str, Any] | None = None
    try:
        for uid in uids:
            study = records.study_id(uid)
            try:
                chosen, study_rows = _select_series(archive, uid, study, wanted)
            except MedpipeError as e:  # this study's searches failed: recorded, the batch goes on
                if e.code not in (Code.PACS_REQUEST_FAILED, Code.PACS_UNREACHABLE):
                    raise
                failed += 1
                rows.append({"study": study, "status": str(e.code), "message": e.message})
                echo(f"{study}: {e}")
                continue
            rows += study_rows
            fingerprint = records.qido_fingerprint(chosen)
            earlier = records.study_done(out, study, fingerprint, run) if chosen else None
            if earlier is not None:
                skipped += [out / name for name in earlier]
                for r in rows:
                    if r["study"] == study and r["status"] == "retrieved":
                        r["status"] = "done earlier"
                continue
            plans[uid] = (fingerprint, list(chosen))
            for suid in chosen:
                folder = scratch / study / series_id(suid)
                try:
                    archive.retrieve_to(uid, suid, folder)
                    retrieved += 1
                except MedpipeError as e:
                    if e.code not in (Code.PACS_RETRIEVE_FAILED, Code.PACS_UNREACHABLE):
                        raise
                    failed += 1
                    shutil.rmtree(folder, ignore_errors=True)
                    for r in rows:
                        if r["study"] == study and r["series"] == series_id(suid):
                            r.update(status=str(e.code), message=e.message)
                    echo(f"{series_id(suid)}: {e}")
        echo(f"{archive.shown}: {len(uids)} study(ies), {len(skipped)} series done earlier (not retrieved), "
             f"{retrieved} series retrieved, {failed} failed")  # fmt: skip
        if retrieved:
            summary = infer(bundle, scratch, out, options, echo=echo)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    not_done = _failed_series(out, suffix)
    fresh: list[Path] = []
    for uid, (fingerprint, series_uids) in plans.items():
        fresh += [f for s in series_uids for f in records.series_folders(out, s) if (f / "done.json").is_file()]
        done = records.done_folders(out, series_uids, run, not_done) if series_uids else None
        if done is not None:
            records.write_study(out, records.study_id(uid), fingerprint, done)
    counts = {"pushed": 0, "push_failed": 0, "pushed_earlier": 0}
    if pacs.push:
        counts = _push(archive, out, [*skipped, *fresh, *records.pending_pushes(out, archive.shown)], echo)
    records.write_pushes_csv(out)
    records.write_studies_csv(out, rows)
    report = {
        "archive": archive.shown, "studies": len(uids), "series_done_earlier": len(skipped),
        "series_retrieved": retrieved, "retrieve_failed": failed, **counts,
        "infer": None if summary is None else {k: summary[k] for k in ("series", "done", "skipped", "failed")},
    }  # fmt: skip
    atomic_write_text(out / "pacs.json", json.dumps(report, indent=1) + "\n")
    if pacs.push:
        echo(f"{counts['pushed']} SEG(s) pushed, {counts['push_failed']} failed (retried by the next run), "
             f"{counts['pushed_earlier']} pushed earlier; pushes.csv in {out}")  # fmt: skip
    status = 0 if summary is None else outcome(summary, out)
    return report, EXIT_PARTIAL if (status or failed or counts["push_failed"]) else 0
