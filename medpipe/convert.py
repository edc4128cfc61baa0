"""``medpipe convert``: DICOM series -> NIfTI (+ JSON sidecar), NIfTI -> validated NIfTI.

Every series found is either written or reported with its code; nothing is dropped silently.
Outputs are named by the series' hashed id (never by patient, study or description), written under a
temporary name and renamed, and ``conversion.json`` in the output folder lists every series with its
status. The sidecar holds acquisition fields only: no names, IDs, dates, UIDs, institution or device
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
from medpipe.atomic import atomic_write_text
from medpipe.data.nifti import validate_nifti, write_nifti
from medpipe.dicom.geometry import DEFAULT_OPTIONS, AssemblyOptions
from medpipe.dicom.scan import Stack, scan
from medpipe.dicom.volume import load_stack
from medpipe.errors import Code, MedpipeError, NiftiError

NIFTI_SUFFIXES = (".nii", ".nii.gz")

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

    source: str  # series id, or the NIfTI file name
    status: str  # "ok" or an error code
    message: str | None = None
    output: str | None = None
    shape: list[int] | None = None
    spacing: list[float] | None = None


def _json_value(value: Any) -> Any:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [_json_value(v) for v in value]
    for cast in (int, float):
        try:
            out = cast(value)
            if str(out) == str(value).strip() or cast is float:
                return out
        except (TypeError, ValueError):
            continue
    return str(value)


def acquisition_sidecar(stack: Stack) -> dict[str, Any]:
    """Non-identifying acquisition fields of a stack's first image."""
    import pydicom
    from pydicom.uid import UID

    first = stack.slices[0]
    ds = pydicom.dcmread(first.path, stop_before_pixels=True, specific_tags=list(SIDECAR_FIELDS))
    out: dict[str, Any] = {"SeriesId": stack.id, "SOPClass": UID(first.sop_class_uid).name}
    for keyword in SIDECAR_FIELDS:
        value = ds.get(keyword)
        if value not in (None, ""):
            out[keyword] = _json_value(value)
    out["TransferSyntax"] = UID(first.transfer_syntax).name
    out["Notes"] = list(stack.notes)
    out["ConversionSoftware"] = f"medpipe {__version__}"
    return out


def _is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES)


def convert(
    source: str | Path,
    output: str | Path,
    *,
    series: tuple[str, ...] = (),
    options: AssemblyOptions = DEFAULT_OPTIONS,
    echo: Callable[[str], None] = lambda _: None,
) -> list[Converted]:
    """Convert a DICOM folder (each series) or a NIfTI file; return one record per series/file."""
    source, output = Path(source), Path(output)
    if not source.exists():
        raise Code.INPUT_NOT_FOUND(f"{source} does not exist")
    records: list[Converted] = []
    if _is_nifti(source):
        stem = source.name[: -len(".nii.gz")] if source.name.lower().endswith(".nii.gz") else source.stem
        try:
            image = validate_nifti(source)
            target = output / f"{stem}.nii.gz"
            write_nifti(target, np.asanyarray(image.dataobj), image.affine)
            zooms = [round(float(z), 4) for z in image.header.get_zooms()[:3]]
            records.append(Converted(source.name, "ok", None, target.name, list(image.shape), zooms))
        except NiftiError as e:
            records.append(Converted(source.name, e.code, e.message))
    else:
        result = scan(str(source), options)
        stacks = [result.get(s) for s in series] if series else result.stacks
        if not stacks:
            raise Code.DICOM_NO_SERIES(result.nothing_usable_message())
        for stack in stacks:
            try:
                volume = load_stack(stack, options)
                write_nifti(output / f"{stack.id}.nii.gz", volume.array, volume.affine_ras)
                sidecar = acquisition_sidecar(stack) | {
                    "VoxelSpacing": [round(v, 5) for v in volume.spacing],
                    "Shape": list(volume.array.shape),
                }
                atomic_write_text(output / f"{stack.id}.json", json.dumps(sidecar, indent=2) + "\n")
                records.append(
                    Converted(
                        stack.id,
                        "ok",
                        None,
                        f"{stack.id}.nii.gz",
                        list(volume.array.shape),
                        [round(v, 4) for v in volume.spacing],
                    )  # fmt: skip
                )
            except MedpipeError as e:
                records.append(Converted(stack.id, e.code, e.message))
            rec = records[-1]
            echo(
                f"{rec.source}: {rec.output}"
                if rec.status == "ok"
                else f"{rec.source}: {rec.status}: {rec.message}"
            )
        for problem in result.problems:
            records.append(Converted(os.path.relpath(problem.path, source), problem.code, problem.message))
    report = {"medpipe": __version__, "items": [asdict(r) for r in records]}
    atomic_write_text(output / "conversion.json", json.dumps(report, indent=2) + "\n")
    return records
