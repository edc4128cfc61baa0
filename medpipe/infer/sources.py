"""What ``medpipe infer`` runs on: every series of a DICOM tree, a NIfTI file, or a folder of NIfTI files.

Each input becomes a :class:`Source` with a non-identifying id (the DICOM stack id -- a short hash of
the SeriesInstanceUID -- or, for NIfTI, a short hash of the file's content; never a file name, which
often carries a patient name) and a *fingerprint* that changes whenever the input does (the series UID
with its sorted SOP instance UIDs; the NIfTI content hash). Discovery reads headers only; pixels are
loaded by :meth:`Source.load`, one series at a time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medpipe.atomic import file_sha256
from medpipe.data.images import Image, dicom_image, is_nifti, nifti_image
from medpipe.dicom.geometry import DEFAULT_OPTIONS, AssemblyOptions
from medpipe.dicom.scan import Stack, scan
from medpipe.dicom.volume import load_stack
from medpipe.errors import Code, MedpipeError, look_up
from medpipe.privacy import file_id, shown_path

#: What ``--select`` can select on.
SELECTABLE = ("modality",)


@dataclass
class Source:
    """One series to process; ``error`` is set when discovery already refused it."""

    id: str
    kind: str  # "dicom" or "nifti"
    fingerprint: str
    modality: str | None
    stack: Stack | None = field(default=None, repr=False)
    path: Path | None = field(default=None, repr=False)
    error: MedpipeError | None = None
    options: AssemblyOptions = field(default=DEFAULT_OPTIONS, repr=False)

    def load(self) -> Image:
        if self.error is not None:
            raise self.error
        if self.kind == "dicom":
            return dicom_image(load_stack(self.stack, self.options))  # type: ignore[arg-type]
        return nifti_image(self.path)  # type: ignore[arg-type]

    def location(self, root: Path) -> str:
        """Where the input lies, relative to the input folder (for ``--show-paths`` only)."""
        where = self.path if self.path is not None else Path(self.stack.slices[0].path).parent  # type: ignore[union-attr]
        return shown_path(where, True, root) or ""


def stack_fingerprint(stack: Stack) -> str:
    """Series UID + sorted SOP instance UIDs (+ frame numbers): changes when any image is added or replaced."""
    items = sorted(f"{s.sop_instance_uid}/{s.frame}" for s in stack.slices)
    return hashlib.sha256("\n".join([stack.series_uid, stack.id, *items]).encode()).hexdigest()


@dataclass
class Discovery:
    sources: list[Source]
    #: files that could not be read at all, as (non-identifying id, code, message)
    unreadable: list[tuple[str, str, str]]


def discover(
    path: str | Path, options: AssemblyOptions = DEFAULT_OPTIONS, *, workers: int | None = None
) -> Discovery:
    """Every series under ``path``; raises ``INPUT_NOT_FOUND`` / ``INPUT_NO_IMAGES`` when there is none."""
    path = Path(path)
    if not path.exists():
        raise Code.INPUT_NOT_FOUND(f"{path} does not exist")
    niftis = (
        [path]
        if (path.is_file() and is_nifti(path))
        else sorted(p for p in path.rglob("*") if p.is_file() and is_nifti(p) and not p.name.startswith("."))
        if path.is_dir()
        else []
    )
    if niftis:
        sources = []
        for p in niftis:
            digest = file_sha256(p)
            sources.append(Source(f"nii-{digest[:10]}", "nifti", digest, None, path=p, options=options))
        return Discovery(sources, [])
    result = scan(str(path), options, workers=workers)
    sources = [
        Source(s.id, "dicom", stack_fingerprint(s), s.modality, stack=s, error=s.error, options=options)
        for s in result.stacks
    ]
    unreadable = [(file_id(p.path), p.code, p.message) for p in result.problems]
    if not sources:
        raise Code.INPUT_NO_IMAGES(
            f"no DICOM series or NIfTI file under the input ({result.nothing_usable_message()})",
        )
    return Discovery(sources, unreadable)


def parse_select(items: tuple[str, ...] | list[str]) -> dict[str, set[str]]:
    """``("modality=CT", "modality=MR")`` -> ``{"modality": {"CT", "MR"}}``; only ``modality`` is known."""
    out: dict[str, set[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or not value.strip():
            raise Code.INFER_BAD_SELECT(f"--select {item!r} must look like modality=CT")
        look_up(key, SELECTABLE, what=f"--select {item!r}: the key", code=Code.INFER_BAD_SELECT)
        out.setdefault(key, set()).update(v.strip().upper() for v in value.split(","))
    return out


def refuse_unselected(source: Source, select: dict[str, Any]) -> None:
    """Set ``source.error`` when its modality is not selected (NIfTI has none and always passes)."""
    wanted = select.get("modality")
    if (
        source.error is None
        and wanted
        and source.modality is not None
        and source.modality.upper() not in wanted
    ):
        source.error = Code.INFER_UNSUPPORTED_MODALITY(
            f"series {source.id} is {source.modality}; this run processes {', '.join(sorted(wanted))} "
            "(--select modality=..., default: the bundle's input modality)",
        )
