"""Damaged and awkward DICOM folders: every problem is reported with its code, per series, and the scan
goes on to report the other series fine. Patient identity never leaves the input folder.

Each case is a small valid CT series written by :func:`medpipe.dicom.writer.write_ct_series`, copied and
then damaged with pydicom or by byte surgery, next to an intact second series (``good/``).
"""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.encaps import encapsulate
from pydicom.fileset import FileSet
from pydicom.uid import generate_uid

from medpipe.cli import cli
from medpipe.dicom import scan as scan_module
from medpipe.dicom.geometry import AssemblyOptions
from medpipe.dicom.scan import ScanResult, Stack, scan
from medpipe.dicom.volume import load_dicom
from medpipe.dicom.writer import write_ct_series
from medpipe.errors import EXIT_INPUT_ERROR, EXIT_PARTIAL, DicomError
from medpipe.privacy import series_id
from tests.conftest import REPO

SHAPE = (16, 12, 6)  # columns, rows, slices: non-square so a swapped axis shows
SPACING = (0.8, 0.9, 2.5)
ORIGIN = (-10.0, -20.0, 30.0)
MEDPIPE = REPO / ".venv" / "bin" / "medpipe"


def hu_volume(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1500, SHAPE).astype(np.int16)


IMAGE = hu_volume()


def write(folder: Path, seed: str, image: np.ndarray = IMAGE) -> list[Path]:
    return write_ct_series(image, folder, spacing=SPACING, origin_lps=ORIGIN, series_seed=seed)


def uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def new_instance(ds: pydicom.Dataset) -> None:
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def stack_of(result: ScanResult, first_file: Path) -> Stack:
    return result.get(series_id(uid_of(first_file)))


@pytest.fixture
def case(tmp_path: Path):
    """``(root, good_paths, bad_paths)``: an intact series in ``good/`` and one to damage in ``bad/``."""
    good = write(tmp_path / "good", "good", hu_volume(1))
    bad = write(tmp_path / "bad", "bad")
    return tmp_path, good, bad


def assert_good_series_fine(result: ScanResult, good: list[Path]) -> None:
    """The intact series beside a damaged one is listed, valid, and loads voxel for voxel."""
    stack = stack_of(result, good[0])
    assert stack.ok, stack.error
    assert len(stack.slices) == SHAPE[2]
    vol = load_dicom(result.root, series=stack.id, scanned=result)
    np.testing.assert_array_equal(vol.array, hu_volume(1))
    np.testing.assert_allclose(np.diag(vol.affine_lps)[:3], SPACING)
    np.testing.assert_allclose(vol.affine_lps[:3, 3], ORIGIN)


def refusal(result: ScanResult, first_file: Path, code: str) -> DicomError:
    stack = stack_of(result, first_file)
    assert stack.error is not None and stack.error.code == code, stack.error
    with pytest.raises(DicomError) as info:
        load_dicom(result.root, series=stack.id)
    assert info.value.code == code
    return stack.error


# ------------------------------------------------------------------------------------------- file damage
def test_truncated_pixel_data(case) -> None:
    root, good, bad = case
    data = bad[2].read_bytes()
    bad[2].write_bytes(data[:-101])  # pixel data cut short (odd length on purpose)
    result = scan(str(root))
    assert len(result.stacks) == 2 and not result.problems
    error = refusal(result, bad[0], "DICOM_CORRUPT_FILE")
    assert "1 of 6" in error.message and "truncated" in error.message
    assert_good_series_fine(result, good)


def test_file_cut_inside_its_header(case) -> None:
    """Cut before the image elements: the file is unreadable (listed), the rest of its series is judged."""
    root, good, bad = case
    bad[2].write_bytes(bad[2].read_bytes()[:300])
    result = scan(str(root))
    assert [(Path(p.path).name, p.code) for p in result.problems] == [("IM000003.dcm", "DICOM_CORRUPT_FILE")]
    refusal(result, bad[0], "DICOM_MISSING_SLICES")  # the slice it held is now a gap
    assert_good_series_fine(result, good)


