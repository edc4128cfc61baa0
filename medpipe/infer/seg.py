"""A label mask as a DICOM Segmentation object (highdicom), referencing the source CT/MR instances.

One frame per source slice that holds any segment (BINARY, 1 bit), in the source slices' own order
and geometry, so a viewer overlays it on the series it came from. Segments come from the bundle's
label map (``metadata.json`` ``network_data_format.outputs.pred.channel_def``) with SNOMED CT codes
found by name in pydicom's code dictionary (``nodule`` -> 27925004 "Nodule" under "Morphologically
Abnormal Structure"); a name without a code is described as "Tissue" with the name as its label. The
algorithm identification is the bundle's name and version.

DICOM requires a Segmentation to carry the Patient and General Study modules of its source images
(highdicom copies them): the SEG file therefore holds the patient's name, ID and birth date, the
accession number and referring physician, like the source series. Nothing else of the source's
identity: the source scanner's institution, department, address and station name, which highdicom
would copy into the Contributing Equipment Sequence (Type 3 there), are left out. With a
``pseudonym_key`` (``medpipe infer --anonymize-seg``) the Patient and Study modules are replaced
(:func:`anonymize`) and the SEG names nobody. Its *file name* is the series' hashed id, as every other output.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import numpy as np

from medpipe import __version__
from medpipe.atomic import atomic_path
from medpipe.bundle.model import LESION_NAMES
from medpipe.dicom.headers import dcmread
from medpipe.dicom.scan import Stack
from medpipe.errors import Code, MedpipeError
from medpipe.privacy import pseudonym

#: Patient / General Study attributes of Type 2 (required, may be empty) that a SEG copies from its
#: sources; some exports (de-identified or hand-made) drop them, which highdicom would refuse.
TYPE2_COPIED = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber",
)  # fmt: skip
#: the source scanner's site, which highdicom copies into the SEG's Contributing Equipment Sequence
SITE_OF_SOURCE = ("InstitutionName", "InstitutionalDepartmentName", "InstitutionAddress", "StationName")
#: Information Entities whose root attributes (every module of the IE) --anonymize-seg replaces
IDENTITY_IES = ("Patient", "Study")
#: what a SEG must keep of its study to be overlaid on its source: the study it belongs to, and when
STUDY_KEPT = ("StudyInstanceUID", "StudyDate", "StudyTime")


def anonymize(ds, key: bytes) -> None:  # ds: pydicom.Dataset, a source header read for the SEG
    """Replace the Patient and Study modules of ``ds`` (so of the SEG built from it) by a pseudonym.

    Every root attribute of the IOD's Patient- and Study-IE modules (Patient, Clinical Trial Subject,
    General Study, Patient Study, Clinical Trial Study: highdicom's own tables, which it copies from)
    is removed except StudyInstanceUID, StudyDate and StudyTime; PatientName and PatientID become
    ``anon-`` + a keyed hash of the PatientID (:func:`medpipe.privacy.pseudonym`), and the other Type 2
    attributes (birth date, sex, accession number, referring physician, study ID) are empty."""
    # highdicom's private tables of the standard: the very lists its SEG copies from, so nothing it copies
    # is missed (an unknown SOP class is a KeyError: INFER_SEG_FAILED, never a SEG half anonymized)
    from highdicom._standard_utils import get_iod_module_map, get_module_attribute_map, get_sop_class_iod_map

    name = pseudonym(str(ds.get("PatientID", "")), key)
    modules = get_iod_module_map()[get_sop_class_iod_map()[ds.SOPClassUID]]
    attributes = get_module_attribute_map()
    for module in (m["key"] for m in modules if m["ie"] in IDENTITY_IES):
        for item in attributes[module]:
            if not item["path"] and item["keyword"] not in STUDY_KEPT and item["keyword"] in ds:
                delattr(ds, item["keyword"])
    ds.PatientName = ds.PatientID = name


def segment_codes(name: str):  # -> tuple[Code, Code]
    """(category, type) SNOMED CT codes for a label name, looked up in pydicom's code dictionary."""
    from pydicom.sr.codedict import codes

    key = "".join(w.capitalize() for w in re.split(r"[^A-Za-z0-9]+", name) if w)
    try:
        prop = getattr(codes.SCT, key)
    except AttributeError:
        prop = None
    abnormal = name.strip().lower() in LESION_NAMES
    category = codes.SCT.MorphologicallyAbnormalStructure if abnormal else codes.SCT.AnatomicalStructure
    if prop is None:
        return codes.SCT.Tissue, codes.SCT.Tissue
    return category, prop


def source_order(stack: Stack) -> list[int]:
    """Indices of ``stack.slices`` in volume order (the k axis of the loaded array)."""
    if stack.geometry is None:
        raise Code.INFER_SEG_UNSUPPORTED(f"series {stack.id} was not validated")
    return [int(i) for i in stack.geometry.order]


