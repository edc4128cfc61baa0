"""The LIDC reader on real LIDC-IDRI XML and CT, and on damaged XML: marks, nodules, consensus, manifests.

Reference figures for LIDC-IDRI-0003 (072.xml, 4 readers) are those of the data's PROVENANCE.md,
computed independently (skimage polygon fill, pylidc's grouping): 4 nodules marked by 1/4/4/4 readers,
reader voxel counts per nodule, union and >= 2-reader consensus sizes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from medpipe.cli import cli
from medpipe.data.lidc.dataset import lidc_manifest
from medpipe.data.lidc.nodules import Nodule, SeriesGrid, group_marks, place, rasterise
from medpipe.data.lidc.xml import read_lidc_xml
from medpipe.dicom.scan import scan
from medpipe.errors import ManifestError
from tests.conftest import SHARED_DATA

LIDC = SHARED_DATA / "lidc_idri_0003_dicom_xml"
VOIS = SHARED_DATA / "lidc_nodule_vois"
needs_lidc = pytest.mark.skipif(not LIDC.is_dir(), reason="shared LIDC-IDRI-0003 data not present")


def xml_0003() -> Path:
    (path,) = (LIDC / "LIDC-IDRI-0003").glob("*/*/*.xml")
    return path


@pytest.fixture(scope="module")
def series():
    if not LIDC.is_dir():
        pytest.skip("shared LIDC-IDRI-0003 data not present")
    read = read_lidc_xml(xml_0003())
    (stack,) = scan(str(xml_0003().parent)).stacks
    return read, SeriesGrid.of_stack(stack)


@needs_lidc
@pytest.mark.parametrize(
    ("name", "nodules", "small", "non_nodules"),
    [("LIDC-IDRI-0003", 13, 0, 38), ("LIDC-IDRI-0001", 4, 9, 13), ("LIDC-IDRI-0002", 2, 26, 25)],
)
def test_marks_of_real_reader_files(name, nodules, small, non_nodules):
    path = xml_0003() if name.endswith("3") else next((LIDC / "xml_only" / name).glob("*.xml"))
    read = read_lidc_xml(path)
    assert len(read.readers) == 4 and (len(read.nodules), len(read.small), len(read.non_nodules)) == (nodules, small, non_nodules)
    assert not read.warnings
    assert all(len(m.ratings) == 9 and 1 <= m.ratings["malignancy"] <= 5 for m in read.nodules)
    assert all(len(c.points) == 1 for m in read.small for c in m.contours)
    if name.endswith("2"):  # 071.xml holds two exclusion contours (holes)
        assert sum(not c.inclusion for m in read.nodules for c in m.contours) == 2


def test_marks_are_grouped_into_the_nodules_the_readers_meant(series):
    read, grid = series
    placed = [place(m, grid) for m in read.nodules]
    assert not [w for p in placed for w in p.warnings]  # every contour's SOP UID is a slice of the series
    groups = [Nodule(g) for g in group_marks(placed, grid, len(read.readers))]
    assert [len(n.readers) for n in groups] == [1, 4, 4, 4]
    reader_voxels = [sorted(int(rasterise(p, grid.shape)[1].sum()) for p in n.marks) for n in groups]
    assert reader_voxels[0] == [3099] and reader_voxels[1][:3] == [3000, 3361, 3620]
    union = [int(n.consensus(grid.shape, 1e-9)[1].sum()) for n in groups[1:]]
    half = [int(n.consensus(grid.shape, 0.5)[1].sum()) for n in groups[1:]]
    assert union == [6870, 469, 1146] and half == [3796, 380, 909]
    assert [n.ratings()["malignancy"] for n in groups] == [2.0, 4.5, 3.5, 3.5]


@pytest.mark.skipif(not VOIS.is_dir(), reason="shared lidc_nodule_vois not present")
def test_consensus_lies_where_an_independent_mask_of_the_same_nodules_lies(series):
    """lidc_nodule_vois' full-grid masks of nodules 2-4 (another max-voting rule) agree within a slice (2.5 mm)."""
    read, grid = series
    records = [Nodule(g).record(i, grid, 0.5) for i, g in enumerate(group_marks(
        [place(m, grid) for m in read.nodules], grid, len(read.readers)), start=1)]  # fmt: skip
    for number in (2, 3, 4):
        image = nib.load(VOIS / "full_ct_masks" / f"LIDC-IDRI-0003_R_{number}.nii.gz")
        ras = image.affine @ np.r_[np.argwhere(np.asarray(image.dataobj) > 0).mean(axis=0), 1]
        lps = np.array([-ras[0], -ras[1], ras[2]])
        assert np.linalg.norm(lps - records[number - 1]["centroid_lps"]) < 2.5, number