def test_non_dicom_files(case) -> None:
    root, good, bad = case
    (root / "bad" / "x.dcm").write_text("this is not DICOM\n" * 20)  # announced as DICOM: reported
    (root / "notes.txt").write_text("hello")  # not announced: skipped
    (root / "blob.bin").write_bytes(os.urandom(4096))
    result = scan(str(root))
    assert [(Path(p.path).name, p.code) for p in result.problems] == [("x.dcm", "DICOM_CORRUPT_FILE")]
    assert result.skipped == {"not DICOM": 2}
    assert len(result.stacks) == 2 and all(s.ok for s in result.stacks)
    assert stack_of(result, bad[0]).ok
    assert_good_series_fine(result, good)


def test_pixel_data_removed(case) -> None:
    root, good, bad = case
    ds = pydicom.dcmread(bad[1])
    del ds.PixelData
    ds.save_as(bad[1])
    result = scan(str(root))
    error = refusal(result, bad[0], "DICOM_NO_PIXEL_DATA")
    assert "1 of 6" in error.message
    assert_good_series_fine(result, good)


def test_undecodable_compressed_frame(case) -> None:
    """A JPEG frame that does not decode: headers look fine, loading refuses with DICOM_CORRUPT_FILE."""
    root, good, bad = case
    for path in bad:
        ds = pydicom.dcmread(path)
        ds.PixelData = encapsulate([b"\xff\xd8" + b"not a jpeg" * 20])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.70"  # JPEG Lossless SV1
        ds.save_as(path, enforce_file_format=True)
    result = scan(str(root))
    stack = stack_of(result, bad[0])
    assert stack.ok  # headers only: nothing wrong yet
    with pytest.raises(DicomError) as info:
        load_dicom(root, series=stack.id)
    assert info.value.code == "DICOM_CORRUPT_FILE"
    assert_good_series_fine(result, good)


def test_unsupported_transfer_syntax(case) -> None:
    root, good, bad = case
    for path in bad:
        ds = pydicom.dcmread(path)
        ds.PixelData = encapsulate([ds.PixelData])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 Main Profile / Main Level
        ds.save_as(path, enforce_file_format=True)
    result = scan(str(root))
    error = refusal(result, bad[0], "DICOM_UNSUPPORTED_TRANSFER_SYNTAX")
    assert "MPEG2" in error.message
    assert_good_series_fine(result, good)


# ------------------------------------------------------------------------------------- folder layout
@pytest.mark.parametrize("contents", ["empty", "text"])
def test_nothing_usable_is_DICOM_NO_SERIES_from_the_cli(tmp_path: Path, contents: str) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    if contents == "text":
        (folder / "README.txt").write_text("no images here")
        (folder / "list.csv").write_text("a,b\n1,2\n")
        (folder / "sub").mkdir()
        (folder / "sub" / "more").write_text("x")
    for args in (["dicom", "ls", str(folder)], ["dicom", "ls", "--json", str(folder)],
                 ["convert", str(folder), "-o", str(tmp_path / "out")]):  # fmt: skip
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == EXIT_INPUT_ERROR, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and errors[0].startswith("error: DICOM_NO_SERIES: "), result.output
        assert "Traceback" not in result.output
    with pytest.raises(DicomError) as info:
        load_dicom(folder)
    assert info.value.code == "DICOM_NO_SERIES"


