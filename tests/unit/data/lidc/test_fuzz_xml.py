"""Hostile LIDC reader XML: any bytes give a read (bad annotations skipped with a warning) or LIDC_XML_INVALID.

Seeds: a small LIDC document written here, and a small derivative of a real reader file of
../shared/data (its header, the first reading session with two nodules of two rois each, two
non-nodules; skipped with a reason when the data is absent). Fuzzed: their bytes flipped, inserted, cut;
the text of any element replaced by hostile values (``1e999``, ``nan``, ``-``, a 10^4-character
number); elements dropped or duplicated; and the classic XML attacks — billion laughs, quadratic blowup,
external entities (file and http), parameter entities, an external DTD, 10^4-deep nesting. Attacks are
refused (no DTD is accepted) and no read ever holds a non-finite coordinate or the text of a file
outside.
"""

from __future__ import annotations

import tempfile
import xml.etree.ElementTree as ET  # builds seeds from trusted text only
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from medpipe.data.lidc.xml import LidcRead, read_lidc_xml
from medpipe.errors import ManifestError
from tests.conftest import SHARED_DATA
from tests.unit.data.fuzzing import LONG, SHORT, coded_or_result, mutated_bytes

REAL = SHARED_DATA / "lidc_idri_0003_dicom_xml" / "xml_only" / "LIDC-IDRI-0001" / "069.xml"
PEAK = 32 * 2**20
SECRET = "fuzz-secret-7f3a"

SMALL = b"""<?xml version="1.0" encoding="UTF-8"?>
<LidcReadMessage xmlns="http://www.nih.gov"><ResponseHeader><SeriesInstanceUid>1.2.3</SeriesInstanceUid>
<StudyInstanceUID>1.2</StudyInstanceUID></ResponseHeader><readingSession><servicingRadiologistID>r1
</servicingRadiologistID><unblindedReadNodule><noduleID>n1</noduleID><characteristics><subtlety>5</subtlety>
<malignancy>3</malignancy></characteristics><roi><imageZposition>-120.5</imageZposition><imageSOP_UID>1.2.3.4
</imageSOP_UID><inclusion>TRUE</inclusion><edgeMap><xCoord>10</xCoord><yCoord>11</yCoord></edgeMap><edgeMap>
<xCoord>12</xCoord><yCoord>13</yCoord></edgeMap></roi></unblindedReadNodule><unblindedReadNodule><noduleID>s1
</noduleID><roi><imageZposition>-100</imageZposition><edgeMap><xCoord>5</xCoord><yCoord>6</yCoord></edgeMap>
</roi></unblindedReadNodule><nonNodule><nonNoduleID>x1</nonNoduleID><imageZposition>-90</imageZposition><locus>
<xCoord>1</xCoord><yCoord>2</yCoord></locus></nonNodule></readingSession></LidcReadMessage>
"""

ATTACKS = {
    "billion laughs": b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "lol"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">'
    + b"".join(b'<!ENTITY %c "&%c;&%c;&%c;&%c;&%c;&%c;&%c;&%c;">' % ((c,) + (c - 1,) * 8) for c in range(99, 108))
    + b"]><LidcReadMessage><readingSession><servicingRadiologistID>&k;</servicingRadiologistID></readingSession>"
    b"</LidcReadMessage>",
    "quadratic blowup": b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "' + b"x" * 50_000 + b'">]><LidcReadMessage>'
    + b"&a;" * 50_000 + b"</LidcReadMessage>",
    "external entity file": b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY s SYSTEM "file://SECRET">]>'
    b"<LidcReadMessage><readingSession><servicingRadiologistID>&s;</servicingRadiologistID></readingSession>"
    b"</LidcReadMessage>",
    "external entity http": b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY s SYSTEM "http://127.0.0.1:9/x">]>'
    b"<LidcReadMessage>&s;</LidcReadMessage>",
    "parameter entity": b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY % p SYSTEM "file://SECRET"> %p;]>'
    b"<LidcReadMessage/>",
    "external dtd": b'<?xml version="1.0"?><!DOCTYPE LidcReadMessage SYSTEM "file://SECRET">'
    b"<LidcReadMessage><readingSession/></LidcReadMessage>",
    "deep nesting": b"<LidcReadMessage>" + b"<a>" * 10_000 + b"</a>" * 10_000 + b"</LidcReadMessage>",
}
HOSTILE_TEXT = ["1e999", "-1e999", "nan", "inf", "-", "", " ", "TRUE", "0x10", "9" * 10_000, "1.5", "-0", "\u0661"]


@pytest.fixture(scope="module")
def folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="fuzz_xml_"))
    (folder / "secret.txt").write_text(SECRET)
    return folder