def write_seg(
    path: str | Path,
    mask: np.ndarray,
    stack: Stack,
    names: dict[int, str],
    *,
    bundle_name: str,
    bundle_version: str,
    pseudonym_key: bytes | None = None,
) -> Path:
    """Write ``mask`` ([i, j, k] on the grid of ``stack`` as loaded, unresampled) as a SEG to ``path``."""
    if any(s.frame is not None for s in stack.slices):
        raise Code.INFER_SEG_UNSUPPORTED(
            f"series {stack.id} is a multi-frame object; DICOM SEG output supports single-frame series only",
        )
    # pydicom warns (and logs) about odd values of the *source* headers, quoting them -- patient names
    # included -- so both are silenced while the SEG is built.
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _write_seg(
                path, mask, stack, names, bundle_name=bundle_name, bundle_version=bundle_version,
                pseudonym_key=pseudonym_key,
            )  # fmt: skip
    except (AttributeError, ValueError, TypeError, KeyError) as e:
        # highdicom validates the source headers (missing or malformed Type 1 attributes): the series'
        # fault, not ours -- recorded for this series, the run goes on. Only the exception type and
        # the first line are kept (highdicom messages quote attribute names, not values).
        if isinstance(e, MedpipeError):
            raise
        first = str(e).splitlines()[0][:200] if str(e) else ""
        raise Code.INFER_SEG_FAILED(
            f"series {stack.id}: a DICOM SEG cannot be built from its headers ({type(e).__name__}: {first}); "
            "use --format nifti for this input",
        ) from e
    finally:
        logger.setLevel(level)


def _write_seg(
    path: str | Path,
    mask: np.ndarray,
    stack: Stack,
    names: dict[int, str],
    *,
    bundle_name: str,
    bundle_version: str,
    pseudonym_key: bytes | None,
) -> Path:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    order = source_order(stack)
    # Headers only: highdicom needs the geometry, patient, study and UIDs of each source image.
    sources = [dcmread(stack.slices[i].path, stop_before_pixels=True) for i in order]  # preamble-less too
    for ds in sources:  # Type 2 attributes the SEG must copy: present but empty when the source lacks them
        for keyword in SITE_OF_SOURCE:
            if keyword in ds:
                delattr(ds, keyword)
        if pseudonym_key is not None:
            anonymize(ds, pseudonym_key)
        for keyword in TYPE2_COPIED:
            if keyword not in ds:
                setattr(ds, keyword, "")
    pixel = np.ascontiguousarray(np.asarray(mask).transpose(2, 1, 0))  # [i, j, k] -> (frame, row, column)
    if pixel.shape != (len(sources), int(sources[0].Rows), int(sources[0].Columns)):
        raise Code.INFER_SEG_UNSUPPORTED(
            f"mask {mask.shape} is not on the grid of series {stack.id}"
        )
    algorithm = hd.AlgorithmIdentificationSequence(
        name=bundle_name, family=codes.cid7162.ArtificialIntelligence, version=bundle_version
    )
    labels = sorted(v for v in names if v != 0)
    descriptions = []
    for number, value in enumerate(labels, start=1):
        category, prop = segment_codes(names[value])
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=names[value][:64],
                segmented_property_category=category,
                segmented_property_type=prop,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
        )
    # Label values -> segment numbers (1..n), 0 stays background; a labelmap array is accepted by highdicom.
    lut = np.zeros(max([*labels, 0]) + 1, dtype=np.uint8)
    for number, value in enumerate(labels, start=1):
        lut[value] = number
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=lut[pixel],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=9000 + int(getattr(sources[0], "SeriesNumber", 0) or 0) % 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medpipe",
        manufacturer_model_name=bundle_name[:64],
        software_versions=f"medpipe {__version__}",
        device_serial_number="none",
        content_description=f"{bundle_name} {bundle_version}"[:64],
        content_label="SEGMENTATION",
        series_description=f"SEG {bundle_name}"[:64],
    )
    with atomic_path(path) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return Path(path)


def read_seg_labelmap(path: str | Path, stack: Stack) -> np.ndarray:
    """Read a SEG back with highdicom into a label map on ``stack``'s grid [i, j, k] (for checks)."""
    import highdicom as hd

    seg = hd.seg.segread(str(path))
    order = source_order(stack)
    uids = [stack.slices[i].sop_instance_uid for i in order]
    numbers = seg.get_segment_numbers()
    arr = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids,
        segment_numbers=numbers,
        combine_segments=True,
        skip_overlap_checks=True,
    )
    return np.asarray(arr).transpose(2, 1, 0)