@pytest.mark.skipif(not MEDPIPE.exists(), reason="medpipe console script not installed in .venv")
def test_nothing_usable_exit_status_of_the_real_command(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no DICOM")
    proc = subprocess.run(
        [str(MEDPIPE), "dicom", "ls", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == EXIT_INPUT_ERROR
    assert proc.stderr.strip().startswith("error: DICOM_NO_SERIES: ") and "Traceback" not in proc.stderr


def test_dicomdir_and_hidden_files_are_ignored(tmp_path: Path) -> None:
    """A media layout (DICOMDIR + PT*/ST*/SE* tree) is found through its files; hidden things are not read."""
    src = write(tmp_path / "src", "good", hu_volume(1))
    fileset = FileSet()
    for path in src:
        fileset.add(pydicom.dcmread(path))
    media = tmp_path / "media"
    fileset.write(media)
    shutil.rmtree(tmp_path / "src")
    # hidden copies that would break the series if they were read (a duplicate position, another series)
    ds = pydicom.dcmread(next(media.rglob("IM*")))
    new_instance(ds)
    ds.save_as(media / ".IM_copy.dcm")
    write(media / ".trash" / "old", "other")

    result = scan(str(media))
    assert result.skipped == {"DICOMDIR": 1} and not result.problems
    assert result.n_files == 1 + SHAPE[2]  # DICOMDIR + the six images, nothing hidden
    (stack,) = result.stacks
    assert stack.ok and len(stack.slices) == SHAPE[2]
    np.testing.assert_array_equal(load_dicom(media).array, hu_volume(1))


def test_nested_folders_are_found(tmp_path: Path) -> None:
    deep = write(tmp_path / "a" / "b" / "c" / "d", "deep")
    other = write(tmp_path / "x", "other", hu_volume(2))
    result = scan(str(tmp_path))
    assert len(result.stacks) == 2 and all(s.ok for s in result.stacks)
    np.testing.assert_array_equal(load_dicom(tmp_path, series=stack_of(result, deep[0]).id).array, IMAGE)
    np.testing.assert_array_equal(
        load_dicom(tmp_path, series=stack_of(result, other[0]).id).array, hu_volume(2)
    )


def test_two_series_in_one_folder(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    a = write(folder, "a")
    b = write(tmp_path / "tmp", "b", hu_volume(3))
    for path in b:  # same file names would clash: interleave them in one folder
        shutil.move(path, folder / f"B{path.name}")
    b = sorted(folder.glob("BIM*.dcm"))
    result = scan(str(folder))
    assert len(result.stacks) == 2 and all(s.ok and len(s.slices) == SHAPE[2] for s in result.stacks)
    ids = {stack_of(result, a[0]).id, stack_of(result, b[0]).id}
    assert len(ids) == 2

    with pytest.raises(DicomError) as info:
        load_dicom(folder)
    assert info.value.code == "DICOM_MULTIPLE_SERIES"
    assert all(i in info.value.message for i in ids)
    np.testing.assert_array_equal(load_dicom(f"{folder}#{stack_of(result, a[0]).id}").array, IMAGE)
    np.testing.assert_array_equal(load_dicom(folder, series=stack_of(result, b[0]).id).array, hu_volume(3))

    listing = CliRunner().invoke(cli, ["dicom", "ls", "--json", str(folder)])
    assert listing.exit_code == 0, listing.output
    rows = json.loads(listing.output)["series"]
    assert {r["id"] for r in rows} == ids and all(r["status"] == "ok" and r["slices"] == 6 for r in rows)
    table = CliRunner().invoke(cli, ["dicom", "ls", str(folder)])
    assert table.exit_code == 0 and all(
        sum(line.startswith(i) for line in table.output.splitlines()) == 1 for i in ids
    )


# ------------------------------------------------------------------------------------- slice geometry
def test_missing_slice_is_refused(case) -> None:
    root, good, bad = case
    bad[3].unlink()
    result = scan(str(root))
    error = refusal(result, bad[0], "DICOM_MISSING_SLICES")
    assert "1 slice is missing" in error.message and "resample" in error.message
    assert_good_series_fine(result, good)


def test_missing_slice_resampled_with_resample_gaps(case) -> None:
    """Needs medpipe/dicom/resample.py: the gap is filled by linear interpolation along the normal."""
    root, good, bad = case
    bad[3].unlink()
    options = AssemblyOptions(resample_gaps=True)
    result = scan(str(root), options)
    stack = stack_of(result, bad[0])
    assert stack.ok and any(n.startswith("DICOM_MISSING_SLICES") for n in stack.notes)
    vol = load_dicom(root, series=stack.id, options=options)
    assert vol.array.shape == SHAPE and vol.array.dtype == np.int16
    np.testing.assert_allclose(vol.affine_lps[:3, :3], np.diag(SPACING), atol=1e-6)
    np.testing.assert_allclose(vol.affine_lps[:3, 3], ORIGIN, atol=1e-6)
    np.testing.assert_allclose(vol.spacing, SPACING, atol=1e-6)
    kept = [0, 1, 2, 4, 5]
    np.testing.assert_array_equal(vol.array[:, :, kept], IMAGE[:, :, kept])
    midway = (IMAGE[:, :, 2].astype(float) + IMAGE[:, :, 4]) / 2
    assert np.abs(vol.array[:, :, 3] - midway).max() <= 0.5
    assert vol.meta["resampled"]
    assert_good_series_fine(result, good)


def test_resampled_volume_meta_reports_the_output_slice_spacing(case) -> None:
    """MONAI meta of a gap-resampled volume: ``slice_spacing_mm`` must be the spacing of the returned grid."""
    root, _, bad = case
    bad[3].unlink()
    vol = load_dicom(root / "bad", options=AssemblyOptions(resample_gaps=True))
    assert vol.spacing[2] == pytest.approx(SPACING[2])
    assert vol.meta["slice_spacing_mm"] == pytest.approx(vol.spacing[2])


def test_shuffled_names_and_instance_numbers_are_sorted_by_position(case) -> None:
    root, good, bad = case
    numbers = [3, 6, 1, 5, 2, 4]  # InstanceNumber of the slices in z order: not monotonic
    names = ["d", "b", "f", "a", "e", "c"]  # file names of the slices in z order: not sorted
    for path, number, name in zip(bad, numbers, names, strict=True):
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = number
        ds.save_as(root / "bad" / f"{name}.dcm")
        path.unlink()
    result = scan(str(root))
    stack = stack_of(result, root / "bad" / "a.dcm")
    assert stack.ok and stack.geometry is not None
    in_order = [stack.slices[i] for i in stack.geometry.order]
    assert [Path(s.path).stem for s in in_order] == names
    assert [s.instance_number for s in in_order] == numbers
    np.testing.assert_array_equal(load_dicom(root / "bad").array, IMAGE)
    assert_good_series_fine(result, good)


def test_duplicate_position(case) -> None:
    root, good, bad = case
    ds = pydicom.dcmread(bad[2])
    new_instance(ds)  # another image (other UID, other pixels) at the place of slice 3
    ds.InstanceNumber = 99
    ds.PixelData = (np.frombuffer(ds.PixelData, "<u2") // 2).astype("<u2").tobytes()
    ds.save_as(root / "bad" / "echo2.dcm")
    result = scan(str(root))
    refusal(result, bad[0], "DICOM_DUPLICATE_POSITION")
    assert_good_series_fine(result, good)


def test_same_instance_copied_twice_is_read_once(case) -> None:
    root, good, bad = case
    shutil.copy(bad[2], root / "bad" / "copy_of_3.dcm")
    result = scan(str(root))
    stack = stack_of(result, bad[0])
    assert stack.ok and len(stack.slices) == SHAPE[2]
    assert any("duplicate" in n for n in stack.notes)
    np.testing.assert_array_equal(load_dicom(root, series=stack.id).array, IMAGE)
    assert_good_series_fine(result, good)


def test_localizers_in_a_series_are_dropped_with_a_note(case) -> None:
    root, good, bad = case
    for name, orientation, position in (
        ("scout_axial.dcm", [1, 0, 0, 0, 1, 0], [-10, -20, 200]),  # same orientation, far away
        ("scout_coronal.dcm", [1, 0, 0, 0, 0, -1], [-10, 0, 100]),
    ):
        ds = pydicom.dcmread(bad[0])
        new_instance(ds)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.ImageOrientationPatient = orientation
        ds.ImagePositionPatient = position
        ds.save_as(root / "bad" / name)
    result = scan(str(root))
    stack = stack_of(result, bad[0])
    assert stack.ok and len(stack.slices) == SHAPE[2]
    assert any("2 localizer" in n for n in stack.notes)
    vol = load_dicom(root, series=stack.id)
    np.testing.assert_array_equal(vol.array, IMAGE)
    assert any("localizer" in n for n in vol.meta["notes"])
    assert_good_series_fine(result, good)


def test_per_slice_rescale_is_applied_per_slice(case) -> None:
    root, good, bad = case
    slopes = [1.0, 0.5, 2.0, 1.5, 1.0, 0.25]
    intercepts = [-1024.0, -1000.0, -1024.5, 0.0, -3.0, 10.0]
    for path, slope, intercept in zip(bad, slopes, intercepts, strict=True):
        ds = pydicom.dcmread(path)
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.save_as(path)
    stored = IMAGE.astype(np.float64) + 1024  # the writer stores HU + 1024
    expected = stored * np.array(slopes) + np.array(intercepts)
    result = scan(str(root))
    vol = load_dicom(root, series=stack_of(result, bad[0]).id)
    assert vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array, expected.astype(np.float32))
    assert_good_series_fine(result, good)


def test_integral_per_slice_rescale_stays_integer(case) -> None:
    root, good, bad = case
    for k, path in enumerate(bad):
        ds = pydicom.dcmread(path)
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024 + 10 * k
        ds.save_as(path)
    vol = load_dicom(root / "bad")
    assert vol.array.dtype.kind == "i"
    np.testing.assert_array_equal(vol.array, IMAGE.astype(np.int32) + 10 * np.arange(SHAPE[2]))


# ------------------------------------------------------------------------------------------ patient data
PHI = {
    "PatientName": "DOE^JOHN",
    "PatientID": "PID-123456",
    "AccessionNumber": "ACC-778899",
    "PatientBirthDate": "19431107",
    "OtherPatientIDs": "OPI-445566",
    "InstitutionName": "ST-ELSEWHERE-HOSPITAL",
}


def _identify(paths: list[Path]) -> dict[str, str]:
    """Give a series distinctive identity values; return every value that must never be printed."""
    values = dict(PHI)
    series = str(pydicom.dcmread(paths[0]).SeriesInstanceUID)
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword, value in PHI.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
        values[f"SOPInstanceUID {path.name}"] = str(ds.SOPInstanceUID)
    ds = pydicom.dcmread(paths[0])
    values[f"SeriesInstanceUID {series_id(series)}"] = series
    values[f"StudyInstanceUID {series_id(series)}"] = str(ds.StudyInstanceUID)
    values[f"FrameOfReferenceUID {series_id(series)}"] = str(ds.FrameOfReferenceUID)
    return values


def test_patient_identity_never_printed_or_written(tmp_path: Path) -> None:
    root = tmp_path / "in"
    secrets: dict[str, str] = {}
    ok = write(root / "s1", "ok")
    secrets |= _identify(ok)
    gap = write(root / "s2", "gap", hu_volume(4))
    secrets |= _identify(gap)
    gap[3].unlink()  # refused unless --resample-gaps
    cut = write(root / "s3", "cut", hu_volume(5))
    secrets |= _identify(cut)
    cut[1].write_bytes(cut[1].read_bytes()[:-64])  # refused: truncated
    (root / "s3" / "junk.dcm").write_bytes(b"\x00" * 300)  # unreadable, listed in --json
    uids = {k: v for k, v in secrets.items() if "UID" in k}
    assert len(set(uids.values())) == len(uids)

    runs = {
        "ls": CliRunner().invoke(cli, ["dicom", "ls", str(root)]),
        "ls --json": CliRunner().invoke(cli, ["dicom", "ls", "--json", str(root)]),
        "convert": CliRunner().invoke(cli, ["convert", str(root), "-o", str(tmp_path / "out")]),
        "convert --resample-gaps": CliRunner().invoke(
            cli, ["convert", str(root), "-o", str(tmp_path / "out2"), "--resample-gaps"]
        ),
    }
    assert runs["ls"].exit_code == 0 and runs["ls --json"].exit_code == 0
    assert (
        runs["convert"].exit_code == EXIT_PARTIAL
        and runs["convert --resample-gaps"].exit_code == EXIT_PARTIAL
    )
    listing = json.loads(runs["ls --json"].stdout)
    assert sorted(r["status"] for r in listing["series"]) == [
        "DICOM_CORRUPT_FILE",
        "DICOM_MISSING_SLICES",
        "ok",
    ]
    assert [u["code"] for u in listing["unreadable"]] == ["DICOM_CORRUPT_FILE"]

    texts = {name: run.stdout + run.stderr for name, run in runs.items()}
    # positive control: the outputs do name every series -- by its hashed id
    ids = [k.split()[1] for k in secrets if k.startswith("SeriesInstanceUID")]
    assert len(ids) == 3 and all(i in texts["ls"] and i in texts["ls --json"] for i in ids)
    written = 0
    for out in (tmp_path / "out", tmp_path / "out2"):
        for path in out.rglob("*"):
            texts[f"file name {path.name}"] = str(path.relative_to(tmp_path))
            if path.suffix == ".json":
                texts[str(path)] = path.read_text()
            elif path.name.endswith(".nii.gz"):
                texts[str(path)] = gzip.decompress(path.read_bytes())[:352].decode("latin-1")  # NIfTI header
            written += 1
    # out: 1 series + sidecar + conversion.json; out2: 2 series + sidecars + conversion.json
    assert written == 3 + 5
    report = json.loads((tmp_path / "out2" / "conversion.json").read_text())
    assert sorted(i["status"] for i in report["items"]) == [
        "DICOM_CORRUPT_FILE",
        "DICOM_CORRUPT_FILE",
        "ok",
        "ok",
    ]

    for where, text in texts.items():
        for what, value in secrets.items():
            assert value not in text, f"{what} ({value!r}) appears in {where}"
        assert "JOHN" not in text.upper(), where  # no part of the name either (e.g. "Doe, John")


# --- the parallel header scan (more than PARALLEL_THRESHOLD files)


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory: pytest.TempPathFactory):
    """Two series of 40 slices each: above the parallel threshold together."""
    root = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    for i in range(2):
        image = rng.integers(-1000, 400, size=(16, 16, 40)).astype(np.int16)
        write_ct_series(image, root / f"s{i}", spacing=(1.0, 1.0, 2.0), origin_lps=(0, 0, 0), series_seed=f"p{i}")
    assert 80 >= scan_module.PARALLEL_THRESHOLD
    return root


def _summaries(result: scan_module.ScanResult) -> list[dict]:
    return [s.summary() for s in result.stacks]


def test_parallel_scan_equals_serial_scan(big_folder):
    serial = scan_module.scan(str(big_folder), workers=1)
    parallel = scan_module.scan(str(big_folder), workers=2)
    assert _summaries(parallel) == _summaries(serial)
    assert all(s.ok and len(s.slices) == 40 for s in parallel.stacks)


def _scan_in_daemon(root: str, queue) -> None:  # runs in a daemon child: may not start its own pool
    try:
        result = scan_module.scan(root, workers=2)
        queue.put([len(s.slices) for s in result.stacks])
    except BaseException as e:  # report, do not hang the parent
        queue.put(repr(e))


def test_scan_inside_a_daemon_process_reads_in_process(big_folder):
    """torch DataLoader workers are daemons; a process pool there raises 'daemonic processes...'."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_scan_in_daemon, args=(str(big_folder), queue), daemon=True)
    proc.start()
    outcome = queue.get(timeout=60)
    proc.join(timeout=10)
    assert outcome == [40, 40]