@needs_lidc
def test_manifest_lidc_writes_images_masks_and_records_aligned_with_convert(tmp_path):
    from medpipe.convert import convert

    root = tmp_path / "tcia" / "LIDC-IDRI-0003"
    shutil.copytree(xml_0003().parents[1], root / xml_0003().parents[1].name)
    out = tmp_path / "m.json"
    result = CliRunner().invoke(cli, ["manifest", "lidc", str(tmp_path / "tcia"), "-o", str(out), "--min-readers", "2"])
    assert result.exit_code == 0, result.output
    content = json.loads(out.read_text())
    (entry,) = content["training"] + content["validation"] + content["test"]
    data = out.parent / content["dataset_dir"]
    label, instances = nib.load(data / entry["label"]), nib.load(data / entry["instances"])
    record = json.loads((data / entry["nodules"]).read_text())
    assert [n["n_readers"] for n in record["nodules"]] == [1, 4, 4, 4] and len(record["non_nodules"]) == 38
    inst = np.asarray(instances.dataobj)
    assert [int((inst == n).sum()) for n in (1, 2, 3, 4)] == [3099, 3796, 380, 909]
    assert int(np.asarray(label.dataobj).sum()) == 3796 + 380 + 909  # the 1-reader nodule is not a target
    convert(xml_0003().parent, tmp_path / "nii")
    ref = nib.load(next((tmp_path / "nii").glob("*.nii.gz")))
    assert label.shape == ref.shape and np.allclose(label.affine, ref.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(nib.load(data / entry["image"]).dataobj), np.asarray(ref.dataobj))
    rows = (out.parent / "nodules.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("case_id,patient,nodule,n_readers")


# --- damaged input: coded errors or a warning per mark, never a crash of the whole case or run

GOOD_HEAD = ('<?xml version="1.0"?><LidcReadMessage xmlns="http://www.nih.gov"><ResponseHeader>'
             "<SeriesInstanceUid>{series}</SeriesInstanceUid></ResponseHeader>")  # fmt: skip


def nodule_xml(roi: str, characteristics: str = "<malignancy>4</malignancy>") -> str:
    return (f"<readingSession><servicingRadiologistID>7</servicingRadiologistID><unblindedReadNodule>"
            f"<noduleID>n1</noduleID><characteristics>{characteristics}</characteristics>{roi}"
            "</unblindedReadNodule></readingSession>")  # fmt: skip


def roi(sop: str, z: float, points: list[tuple[int, int]]) -> str:
    edges = "".join(f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in points)
    return f"<roi><imageZposition>{z}</imageZposition><imageSOP_UID>{sop}</imageSOP_UID><inclusion>TRUE</inclusion>{edges}</roi>"


def test_files_that_are_not_lidc_xml_are_coded_errors(tmp_path):
    for name, text in (("a.xml", "<not closed"), ("b.xml", "<svg></svg>"), ("c.xml", GOOD_HEAD.format(series="1") + "</LidcReadMessage>")):
        (tmp_path / name).write_text(text)
        with pytest.raises(ManifestError) as e:
            read_lidc_xml(tmp_path / name)
        assert e.value.code == "LIDC_XML_INVALID", name


def test_bad_marks_are_skipped_with_a_warning_and_single_points_are_small_nodules(tmp_path):
    square = [(10, 10), (14, 10), (14, 14), (10, 14)]
    body = (nodule_xml(roi("s1", -10, square)) + nodule_xml(roi("s1", -10, []))
            + nodule_xml(roi("s1", -10, square), "<malignancy>four</malignancy>")
            + nodule_xml(roi("s1", -10, [(20, 20)]), ""))  # fmt: skip
    (tmp_path / "r.xml").write_text(GOOD_HEAD.format(series="1.2") + body + "</LidcReadMessage>")
    read = read_lidc_xml(tmp_path / "r.xml")
    assert len(read.nodules) == 1 and len(read.small) == 1 and read.series_uid == "1.2"
    assert len(read.warnings) == 2 and any("no contour point" in w for w in read.warnings)


def test_a_contour_on_a_missing_slice_is_dropped_and_a_square_rasterises_with_its_edge():
    grid = SeriesGrid(np.diag([0.8, 0.8, 2.5, 1.0]), (32, 32, 4), {"s0": 0, "s1": 1}, np.array([0.0, 2.5, 5.0, 7.5]), 2.5)
    from medpipe.data.lidc.xml import Contour, Mark

    # a 5x5-pixel square outlined as LIDC readers' tools write outlines: every boundary pixel, in order
    ring = [(x, 10) for x in range(10, 15)] + [(14, y) for y in range(11, 15)]
    ring += [(x, 14) for x in range(13, 9, -1)] + [(10, y) for y in range(13, 10, -1)]
    square = np.array(ring, dtype=float)
    mark = Mark("r1", "n1", (Contour("s1", 2.5, True, square), Contour("gone", 40.0, True, square),
                             Contour("s9", 5.0, True, square)))  # fmt: skip
    placed = place(mark, grid)
    assert [k for k, _, _ in placed.contours] == [1, 2]  # "s9" found by its z (5.0 mm = slice 2)
    assert len(placed.warnings) == 1 and "40" in placed.warnings[0]
    box, mask = rasterise(placed, grid.shape)
    assert mask[:, :, 0].sum() == 25  # the 5x5 pixels of the square, edge included


@needs_lidc
def test_a_reader_file_for_another_series_is_reported_and_the_run_goes_on(tmp_path):
    good = tmp_path / "tcia" / "LIDC-IDRI-0003"
    shutil.copytree(xml_0003().parents[1], good / xml_0003().parents[1].name)
    other = tmp_path / "tcia" / "LIDC-IDRI-9999" / "study" / "series"
    other.mkdir(parents=True)
    shutil.copy(next((LIDC / "xml_only" / "LIDC-IDRI-0001").glob("*.xml")), other)
    content = lidc_manifest(tmp_path / "tcia", tmp_path / "m.json", test_fraction=0)
    assert [f["code"] for f in content["failures"]] == ["LIDC_SERIES_MISMATCH"]
    assert len(content["training"]) == 1
    held = lidc_manifest(tmp_path / "tcia", tmp_path / "h.json", test_fraction=0, hold_out=("LIDC-IDRI-0003",))
    assert [e["patient"] for e in held["test"]] == ["LIDC-IDRI-0003"] and not held["training"]
