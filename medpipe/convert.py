"""``medpipe convert``: DICOM series -> NIfTI (+ JSON sidecar), NIfTI -> validated NIfTI.

Every series found is either written or reported with its code; nothing is dropped silently.
Outputs are named by the series' hashed id (a NIfTI input by ``nii-`` + a hash of its content; never
by patient, study, description or file name), written under a temporary name and renamed, and
``conversion.json`` in the output folder lists every series with its status; paths appear in it only
with ``--show-paths``, and error messages are scrubbed of them (:mod:`medpipe.privacy`). The sidecar holds acquisition fields only: no names, IDs, dates, UIDs, institution or device
serial numbers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medpipe import __version__
from medpipe.atomic import atomic_write_text, file_sha256
from medpipe.data.images import is_nifti
from medpipe.data.nifti import validate_nifti, write_nifti
from medpipe.dicom.geometry import DEFAULT_OPTIONS, AssemblyOptions
from medpipe.dicom.headers import dcmread
from medpipe.dicom.scan import Stack, scan
from medpipe.dicom.volume import load_stack
from medpipe.errors import EXIT_PARTIAL, Code, MedpipeError, NiftiError
from medpipe.privacy import file_id, scrub, shown_path

#: Header fields copied to the sidecar: how the image was acquired, nothing about who or when.
SIDECAR_FIELDS = (
    "Modality", "Manufacturer", "ManufacturerModelName", "BodyPartExamined", "PatientPosition",
    "ImageType", "SliceThickness", "SpacingBetweenSlices", "PixelSpacing", "KVP", "XRayTubeCurrent",
    "Exposure", "ConvolutionKernel", "GantryDetectorTilt", "MagneticFieldStrength", "RepetitionTime",
    "EchoTime", "InversionTime", "FlipAngle", "ScanningSequence", "SequenceVariant", "MRAcquisitionType",
    "PhotometricInterpretation", "BitsStored", "RescaleType",
)  # fmt: skip


@dataclass
class Converted:
    """One line of conversion.json."""

    source: str  # series id, nii-<content hash> for a NIfTI file, file-<path hash> for an unreadable file
    status: str  # "ok" or an error code
    message: str | None = None
    output: str | None = None
    shape: list[int] | None = None
    spacing: list[float] | None = None
    #: where the item lies, relative to the source (only with show_paths)
    path: str | None = None


def _json_value(value: Any) -> Any:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [_json_value(v) for v in value]
    for cast in (int, float):
        try:
            out = cast(value)
            if cast is float and not np.isfinite(out):
                return str(value)  # json.dumps would write NaN / Infinity, which is not JSON
            if str(out) == str(value).strip() or cast is float:
                return out
        except (TypeError, ValueError, OverflowError):  # int("inf") overflows
            continue
    return str(value)


def acquisition_sidecar(stack: Stack) -> dict[str, Any]:
    """Non-identifying acquisition fields of a stack's first image."""
    from pydicom.uid import UID

    first = stack.slices[0]
    # headers.dcmread: also reads a file without preamble/"DICM" (which crashed here before)
    ds = dcmread(first.path, stop_before_pixels=True, specific_tags=list(SIDECAR_FIELDS))
    out: dict[str, Any] = {"SeriesId": stack.id, "SOPClass": UID(first.sop_class_uid).name}
    for keyword in SIDECAR_FIELDS:
        value = ds.get(keyword)
        if value not in (None, ""):
            out[keyword] = _json_value(value)
    out["TransferSyntax"] = UID(first.transfer_syntax).name
    out["Notes"] = list(stack.notes)
    out["ConversionSoftware"] = f"medpipe {__version__}"
    return out


def convert(
    source: str | Path,
    output: str | Path,
    *,
    series: tuple[str, ...] = (),
    options: AssemblyOptions = DEFAULT_OPTIONS,
    show_paths: bool = False,
    echo: Callable[[str], None] = lambda _: None,
) -> list[Converted]:
    """Convert a DICOM folder (each series) or a NIfTI file; return one record per series/file.

    Records and conversion.json name series by hashed id and files by ``file-<hash>`` / ``nii-<hash>``
    (:mod:`medpipe.privacy`); ``show_paths`` adds each item's path, relative to ``source``.
    """
    source, output = Path(source), Path(output)
    if not source.exists():
        raise Code.INPUT_NOT_FOUND(f"{source} does not exist")
    records: list[Converted] = []
    if source.is_file() and is_nifti(source):
        name = "nii-" + file_sha256(source)[:10]
        try:
            image = validate_nifti(source)
            target = output / f"{name}.nii.gz"
            write_nifti(target, np.asanyarray(image.dataobj), image.affine)
            zooms = [round(float(z), 4) for z in image.header.get_zooms()[:3]]
            records.append(Converted(name, "ok", None, target.name, list(image.shape), zooms))
        except NiftiError as e:
            records.append(
                Converted(name, e.code, e.message if show_paths else scrub(e.message, [source], name))
            )
        records[-1].path = shown_path(source, show_paths)
    else:
        result = scan(str(source), options)
        stacks = [result.get(s) for s in series] if series else result.stacks
        if not stacks:
            raise Code.DICOM_NO_SERIES(result.nothing_usable_message())
        for stack in stacks:
            try:
                volume = load_stack(stack, options)
                sidecar = acquisition_sidecar(stack) | {  # before the NIfTI: a failure leaves neither
                    "VoxelSpacing": [round(v, 5) for v in volume.spacing],
                    "Shape": list(volume.array.shape),
                }
                write_nifti(output / f"{stack.id}.nii.gz", volume.array, volume.affine_ras)
                atomic_write_text(output / f"{stack.id}.json", json.dumps(sidecar, indent=2) + "\n")
                shape, spacing = list(volume.array.shape), [round(v, 4) for v in volume.spacing]
                records.append(Converted(stack.id, "ok", None, f"{stack.id}.nii.gz", shape, spacing))
            except MedpipeError as e:
                paths = [s.path for s in stack.slices]
                message = e.message if show_paths else scrub(e.message, paths, f"<series {stack.id}>")
                records.append(Converted(stack.id, e.code, message))
            rec = records[-1]
            rec.path = shown_path(os.path.dirname(stack.slices[0].path), show_paths, source)
            echo(
                f"{rec.source}: {rec.output}"
                if rec.status == "ok"
                else f"{rec.source}: {rec.status}: {rec.message}"
            )
        for problem in result.problems:
            name = file_id(problem.path)
            message = problem.message if show_paths else scrub(problem.message, [problem.path], name)
            records.append(
                Converted(name, problem.code, message, path=shown_path(problem.path, show_paths, source))
            )
    report = {"medpipe": __version__, "items": [_item(r) for r in records]}
    atomic_write_text(output / "conversion.json", json.dumps(report, indent=2) + "\n")
    return records


def _item(record: Converted) -> dict[str, Any]:
    item = asdict(record)
    if item["path"] is None:
        del item["path"]  # only with show_paths
    return item


def outcome(records: list[Converted]) -> int:
    """Exit status of ``medpipe convert``: 0 all converted, EXIT_PARTIAL some refused; raises when none was."""
    ok = sum(r.status == "ok" for r in records)
    if ok == 0:
        failed = records[0] if records else None
        raise Code(failed.status if failed else Code.DICOM_NO_SERIES)(
            f"nothing converted{f' ({failed.source}: {failed.status})' if failed else ''}"
        )
    return EXIT_PARTIAL if ok < len(records) else 0
