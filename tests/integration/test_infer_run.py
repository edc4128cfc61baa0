"""``medpipe infer`` end to end on small synthetic DICOM series with the shipped lung nodule bundle.

One run (module fixture) over a folder holding two good CT series, one relabelled as MR (refused by
the bundle's modality) and one with a missing slice (a coded DICOM error), plus a tiny random-weight
classifier bundle. Checked: geometry against ``medpipe convert``, the SEG against dciodvfy and
highdicom, the lesion table against the mask, no patient identity in names/CSVs/NIfTI headers,
failure rows and exit codes, idempotent re-runs, and an interrupted run that resumes.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from tests.conftest import BUNDLE

PATIENT_NAME, PATIENT_ID = "Doe^Janet", "PAT-4711-XYZ"
SHAPE, SPACING = (64, 56, 8), (2.4, 2.4, 5.0)
#: exercises overrides (--set) the way a user would pass them; part of each series' done record
FAST = {"sliding_window_inferer::sw_batch_size": 4}


def _write_series(root: Path, seed: int, name: str) -> Path:
    from medpipe.data.synthetic.phantom import PhantomSpec, generate_phantom
    from medpipe.dicom.writer import write_ct_series

    spec = PhantomSpec(
        shape=SHAPE, spacing=SPACING, n_nodules=(2, 2), nodule_diameter_mm=(14.0, 22.0), table=False
    )
    case = generate_phantom(seed, spec)
    folder = root / name
    write_ct_series(
        case.image, folder, spacing=case.spacing, origin_lps=case.origin_lps, series_seed=f"infer-{seed}",
        patient_id=PATIENT_ID, patient_name=PATIENT_NAME,
    )  # fmt: skip
    return folder


#: a tiny random-weight 3-D DenseNet: plumbing only (the real classifier bundle is trained elsewhere)
NET = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "init_features": 8, "growth_rate": 8,
       "block_config": [2, 2]}  # fmt: skip


def _classifier_bundle(root: Path) -> Path:
    import torch
    from monai.networks.nets import DenseNet

    bundle = root / "tiny_classifier"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    common = {
        "crop_spacing": [1.5, 1.5, 2.0],
        "crop_size": [24, 24, 16],
        "network_def": {"_target_": "DenseNet", **NET},
        "crop_transforms": [
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -1000, "a_max": 400,
             "b_min": 0.0, "b_max": 1.0, "clip": True}
        ],
    }  # fmt: skip
    meta = {
        "name": "Tiny test classifier",
        "version": "0.0.1",
        "network_data_format": {"outputs": {"pred": {"channel_def": {"0": "benign", "1": "malignant"}}}},
    }
    (bundle / "configs" / "common.json").write_text(json.dumps(common))
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
    torch.manual_seed(0)
    torch.save(DenseNet(**NET).state_dict(), bundle / "models" / "model.pt")
    return bundle


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fp:
        return list(csv.DictReader(fp))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from medpipe.infer.run import InferOptions, infer

    root = tmp_path_factory.mktemp("infer")
    inputs = root / "in"
    good = [_write_series(inputs, s, f"{PATIENT_NAME.replace('^', '_')}_{s}") for s in (3, 4)]
    mr = _write_series(inputs, 5, "other_mr")
    for f in mr.iterdir():  # an MR series: the CT bundle must refuse it
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.save_as(f)
    gap = _write_series(inputs, 6, "gap")
    sorted(gap.iterdir())[4].unlink()  # a missing slice in the middle
    classifier = _classifier_bundle(root)
    logs: list[str] = []
    out = root / "out"
    options = InferOptions(classifier=classifier, overrides=FAST, progress=False)
    summary = infer(BUNDLE, inputs, out, options, echo=logs.append)
    return {"root": root, "inputs": inputs, "good": good, "out": out, "summary": summary, "logs": logs,
            "classifier": classifier}  # fmt: skip


def test_every_series_is_reported_and_failures_carry_codes(run: dict) -> None:
    s = run["summary"]
    assert (s["series"], s["done"], s["skipped"], s["failed"]) == (4, 2, 0, 2)
    failures = _rows(run["out"] / "failures.csv")
    codes = sorted(f["code"] for f in failures)
    assert codes[0].startswith("DICOM_") and codes[1] == "INFER_UNSUPPORTED_MODALITY", codes
    results = _rows(run["out"] / "results.csv")
    assert sorted(r["status"] for r in results) == sorted(["ok", "ok", *codes])
    for f in failures:  # nothing of a failed series is left behind
        assert not (run["out"] / f["series"]).exists()
    assert json.loads((run["out"] / "summary.json").read_text())["failed"] == 2


def test_mask_has_the_geometry_medpipe_convert_writes(run: dict) -> None:
    from medpipe.convert import convert

    conv = run["root"] / "converted"
    for folder in run["good"]:
        (rec,) = convert(folder, conv)
        mask = nib.load(run["out"] / rec.source / f"{rec.source}_seg.nii.gz")
        ref = nib.load(conv / rec.output)
        assert mask.shape == ref.shape
        np.testing.assert_allclose(mask.affine, ref.affine, atol=1e-6)
        assert mask.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}


def test_seg_passes_dciodvfy_and_reads_back_to_the_nifti_mask(run: dict) -> None:
    from medpipe.dicom.scan import scan
    from medpipe.infer.seg import read_seg_labelmap

    dciodvfy = shutil.which("dciodvfy")
    found = 0
    for folder in run["good"]:
        (stack,) = scan(str(folder)).stacks
        seg_path = run["out"] / stack.id / f"{stack.id}_seg.dcm"
        mask = np.asarray(nib.load(run["out"] / stack.id / f"{stack.id}_seg.nii.gz").dataobj)
        found += int(mask.sum() > 0)
        np.testing.assert_array_equal(read_seg_labelmap(seg_path, stack), mask)
        seg = pydicom.dcmread(seg_path)
        assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
        sources = {s.sop_instance_uid for s in stack.slices}
        refs = {
            r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
        }
        assert refs == sources
        (segment,) = seg.SegmentSequence
        assert (
            segment.SegmentLabel == "nodule"
            and segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "27925004"
        )
        algo = segment.SegmentationAlgorithmIdentificationSequence[0]
        version = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["version"]
        assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("Lung nodule CT segmentation", version)
        if dciodvfy is None:
            continue
        report = subprocess.run([dciodvfy, str(seg_path)], capture_output=True, text=True).stderr
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert not errors, report
    assert found, "the bundle found no nodule in either phantom: the SEG check would be vacuous"
    if dciodvfy is None:
        pytest.skip("dciodvfy (dicom3tools) not installed: SEG read back with highdicom only")


def test_lesion_table_matches_the_mask(run: dict) -> None:
    lesions = _rows(run["out"] / "lesions.csv")
    assert lesions, "no lesion found"
    for sid in {r["series"] for r in lesions}:
        img = nib.load(run["out"] / sid / f"{sid}_seg.nii.gz")
        mask = np.asarray(img.dataobj)
        rows = [r for r in lesions if r["series"] == sid]
        voxel_mm3 = abs(np.linalg.det(img.affine[:3, :3]))
        assert sum(int(r["voxels"]) for r in rows) == int(mask.sum())
        assert sum(float(r["volume_mm3"]) for r in rows) == pytest.approx(mask.sum() * voxel_mm3, rel=1e-4)
        per_series = _rows(run["out"] / sid / f"{sid}_lesions.csv")
        assert [r["voxels"] for r in per_series] == [r["voxels"] for r in rows]
        for r in rows:
            assert r["intensity_unit"] == "HU" and -1100 < float(r["mean_intensity"]) < 500
            assert 0.0 <= float(r["classifier_probability"]) <= 1.0
            # the centroid (LPS) lies inside the volume's bounding box in patient space
            ras = np.array(
                [-float(r["centroid_lps_x"]), -float(r["centroid_lps_y"]), float(r["centroid_lps_z"]), 1]
            )
            ijk = np.linalg.inv(img.affine) @ ras
            assert all(-0.5 <= v <= n - 0.5 for v, n in zip(ijk[:3], mask.shape, strict=True))
        png = run["out"] / sid / f"{sid}_preview.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_patient_identity_outside_the_seg(run: dict) -> None:
    needles = [PATIENT_ID, PATIENT_NAME, "Janet", "Doe"]
    for path in run["out"].rglob("*"):
        assert not any(n in path.name for n in needles), path.name
        if path.is_file() and not path.name.endswith(".dcm"):
            data = path.read_bytes()
            if path.name.endswith(".nii.gz"):
                data = nib.load(path).header.binaryblock  # descrip, aux_file, intent_name...
            assert not any(n.encode() in data for n in needles), path
    assert not any(n in line for line in run["logs"] for n in needles)
    seg = next(run["out"].rglob("*_seg.dcm"))
    assert pydicom.dcmread(seg).PatientID == PATIENT_ID  # DICOM requires it in the SEG (documented)


def test_rerun_skips_done_series_and_the_cli_reports_partial_success(run: dict) -> None:
    from click.testing import CliRunner

    from medpipe.cli import cli

    outputs = sorted(p for p in run["out"].rglob("*") if p.is_file() and p.parent != run["out"])
    before = {p: p.stat().st_mtime_ns for p in outputs}
    args = ["infer", "--bundle", str(BUNDLE), "--input", str(run["inputs"]), "--output", str(run["out"]),
            "--classifier", str(run["classifier"]), "--set", "sliding_window_inferer#sw_batch_size=4"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 4, result.output  # EXIT_PARTIAL: two series still fail
    assert "0 done, 2 skipped (done earlier), 2 failed" in result.output
    assert {p: p.stat().st_mtime_ns for p in outputs} == before  # nothing rewritten
    assert len(_rows(run["out"] / "lesions.csv")) == run["summary"]["lesions"]


def test_interrupted_run_leaves_no_partial_files_and_resumes(run: dict, tmp_path: Path) -> None:
    from medpipe.infer.run import InferOptions, infer

    nifti_only = InferOptions(formats=["nifti"], overrides=FAST, progress=False)

    out = tmp_path / "out"
    inputs = tmp_path / "in"
    inputs.mkdir()
    for folder in run["good"]:
        shutil.copytree(folder, inputs / folder.name)

    def stop_after_first(series: str, status: str) -> None:
        raise KeyboardInterrupt  # as a Ctrl-C (or a kill) right after the first series is complete

    with pytest.raises(KeyboardInterrupt):
        infer(BUNDLE, inputs, out, nifti_only, echo=lambda _: None, after_series=stop_after_first)
    assert not [p for p in out.rglob("*") if p.name.startswith(".tmp-")]
    done = [p.parent.name for p in out.glob("*/done.json")]
    assert len(done) == 1 and len([p for p in out.iterdir() if p.is_dir()]) == 1
    assert len(_rows(out / "results.csv")) == 1  # the run-level reports say what was done so far

    summary = infer(BUNDLE, inputs, out, nifti_only, echo=lambda _: None)
    assert (summary["done"], summary["skipped"], summary["failed"]) == (1, 1, 0)
    assert not list(out.rglob("*_seg.dcm"))  # --format nifti only
    # a different bundle version (or weights, or input) is not "done": the series runs again
    record = out / done[0] / "done.json"
    content = json.loads(record.read_text())
    content["record"]["bundle_version"] = "0.0.9"
    record.write_text(json.dumps(content))
    summary = infer(BUNDLE, inputs, out, nifti_only, echo=lambda _: None)
    assert (summary["done"], summary["skipped"]) == (1, 1)


def test_slab_inversion_equals_the_bundles_invertd(run: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from medpipe.bundle import model as model_module
    from medpipe.bundle.model import BundleModel
    from medpipe.infer.sources import discover
    from medpipe.operating_point import KeepLesionsd

    model = BundleModel.open(BUNDLE, overrides=FAST)
    assert model_module.lean_split(model.postprocessing) is not None
    image = discover(run["good"][0]).sources[0].load()
    model.slab_voxels = 20_000  # many slabs
    lean = model.segment(image)
    monkeypatch.setattr(model_module, "lean_split", lambda post: None)  # the bundle's own Invertd
    # without the operating point, which the lean path leaves to its callers (their candidates table needs
    # every component; test_lung_nodule_bundle checks that MONAI's run and infer keep the same lesions)
    model.postprocessing = [t for t in model.postprocessing if not isinstance(t, KeepLesionsd)]
    full = model.segment(image)
    assert lean.sum() > 0
    assert (lean != full).mean() < 1e-4, (lean != full).sum()


def test_nifti_input_gets_mask_and_table_but_no_seg(run: dict, tmp_path: Path) -> None:
    from medpipe.convert import convert
    from medpipe.infer.run import InferOptions, infer

    conv = tmp_path / "nii"
    convert(run["good"][0], conv)
    summary = infer(BUNDLE, conv, tmp_path / "out", InferOptions(overrides=FAST, progress=False), echo=lambda _: None)
    assert (summary["done"], summary["failed"]) == (1, 0)
    (folder,) = [p for p in (tmp_path / "out").iterdir() if p.is_dir()]
    assert folder.name.startswith("nii-") and not list(folder.glob("*.dcm"))
    sid = next(conv.glob("*.nii.gz")).name[: -len(".nii.gz")]
    ref = np.asarray(nib.load(run["out"] / sid / f"{sid}_seg.nii.gz").dataobj)
    np.testing.assert_array_equal(np.asarray(nib.load(next(folder.glob("*_seg.nii.gz"))).dataobj), ref)


def test_series_without_preamble_gets_its_seg_too(run: dict, tmp_path: Path) -> None:
    """Archive exports without the 128-byte preamble / "DICM" are read (medpipe.dicom.headers.dcmread) by
    discovery, and by the DICOM SEG writer, which reads the source headers again."""
    from medpipe.infer.run import InferOptions, infer

    bare = tmp_path / "bare" / "series"
    bare.mkdir(parents=True)
    for f in sorted(run["good"][0].iterdir()):
        data = f.read_bytes()
        assert data[128:132] == b"DICM"
        (bare / f.name).write_bytes(data[132:])
    summary = infer(BUNDLE, bare.parent, tmp_path / "out", InferOptions(overrides=FAST, progress=False),
                    echo=lambda _: None)  # fmt: skip
    assert (summary["done"], summary["failed"]) == (1, 0), summary
    (folder,) = [p for p in (tmp_path / "out").iterdir() if p.is_dir()]
    (seg,) = folder.glob("*.dcm")
    assert pydicom.dcmread(seg).Modality == "SEG"
    ref = np.asarray(nib.load(run["out"] / folder.name / f"{folder.name}_seg.nii.gz").dataobj)
    np.testing.assert_array_equal(np.asarray(nib.load(next(folder.glob("*_seg.nii.gz"))).dataobj), ref)


def test_cli_exit_3_when_nothing_can_be_processed(run: dict, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from medpipe.cli import cli

    mr_only = run["inputs"] / "other_mr"
    result = CliRunner().invoke(
        cli, ["infer", "--bundle", str(BUNDLE), "--input", str(mr_only), "-o", str(tmp_path)]
    )
    assert result.exit_code == 3 and "INFER_NOTHING_DONE" in result.output, result.output
    assert [r["code"] for r in _rows(tmp_path / "failures.csv")] == ["INFER_UNSUPPORTED_MODALITY"]
    inside = CliRunner().invoke(
        cli, ["infer", "--bundle", str(BUNDLE), "--input", str(mr_only), "-o", str(mr_only / "o")]
    )
    assert inside.exit_code == 3 and "INFER_OUTPUT_INSIDE_INPUT" in inside.output
    assert not (mr_only / "o").exists()


def test_out_of_memory_on_one_series_is_recorded_and_the_run_goes_on(
    run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medpipe.bundle.model import BundleModel
    from medpipe.infer import run as run_module

    real_segment = BundleModel.segment_with_scores
    calls = []

    def segment(self, image, name="image", **kwargs):  # the first series exhausts memory, the next one is fine
        calls.append(name.removeprefix("series "))
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_segment(self, image, name, **kwargs)

    monkeypatch.setattr(BundleModel, "segment_with_scores", segment)
    inputs = tmp_path / "in"
    for folder in run["good"]:
        shutil.copytree(folder, inputs / folder.name)
    options = run_module.InferOptions(formats=["nifti"], progress=False)
    summary = run_module.infer(BUNDLE, inputs, tmp_path / "out", options, echo=lambda _: None)
    assert (summary["done"], summary["failed"]) == (1, 1)
    (failure,) = _rows(tmp_path / "out" / "failures.csv")
    assert failure["code"] == "INFER_OUT_OF_MEMORY" and failure["series"] == calls[0]
    assert (
        not (tmp_path / "out" / calls[0]).exists() and (tmp_path / "out" / calls[1] / "done.json").is_file()
    )


def test_show_paths_adds_where_each_series_lies_and_nothing_else(run: dict, tmp_path: Path) -> None:
    from medpipe.infer.run import InferOptions, infer

    assert "source" not in _rows(run["out"] / "results.csv")[0]
    inputs = tmp_path / "in"
    shutil.copytree(run["good"][0], inputs / run["good"][0].name)
    options = InferOptions(formats=["nifti"], overrides=FAST, show_paths=True, progress=False)
    infer(BUNDLE, inputs, tmp_path / "out", options, echo=lambda _: None)
    (row,) = _rows(tmp_path / "out" / "results.csv")
    assert row["source"] == run["good"][0].name and row["status"] == "ok"  # the folder named after the patient
    assert not any(PATIENT_NAME.split("^")[1] in p.name for p in (tmp_path / "out").rglob("*"))  # ids still hashed


def test_lesions_have_scores_and_the_mask_holds_only_those_at_the_operating_point(run: dict, tmp_path: Path) -> None:
    from medpipe.infer.run import InferOptions, infer

    # every component of the run: those at the shipped operating point and the candidates below it
    rows = _rows(run["out"] / "lesions.csv") + _rows(run["out"] / "candidates.csv")
    scores = sorted(float(r["score"]) for r in rows)
    assert scores and all(0.5 <= s <= 1.0 for s in scores)  # argmax components: foreground wins somewhere
    weights = tmp_path / "run"
    weights.mkdir()
    shutil.copy(BUNDLE / "models" / "model.pt", weights / "model.pt")
    distinct = sorted(set(scores))
    assert len(distinct) >= 2, distinct
    threshold = (distinct[len(distinct) // 2 - 1] + distinct[len(distinct) // 2]) / 2  # between two scores
    (weights / "operating_point.json").write_text(json.dumps({"score_threshold": threshold}))
    inputs = tmp_path / "in"
    for folder in run["good"]:
        shutil.copytree(folder, inputs / folder.name)
    options = InferOptions(formats=["nifti"], weights=weights, overrides=FAST, progress=False)
    summary = infer(BUNDLE, inputs, tmp_path / "out", options, echo=lambda _: None)
    lesions, candidates = _rows(tmp_path / "out" / "lesions.csv"), _rows(tmp_path / "out" / "candidates.csv")
    assert lesions and candidates and summary["lesions"] == len(lesions) and summary["candidates"] == len(candidates)
    assert all(float(r["score"]) >= threshold for r in lesions) and all(float(r["score"]) < threshold for r in candidates)
    assert len(lesions) + len(candidates) == len(rows)  # the same components, split at the operating point
    for sid in {r["series"] for r in lesions}:
        mask = np.asarray(nib.load(tmp_path / "out" / sid / f"{sid}_seg.nii.gz").dataobj)
        assert int(mask.sum()) == sum(int(r["voxels"]) for r in lesions if r["series"] == sid)


def test_shards_split_the_series_and_a_plain_run_gathers_them(run: dict, tmp_path: Path) -> None:
    """``--shard K/N`` for array jobs sharing one output folder: disjoint shards that together hold every
    series, each with the masks of the one-process run and its own reports; a run without --shard then
    skips every series done and writes the combined reports."""
    from medpipe.errors import InputError
    from medpipe.infer.records import in_shard
    from medpipe.infer.run import InferOptions, infer

    out = tmp_path / "out"
    seen: list[set[str]] = []
    for k in (1, 2):
        options = InferOptions(formats=["nifti"], overrides=FAST, progress=False, shard=f"{k}/2")
        summary = infer(BUNDLE, run["inputs"], out, options, echo=lambda _: None)
        rows = _rows(out / f"results-{k}-of-2.csv")
        assert json.loads((out / f"summary-{k}-of-2.json").read_text())["series"] == summary["series"] == len(rows)
        assert all(in_shard(r["series"], (k, 2)) for r in rows)
        seen.append({r["series"] for r in rows})
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == run["summary"]["series"]
    assert not (out / "results.csv").exists()  # no shard writes the run's reports
    for folder in out.iterdir():
        if folder.is_dir():
            np.testing.assert_array_equal(np.asarray(nib.load(folder / f"{folder.name}_seg.nii.gz").dataobj),
                                          np.asarray(nib.load(run["out"] / folder.name / f"{folder.name}_seg.nii.gz").dataobj))  # fmt: skip
    gathered = infer(BUNDLE, run["inputs"], out, InferOptions(formats=["nifti"], overrides=FAST, progress=False),
                     echo=lambda _: None)  # fmt: skip
    assert (gathered["series"], gathered["skipped"], gathered["done"]) == (4, 2, 0)
    assert {r["series"] for r in _rows(out / "results.csv")} == seen[0] | seen[1]
    for bad in ("3/2", "0/2", "1/0", "a/b", "2"):
        with pytest.raises(InputError) as e:
            infer(BUNDLE, run["inputs"], tmp_path / "never", InferOptions(shard=bad, progress=False))
        assert e.value.code == "INFER_BAD_SHARD"
    assert not (tmp_path / "never").exists()