def derived_from_real() -> bytes:
    """A small LIDC document cut from a real reader file (two nodules of two rois, two non-nodules)."""
    ns = "{http://www.nih.gov}"
    root = ET.parse(REAL).getroot()
    for session in root.findall(f"{ns}readingSession")[1:]:
        root.remove(session)
    session = root.find(f"{ns}readingSession")
    for kind, keep in (("unblindedReadNodule", 2), ("nonNodule", 2)):
        for extra in session.findall(f"{ns}{kind}")[keep:]:
            session.remove(extra)
    for nodule in session.findall(f"{ns}unblindedReadNodule"):
        for roi in nodule.findall(f"{ns}roi")[2:]:
            nodule.remove(roi)
        for roi in nodule.findall(f"{ns}roi"):
            for point in roi.findall(f"{ns}edgeMap")[4:]:
                roi.remove(point)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


@st.composite
def element_edits(draw: Any, seed: bytes) -> bytes:
    """``seed`` with the text of some elements replaced, some elements dropped or duplicated."""
    root = ET.fromstring(seed)
    nodes = list(root.iter())
    for _ in range(draw(st.integers(1, 5))):
        node = draw(st.sampled_from(nodes))
        edit = draw(st.sampled_from(("text", "drop", "duplicate")))
        parent = next((p for p in root.iter() if node in list(p)), None)
        if edit == "text" or parent is None:
            node.text = draw(st.sampled_from(HOSTILE_TEXT) | st.text(max_size=12))
        elif edit == "drop":
            parent.remove(node)
        else:
            parent.append(node)
    return ET.tostring(root, encoding="utf-8")


def check_read(read: LidcRead | ManifestError) -> None:
    if isinstance(read, ManifestError):
        assert read.code == "LIDC_XML_INVALID"
        return
    marks = read.nodules + read.small + read.non_nodules
    assert all(np.isfinite(c.points).all() and c.points.shape[1:] == (2,) for m in marks for c in m.contours)
    assert all(len(c.points) for m in marks for c in m.contours)
    assert all(isinstance(v, int) for m in marks for v in m.ratings.values())
    assert SECRET not in repr(read)


def run(folder: Path, target: str, content: bytes) -> None:
    path = folder / "read.xml"
    path.write_bytes(content.replace(b"SECRET", str(folder / "secret.txt").encode()))
    check_read(coded_or_result(target, lambda: read_lidc_xml(path), max_peak=PEAK))


def _fuzz_small(folder: Path, content: bytes) -> None:
    run(folder, "lidc xml: written", content)


def _fuzz_real(folder: Path, data: st.DataObject) -> None:
    if not REAL.is_file():
        pytest.skip("shared LIDC-IDRI reader XML not present (../shared/data/lidc_idri_0003_dicom_xml)")
    seed = derived_from_real()
    run(folder, "lidc xml: real derived", data.draw(mutated_bytes(seed) | element_edits(seed)))


small_inputs = mutated_bytes(SMALL) | element_edits(SMALL) | st.binary(max_size=100)
test_fuzz_written_xml = SHORT(given(content=small_inputs)(_fuzz_small))
test_fuzz_real_xml = SHORT(given(data=st.data())(_fuzz_real))
test_fuzz_written_xml_long = pytest.mark.slow(LONG(given(content=small_inputs)(_fuzz_small)))
test_fuzz_real_xml_long = pytest.mark.slow(LONG(given(data=st.data())(_fuzz_real)))


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_xml_attacks_are_refused(folder: Path, name: str) -> None:
    path = folder / "attack.xml"
    path.write_bytes(ATTACKS[name].replace(b"SECRET", str(folder / "secret.txt").encode()))
    result = coded_or_result(f"lidc xml: {name}", lambda: read_lidc_xml(path), max_peak=PEAK)
    assert isinstance(result, ManifestError) and result.code == "LIDC_XML_INVALID", result


# --- regressions the fuzzing found


def test_infinite_rating_skips_the_nodule_not_the_file(folder: Path) -> None:
    path = folder / "inf.xml"  # was OverflowError: cannot convert float infinity to integer
    path.write_bytes(SMALL.replace(b"<malignancy>3", b"<malignancy>1e999"))
    read = read_lidc_xml(path)
    assert [m.mark_id for m in read.nodules] == [] and any("1e999" in w for w in read.warnings)
    assert len(read.small) == 1 and len(read.non_nodules) == 1


def test_infinite_coordinate_skips_the_mark(folder: Path) -> None:
    path = folder / "coord.xml"  # was accepted: an inf point reached the rasteriser
    path.write_bytes(SMALL.replace(b"<xCoord>1</xCoord>", b"<xCoord>inf</xCoord>"))
    read = read_lidc_xml(path)
    assert read.non_nodules == [] and any("non-nodule" in w for w in read.warnings)


def test_unknown_encoding_is_invalid_xml(folder: Path) -> None:
    path = folder / "enc.xml"  # was LookupError: unknown encoding: foo
    path.write_bytes(b'<?xml version="1.0" encoding="foo"?><LidcReadMessage/>')
    with pytest.raises(ManifestError) as e:
        read_lidc_xml(path)
    assert e.value.code == "LIDC_XML_INVALID"
