"""LIDC-IDRI reader XML (``LidcReadMessage``): what each radiologist marked on one CT series.

One file per series, in the series folder of TCIA's layout. Each ``readingSession`` is one reader's
unblinded read and holds:

* ``unblindedReadNodule`` with ``characteristics`` (the nine ratings: subtlety, internalStructure,
  calcification, sphericity, margin, lobulation, spiculation, texture, malignancy 1-5) and one ``roi``
  per slice (``imageSOP_UID``, ``imageZposition``, ``inclusion`` TRUE for an outline, FALSE for a hole,
  and ``edgeMap`` points: x = column, y = row, in pixels): a nodule of 3 mm or more;
* ``unblindedReadNodule`` without characteristics and with one-point rois: a nodule under 3 mm;
* ``nonNodule`` with one ``locus`` point: something a reader judged not to be a nodule.

The file is parsed with :mod:`defusedxml` and no DTD at all (LIDC files have none; a DTD is how entity
expansion and external references come in, and these files come from elsewhere). A file that is not
LIDC XML is ``LIDC_XML_INVALID``; an annotation that cannot be used (a contour without points, a
coordinate or z that is not a finite number, a rating that is not a number) is skipped with a warning
in :attr:`LidcRead.warnings`, never failing the whole file. No other exception comes out, whatever the
bytes (``tests/unit/data/lidc/test_fuzz_xml.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from xml.etree.ElementTree import Element, ParseError

import numpy as np
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import parse

from medpipe.errors import Code

RATINGS = (
    "subtlety", "internalStructure", "calcification", "sphericity", "margin", "lobulation", "spiculation",
    "texture", "malignancy",
)  # fmt: skip


@dataclass(frozen=True)
class Contour:
    """One outline (or hole) of a nodule on one slice; ``points`` (n, 2) are (column, row) pixels."""

    sop_uid: str
    z: float
    inclusion: bool
    points: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class Mark:
    """One reader's annotation of a nodule (``contours``) or a point mark (one-point contours)."""

    reader: str
    mark_id: str
    contours: tuple[Contour, ...]
    #: the nine ratings (empty for a nodule under 3 mm and for a non-nodule)
    ratings: dict[str, int] = field(default_factory=dict)

    @property
    def point(self) -> tuple[str, float, np.ndarray]:
        """(SOP UID, z, (column, row)) of a point mark: the mean of its points."""
        pts = np.concatenate([c.points for c in self.contours])
        return self.contours[0].sop_uid, self.contours[0].z, pts.mean(axis=0)


@dataclass
class LidcRead:
    """Everything one XML file says about its series."""

    series_uid: str
    study_uid: str
    readers: list[str]
    #: nodules of 3 mm or more, one :class:`Mark` per reader and nodule
    nodules: list[Mark]
    #: nodules under 3 mm (point marks)
    small: list[Mark]
    #: non-nodules (point marks)
    non_nodules: list[Mark]
    warnings: list[str] = field(default_factory=list)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(node: Element, name: str) -> list[Element]:
    return [c for c in node if _local(c.tag) == name]


def _text(node: Element, name: str, default: str = "") -> str:
    found = _children(node, name)
    return (found[0].text or "").strip() if found else default


def _number(text: str) -> float:
    """A finite float, else ValueError (``float`` takes "inf" and "nan")."""
    value = float(text)
    if not np.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def _points(node: Element, name: str) -> np.ndarray:
    pts = [(_number(_text(p, "xCoord")), _number(_text(p, "yCoord"))) for p in _children(node, name)]
    return np.asarray(pts, dtype=np.float64).reshape(-1, 2)


def _z(node: Element) -> float:
    """``imageZposition``: NaN when absent (the SOP UID places the slice), else a finite number."""
    text = _text(node, "imageZposition")
    return _number(text) if text else float("nan")


def _contours(nodule: Element) -> tuple[Contour, ...]:
    out = []
    for roi in _children(nodule, "roi"):
        out.append(
            Contour(
                sop_uid=_text(roi, "imageSOP_UID"),
                z=_z(roi),
                inclusion=_text(roi, "inclusion", "TRUE").upper() != "FALSE",
                points=_points(roi, "edgeMap"),
            )
        )
    return tuple(out)


def read_lidc_xml(path: str | Path) -> LidcRead:
    """Parse one LIDC XML file (see the module docstring)."""
    path = Path(path)
    try:
        root = parse(str(path), forbid_dtd=True).getroot()
    except (OSError, ParseError, DefusedXmlException, LookupError, ValueError) as e:  # LookupError: encoding="x"
        raise Code.LIDC_XML_INVALID(f"{path.name} cannot be read as XML ({type(e).__name__}: {e})") from None
    if _local(root.tag) != "LidcReadMessage":
        raise Code.LIDC_XML_INVALID(
            f"{path.name} is a <{_local(root.tag)}> document, not an LIDC <LidcReadMessage>"
        )
    header = (_children(root, "ResponseHeader") or [root])[0]
    read = LidcRead(
        series_uid=_text(header, "SeriesInstanceUid"), study_uid=_text(header, "StudyInstanceUID"),
        readers=[], nodules=[], small=[], non_nodules=[],
    )  # fmt: skip
    for number, session in enumerate(_children(root, "readingSession"), start=1):
        reader = _text(session, "servicingRadiologistID") or f"reader{number}"
        read.readers.append(reader)
        for nodule in _children(session, "unblindedReadNodule"):
            mark_id = _text(nodule, "noduleID")
            try:
                contours = _contours(nodule)
                chars = _children(nodule, "characteristics")
                ratings = {_local(c.tag): int(_number(c.text)) for c in (chars[0] if chars else []) if c.text}
            except ValueError as e:
                read.warnings.append(f"reader {reader} nodule {mark_id!r} skipped: unreadable value ({e})")
                continue
            contours = tuple(c for c in contours if len(c.points))
            if not contours:
                read.warnings.append(f"reader {reader} nodule {mark_id!r} skipped: no contour point")
                continue
            mark = Mark(reader, mark_id, contours, {k: v for k, v in ratings.items() if k in RATINGS})
            one_point = all(len(c.points) == 1 for c in contours)
            (read.small if one_point or not mark.ratings else read.nodules).append(mark)
        for non in _children(session, "nonNodule"):
            try:
                contour = Contour(
                    sop_uid=_text(non, "imageSOP_UID"), z=_z(non),
                    inclusion=True, points=_points(non, "locus"),
                )  # fmt: skip
            except ValueError as e:
                read.warnings.append(f"reader {reader} non-nodule skipped: unreadable value ({e})")
                continue
            if len(contour.points):
                read.non_nodules.append(Mark(reader, _text(non, "nonNoduleID"), (contour,)))
    if not read.readers:
        raise Code.LIDC_XML_INVALID(f"{path.name} holds no readingSession: not an LIDC reader file")
    return read
