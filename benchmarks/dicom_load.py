#!/usr/bin/env python
"""Benchmark: load one DICOM CT series folder into a 3-D array with its geometry.

Methods (each call does discovery + header parsing + pixel read + assembly, from the folder path):

* ``medpipe``        -- ``medpipe.dicom.volume.load_dicom(folder)``
* ``simpleitk``      -- ``ImageSeriesReader.GetGDCMSeriesFileNames`` + ``Execute`` + ``GetArrayFromImage``
* ``monai_pydicom``  -- ``monai.transforms.LoadImage(reader="PydicomReader", image_only=True)(folder)``
* ``monai_itk``      -- ``monai.transforms.LoadImage(reader="ITKReader", image_only=True)(folder)`` (context)

Each method runs once as a warm-up (its result is used to check that every method returns the same
voxels on the same grid: arrays are brought to one canonical LPS orientation through their affines and
compared exactly, and the world geometry is compared to 1e-3 mm). Then ``--rounds`` rounds time every
method once per round; the order rotates each round so drift and background load hit all methods alike.
Files are in the page cache after the warm-up: this measures warm-cache loading (CPU work), not disk.

Targets (checked on the ratio of medians): medpipe / SimpleITK <= 1.0 and PydicomReader / medpipe >= 2.0.

    python benchmarks/dicom_load.py [SERIES_FOLDER] [--rounds 15] [--json results.json] [--strict]

Exit status: 0, or 2 when the methods disagree on voxels/geometry, or 1 with ``--strict`` when a target
is missed.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _common import REPO, cpu_snapshot, loadavg, machine_info, other_cpu

DEFAULT_SERIES = REPO.parent / "shared" / "data" / "lung_ct_dicom_cptac_lscc" / "series"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse
TARGET_MEDPIPE_VS_SITK = 1.0  # medpipe / SimpleITK must be <= this
TARGET_PYDICOM_VS_MEDPIPE = 2.0  # MONAI PydicomReader / medpipe must be >= this


# --------------------------------------------------------------------------------------------- methods
def make_methods(folder: str) -> dict[str, Callable[[], object]]:
    import SimpleITK as sitk
    from monai.transforms import LoadImage

    from medpipe.dicom.volume import load_dicom

    pydicom_loader = LoadImage(reader="PydicomReader", image_only=True)
    itk_loader = LoadImage(reader="ITKReader", image_only=True)

    def simpleitk():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(folder))
        image = reader.Execute()
        return image, sitk.GetArrayFromImage(image)

    return {
        "medpipe": lambda: load_dicom(folder),
        "simpleitk": simpleitk,
        "monai_pydicom": lambda: pydicom_loader(folder),
        "monai_itk": lambda: itk_loader(folder),
    }


def as_array_and_lps_affine(name: str, result: object) -> tuple[np.ndarray, np.ndarray]:
    """(array indexed [i, j, k], 4x4 voxel->LPS affine) of one method's result (not timed)."""
    if name == "medpipe":
        return result.array, np.asarray(result.affine_lps, float)  # type: ignore[attr-defined]
    if name == "simpleitk":
        image, zyx = result  # type: ignore[misc]
        affine = np.eye(4)
        affine[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
        affine[:3, 3] = image.GetOrigin()
        return zyx.transpose(2, 1, 0), affine  # numpy (z, y, x) -> [x, y, z] = [i, j, k]
    # MONAI MetaTensor: [i, j, k] array with a RAS affine (meta "space")
    tensor = result
    affine = np.asarray(tensor.affine, float)  # type: ignore[attr-defined]
    if str(tensor.meta.get("space", "RAS")).upper() == "RAS":  # type: ignore[attr-defined]
        affine = LPS_TO_RAS @ affine
    return tensor.numpy(), affine  # type: ignore[attr-defined]


def canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permute/flip axes so array axis d runs along +LPS axis d; return the view and its affine."""
    if array.ndim != 3:
        array = np.squeeze(array)
    rot = affine[:3, :3]
    world_axis = np.abs(rot).argmax(axis=0)  # which LPS axis each array axis follows
    if sorted(world_axis.tolist()) != [0, 1, 2]:
        raise ValueError(f"oblique or degenerate affine, cannot canonicalise: {rot}")
    perm = np.argsort(world_axis)  # array axes in L, P, S order
    out = array.transpose(perm)
    aff = np.eye(4)
    aff[:3, :3] = rot[:, perm]
    aff[:3, 3] = affine[:3, 3]
    for d in range(3):
        if aff[d, d] < 0:  # runs toward -d: flip, moving the origin to the far end
            aff[:3, 3] += aff[:3, d] * (out.shape[d] - 1)
            aff[:3, d] *= -1
            out = np.flip(out, axis=d)
    return out, aff


def verify(results: dict[str, object], folder: Path) -> dict[str, object]:
    """Every method must give the same voxel values on the same grid; also compare to the reference md5."""
    canon = {name: canonical(*as_array_and_lps_affine(name, r)) for name, r in results.items()}
    ref_name = "simpleitk"
    ref_arr, ref_aff = canon[ref_name]
    report: dict[str, object] = {"reference": ref_name, "methods": {}}
    ok = True
    for name, (arr, aff) in canon.items():
        same_shape = arr.shape == ref_arr.shape
        # exact comparison (int16 and float32 hold these integers exactly)
        same_values = bool(same_shape and np.array_equal(arr, ref_arr))
        geom_err = float(np.abs(aff - ref_aff).max())
        entry = {
            "dtype": str(arr.dtype),
            "shape_canonical": list(arr.shape),
            "same_voxels_as_reference": same_values,
            "max_affine_difference_mm": round(geom_err, 6),
        }
        if not same_values and same_shape:
            entry["max_abs_voxel_difference"] = float(np.abs(arr.astype(np.float64) - ref_arr).max())
        ok &= same_values and geom_err <= 1e-3
        report["methods"][name] = entry  # type: ignore[index]
    # The dataset ships the md5 of SimpleITK's (z, y, x) int16 array: also pins the reference itself.
    ref_json = folder.parent / "reference_geometry.json"
    if ref_json.is_file():
        try:
            expected = json.loads(ref_json.read_text())["simpleitk_2.5.7_ImageSeriesReader_GDCM"][
                "md5_of_array_zyx_c_order_int16"
            ]
            zyx = np.ascontiguousarray(ref_arr.astype(np.int16).transpose(2, 1, 0))
            got = hashlib.md5(zyx.tobytes()).hexdigest()
            report["reference_md5_matches_dataset"] = got == expected
            ok &= got == expected
        except (KeyError, ValueError):
            pass
    report["affine_lps_canonical"] = np.round(ref_aff, 4).tolist()
    report["ok"] = bool(ok)
    return report


# --------------------------------------------------------------------------------------------- machine
def stats(times: list[float]) -> dict[str, float]:
    q1, q2, q3 = np.percentile(times, [25, 50, 75])
    return {
        "median_s": float(q2),
        "q1_s": float(q1),
        "q3_s": float(q3),
        "iqr_s": float(q3 - q1),
        "min_s": float(min(times)),
        "max_s": float(max(times)),
        "n": len(times),
    }


def time_once(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds of one call, CPU seconds other processes used meanwhile)."""
    gc.collect()
    c0 = cpu_snapshot()
    t0 = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - t0
    c1 = cpu_snapshot()
    del result  # freed outside the timed region
    return elapsed, other_cpu(c0, c1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "series", nargs="?", default=str(DEFAULT_SERIES), help=f"series folder (default {DEFAULT_SERIES})"
    )
    ap.add_argument("--rounds", type=int, default=15, help="timed rounds; each round runs every method once")
    ap.add_argument("--json", metavar="OUT", help="write all timings, stats and the machine description here")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args(argv)

    warnings.simplefilter("ignore")  # MONAI/pydicom warnings are not what is measured
    folder = Path(args.series).resolve()
    if not folder.is_dir():
        print(f"series folder not found: {folder}", file=sys.stderr)
        return 2
    n_files = sum(1 for p in folder.iterdir() if p.is_file())
    size_mb = sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) / 1e6

    methods = make_methods(str(folder))
    import SimpleITK as sitk
    import torch

    machine = machine_info(("numpy", "pydicom", "SimpleITK", "itk", "monai", "torch"))
    machine.update(
        SimpleITK_threads=sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
        torch_threads=torch.get_num_threads(),
    )
    load_start = loadavg()
    print("== DICOM series load benchmark ==")
    print(f"series : {folder} ({n_files} files, {size_mb:.1f} MB)")
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()))
    print(f"loadavg at start: {load_start}")

    # Warm-up (also first-call imports/initialisation) and correctness check.
    warm: dict[str, float] = {}
    results = {}
    for name, fn in methods.items():
        gc.collect()
        t0 = time.perf_counter()
        results[name] = fn()
        warm[name] = time.perf_counter() - t0
    check = verify(results, folder)
    del results
    print("\n-- correctness (all methods vs SimpleITK, after canonical LPS orientation) --")
    for name, entry in check["methods"].items():  # type: ignore[union-attr]
        print(
            f"  {name:14s} dtype={entry['dtype']:8s} same voxels={entry['same_voxels_as_reference']} "
            f"max affine diff={entry['max_affine_difference_mm']} mm"
        )
    if "reference_md5_matches_dataset" in check:
        print(
            f"  SimpleITK array md5 matches reference_geometry.json: {check['reference_md5_matches_dataset']}"
        )
    print(f"  verdict: {'SAME DATA' if check['ok'] else 'MISMATCH'}")
    print("  warm-up (first call, s): " + ", ".join(f"{k}={v:.3f}" for k, v in warm.items()))

    names = list(methods)
    times: dict[str, list[float]] = {n: [] for n in names}
    per_round: list[dict[str, float]] = []
    other: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate: each method in each position
        row = {}
        noise = 0.0
        for name in order:
            row[name], busy = time_once(methods[name])
            times[name].append(row[name])
            other[name].append(busy)
            noise += busy
        per_round.append(row)
        print(
            f"  round {r + 1:2d}/{args.rounds}: "
            + "  ".join(f"{n}={row[n] * 1000:7.1f} ms" for n in names)
            + f"  | other processes {noise:.2f} cpu-s",
            flush=True,
        )
    load_end = loadavg()

    summary = {n: stats(t) for n, t in times.items()}
    med = {n: s["median_s"] for n, s in summary.items()}
    ratio_mp_sitk = med["medpipe"] / med["simpleitk"]
    ratio_pyd_mp = med["monai_pydicom"] / med["medpipe"]
    paired_mp_sitk = [row["medpipe"] / row["simpleitk"] for row in per_round]
    paired_pyd_mp = [row["monai_pydicom"] / row["medpipe"] for row in per_round]

    print(
        f"\n-- results: {args.rounds} rounds, warm page cache; loadavg start {load_start} end {load_end} --"
    )
    print(
        "  (other processes' CPU during the timed calls, total: "
        + ", ".join(f"{n} {sum(v):.2f} s" for n, v in other.items())
        + ")"
    )
    print(f"  {'method':14s} {'median ms':>10s} {'IQR ms':>8s} {'min ms':>8s} {'max ms':>8s}  vs medpipe")
    for n in names:
        s = summary[n]
        print(
            f"  {n:14s} {s['median_s'] * 1e3:10.1f} {s['iqr_s'] * 1e3:8.1f} {s['min_s'] * 1e3:8.1f} "
            f"{s['max_s'] * 1e3:8.1f}  {s['median_s'] / med['medpipe']:6.2f}x"
        )
    q = lambda v: np.percentile(v, [25, 50, 75])  # noqa: E731
    a, b = q(paired_mp_sitk), q(paired_pyd_mp)
    print(
        f"  medpipe / SimpleITK      = {ratio_mp_sitk:.3f} (ratio of medians; per-round paired median "
        f"{a[1]:.3f}, IQR {a[0]:.3f}-{a[2]:.3f})  target <= {TARGET_MEDPIPE_VS_SITK}"
    )
    print(
        f"  PydicomReader / medpipe  = {ratio_pyd_mp:.2f} (ratio of medians; per-round paired median "
        f"{b[1]:.2f}, IQR {b[0]:.2f}-{b[2]:.2f})  target >= {TARGET_PYDICOM_VS_MEDPIPE}"
    )
    pass_sitk = ratio_mp_sitk <= TARGET_MEDPIPE_VS_SITK
    pass_pyd = ratio_pyd_mp >= TARGET_PYDICOM_VS_MEDPIPE
    verdict = "PASS" if (pass_sitk and pass_pyd and check["ok"]) else "FAIL"
    print(
        f"{verdict}: medpipe/SimpleITK {ratio_mp_sitk:.3f} {'<=' if pass_sitk else '>'} {TARGET_MEDPIPE_VS_SITK}, "
        f"PydicomReader/medpipe {ratio_pyd_mp:.2f} {'>=' if pass_pyd else '<'} {TARGET_PYDICOM_VS_MEDPIPE}, "
        f"voxels {'identical' if check['ok'] else 'DIFFER'}"
    )

    if args.json:
        out = {
            "benchmark": "dicom_load",
            "series": str(folder),
            "n_files": n_files,
            "size_mb": round(size_mb, 2),
            "rounds": args.rounds,
            "machine": machine,
            "loadavg_start": load_start,
            "loadavg_end": load_end,
            "warmup_s": warm,
            "correctness": check,
            "times_s": times,
            "per_round_s": per_round,
            "other_processes_cpu_s": other,
            "stats": summary,
            "ratio_medpipe_over_simpleitk": ratio_mp_sitk,
            "ratio_pydicomreader_over_medpipe": ratio_pyd_mp,
            "paired_ratio_medpipe_over_simpleitk_median": float(a[1]),
            "paired_ratio_pydicomreader_over_medpipe_median": float(b[1]),
            "targets": {
                "medpipe_over_simpleitk_max": TARGET_MEDPIPE_VS_SITK,
                "pydicomreader_over_medpipe_min": TARGET_PYDICOM_VS_MEDPIPE,
            },
            "verdict": verdict,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"results written to {args.json}")
    if not check["ok"]:
        return 2
    return 1 if (args.strict and verdict != "PASS") else 0


if __name__ == "__main__":
    sys.exit(main())
