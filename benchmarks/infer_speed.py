#!/usr/bin/env python
"""Benchmark: ``medpipe infer``'s path against what a MONAI user writes, on the same CTs, in one run.

Per case (``--cases``), alternating, ``--repeats`` times, each run a fresh subprocess (its own peak RSS):

* ``baseline`` -- the bundle's configs parsed with MONAI's ``ConfigParser``; its preprocessing from
  ``LoadImaged`` (MONAI's default reader for the DICOM folder or NIfTI file) on; then
  ``sliding_window_inference(x, roi_size, sw_batch_size=4, network, overlap=0.25, mode=<the bundle's>)``
  under ``torch.no_grad()`` in float32 (hippocampus: the bundle's flip-TTA around that call); then the
  bundle's post-processing as written: softmax, (lungs) ``RestrictToLungsd``, ``Invertd`` on the full
  volume, (lungs) ``KeepLesionsd``, ``AsDiscreted(argmax)``, ``SaveImaged``. The sliding window uses the
  bundle's blending mode (gaussian) so that both paths compute the same function.
* ``medpipe:<variant>`` -- ``medpipe infer``'s per-series path (:func:`medpipe.infer.series.process_series`,
  ``--format nifti``): its DICOM loader, the bundle's preprocessing in float32, the bundle's inferer, the
  inversion slab by slab, lesions at the operating point, then the mask NIfTI, the lesion tables and the
  preview PNG. Timed from the load to the mask on disk (``seconds``), and to its last output (``all_s``).

Variants: ``default`` (what ``medpipe infer`` does), and one change each: ``fp32`` / ``bf16`` (torch
precision), ``noskip`` (every sliding window, not only those overlapping the lung field), ``bs4`` /
``bs16`` (windows per forward pass; default 8), ``threads1`` (one torch thread), ``inference_mode``,
``onnxruntime``, ``openvino_fp32``, ``openvino_bf16``, ``compile`` (``torch.compile`` of the network;
its compilation is inside the timed path, since every ``medpipe infer`` process would pay it), and
``grid_inversion`` (the inversion before this benchmark: ``grid_sample`` + MONAI's argmax).

Printed per case and path: median seconds, ratio baseline / path (> 1: faster than MONAI), Dice
agreement of the masks with the baseline's (foreground > 0, on the input grid), peak RSS. CPU time of
other processes during each run is printed too: run it alone (``flock /tmp/medpipe-cpu.lock``).

    python benchmarks/infer_speed.py [--cases cptac,lidc,hippocampus] [--repeats 3]
        [--variants default,fp32,...|all] [--json OUT]

Exit status 1 when the target is missed: median ratio >= 3 for ``default`` on both CTs, at Dice
agreement >= 0.995 (>= 0.99 for the ONNX Runtime / OpenVINO variants, which are reported, not targets).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import REPO, cpu_snapshot, loadavg, machine_info, other_cpu

SHARED = REPO.parent / "shared" / "data"
CASES = {
    "cptac": ("lung_nodule_ct", SHARED / "lung_ct_dicom_cptac_lscc" / "series"),
    "lidc": (
        "lung_nodule_ct",
        next((SHARED / "lidc_idri_0003_dicom_xml" / "LIDC-IDRI-0003").glob("*/*"), None),
    ),
    "hippocampus": ("hippocampus_mri", REPO / "data_manifests" / "hippocampus_mri.json"),
}
#: variant -> (backend, precision, config overrides, other switches)
VARIANTS: dict[str, tuple[str | None, str | None, dict, dict]] = {
    "default": (None, None, {}, {}),
    "fp32": ("torch", "fp32", {}, {}),
    "bf16": ("torch", "bf16", {}, {}),
    "noskip": (None, None, {"lung_window_inferer#skip": False}, {}),
    "bs4": (None, None, {"lung_window_inferer#sw_batch_size": 4}, {}),
    "bs16": (None, None, {"lung_window_inferer#sw_batch_size": 16}, {}),
    "threads1": (None, None, {}, {"threads": 1}),
    "inference_mode": (None, None, {}, {"inference_mode": True}),
    "onnxruntime": ("onnxruntime", None, {}, {}),
    "openvino_fp32": ("openvino", "fp32", {}, {}),
    "openvino_bf16": ("openvino", "bf16", {}, {}),
    "compile": (None, None, {}, {"compile": True}),
    "grid_inversion": (None, None, {}, {"grid_inversion": True}),
}
TARGET_RATIO, TARGET_DICE, TARGET_DICE_EXPORTED = 3.0, 0.995, 0.99

#: one run in a fresh process: argv = path kind, bundle, input, output folder, JSON options
CHILD = r"""
import json, sys, time, resource
sys.path.insert(0, sys.argv[6])
kind, bundle, src, out, opts = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
import numpy as np, torch
from pathlib import Path
result = {}
if opts.get("threads"):
    torch.set_num_threads(int(opts["threads"]))
if kind == "baseline":
    from monai.bundle import ConfigParser
    from monai.inferers import sliding_window_inference
    from medpipe.bundle.weights import load_weights
    from medpipe.data.manifest import inference_inputs
    from medpipe.tta import FlipTTAInferer
    from monai.inferers import Inferer
    root = Path(bundle)
    p = ConfigParser()
    p.read_config([str(root / "configs" / "common.json"), str(root / "configs" / "inference.json")])
    p["bundle_root"] = str(root)
    p["output_dir"] = out
    net = p.get_parsed_content("network_def")
    load_weights(net, root / "models" / "model.pt")
    net.eval()
    pre = p.get_parsed_content("preprocessing")
    post = p.get_parsed_content("postprocessing")
    roi, mode = p["roi_size"], p["sliding_window_inferer"]["mode"]

    class Literal(Inferer):  # what a MONAI user writes
        def __call__(self, x, network):
            return sliding_window_inference(x, roi, 4, network, overlap=0.25, mode=mode)

    tta = p.get("tta_flip_axes")
    inferer = FlipTTAInferer(Literal(), tta) if tta is not None and "tta_inferer" in str(p["inferer"]) else Literal()
    inputs = [src] if Path(src).is_dir() else [e["image"] for e in inference_inputs(None, src, "test")]
    masks, seen = {}, set()
    t0 = time.perf_counter()
    for item in inputs:
        d = pre({"image": item})
        with torch.no_grad():
            d["pred"] = inferer(d["image"][None], net)[0]
        for t in post.transforms:
            d = t(d)
        new = set(Path(out).glob("*_seg.nii.gz")) - seen  # outside the timing would not change it
        seen |= new
        masks[str(item)] = str(new.pop())
    result["seconds"] = result["all_s"] = time.perf_counter() - t0
    result["masks"] = masks
else:
    import medpipe.infer.series as series
    from medpipe.bundle.model import BundleModel
    from medpipe.dicom.geometry import DEFAULT_OPTIONS
    from medpipe.infer.sources import discover
    from medpipe.data.manifest import inference_inputs
    t_open = time.perf_counter()
    model = BundleModel.open(bundle, backend=opts.get("backend"), precision=opts.get("precision"),
                             overrides=opts.get("overrides") or {}, user_ids=tuple(opts.get("overrides") or {}))
    if opts.get("inference_mode"):
        model.grad_mode = torch.inference_mode
    if opts.get("compile"):
        model.network = torch.compile(model.network)
    if opts.get("grid_inversion"):
        import medpipe.bundle.inversion as inv
        inv.separable_axes = lambda *a: None
        inv.is_plain_argmax = lambda after: False
    result["open_s"] = time.perf_counter() - t_open
    result["backend"] = model.backend
    marks = []
    write_nifti = series.write_nifti
    def timed_write(*a, **k):
        write_nifti(*a, **k)
        marks.append(time.perf_counter())
    series.write_nifti = timed_write
    if Path(src).is_dir():
        sources = [(src, s) for s in discover(Path(src), DEFAULT_OPTIONS).sources]
    else:
        sources = [(e["image"], discover(Path(e["image"])).sources[0]) for e in inference_inputs(None, src, "test")]
    t0 = time.perf_counter()
    ends = []
    masks = {}
    for item, s in sources:
        folder = Path(out) / s.id
        folder.mkdir(parents=True, exist_ok=True)
        series.process_series(s, model, None, ("nifti",), folder)
        ends.append(time.perf_counter())
        masks[str(item)] = str(folder / f"{s.id}_seg.nii.gz")
    # load -> mask on disk of every series: the time to the last mask, less each series' outputs after its mask
    starts = [t0] + ends[:-1]
    result["seconds"] = sum(m - s for m, s in zip(marks, starts))
    result["all_s"] = ends[-1] - t0
    result["masks"] = masks
    inferer = getattr(model.inferer, "inferer", model.inferer)
    if hasattr(inferer, "computed"):
        result["windows"] = [inferer.computed, inferer.skipped]
result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
print("RESULT " + json.dumps(result))
"""


def run(kind: str, bundle: Path, src: Path, out: Path, opts: dict) -> dict:
    before = cpu_snapshot()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(bundle), str(src), str(out), json.dumps(opts), str(REPO)],
        capture_output=True, text=True,
    )  # fmt: skip
    after = cpu_snapshot()
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"{kind} {opts} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(line[len("RESULT ") :])
    result["other_cpu_s"] = round(other_cpu(before, after), 1)
    return result


def mask_dice(baseline: dict[str, str], ours: dict[str, str]) -> tuple[float, int]:
    """Dice of the foreground of two sets of masks (pooled over the cases; 1.0 when both are empty) and
    the voxels whose label differs. Masks are matched by input and compared on the input grid (both
    reoriented to the closest canonical axes)."""
    import nibabel as nib
    import numpy as np

    if sorted(baseline) != sorted(ours):
        raise SystemExit(f"{len(baseline)} baseline masks, {len(ours)} medpipe masks: not the same inputs")
    inter = total = differ = 0
    for a_path, b_path in ((baseline[k], ours[k]) for k in sorted(baseline)):
        a_img, b_img = nib.as_closest_canonical(nib.load(a_path)), nib.as_closest_canonical(nib.load(b_path))
        if not np.allclose(a_img.affine, b_img.affine, atol=1e-3):
            raise SystemExit(f"{a_path} and {b_path} are not on the same grid")
        a, b = np.asarray(a_img.dataobj).squeeze(), np.asarray(b_img.dataobj).squeeze()
        inter += int(((a > 0) & (b > 0)).sum())
        total += int((a > 0).sum() + (b > 0).sum())
        differ += int((a != b).sum())
    return (2 * inter / total if total else 1.0), differ


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="cptac,lidc,hippocampus")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", default="default", help="comma-separated, or 'all'")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    variants = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v}; known: {', '.join(VARIANTS)}")
    print(json.dumps(machine_info(("numpy", "torch", "monai", "onnxruntime", "openvino"))))
    flags = open("/proc/cpuinfo").read().split("flags", 1)[-1].split("\n", 1)[0].split()
    print("ISA:", " ".join(f for f in flags if f.startswith(("avx", "amx", "fma"))))
    report: dict = {}
    missed = False
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases.split(","):
            bundle_name, src = CASES[case]
            if src is None or not Path(src).exists():
                print(f"{case}: input {src} missing, skipped")
                continue
            bundle = REPO / "bundles" / bundle_name
            paths = ["baseline"] + [f"medpipe:{v}" for v in variants]
            runs: dict[str, list[dict]] = {p: [] for p in paths}
            for r in range(args.repeats):
                for p in paths if r % 2 == 0 else paths[::-1]:  # alternate the order between repeats
                    out = Path(tmp) / f"{case}-{p.replace(':', '-')}-{r}"
                    out.mkdir()
                    if p == "baseline":
                        res = run("baseline", bundle, src, out, {})
                    else:
                        backend, precision, overrides, extra = VARIANTS[p.split(":")[1]]
                        if bundle_name != "lung_nodule_ct":
                            overrides = {}  # the lung-window switches exist in the lung bundle only
                        res = run("medpipe", bundle, src, out, {"backend": backend, "precision": precision,
                                                                "overrides": overrides, **extra})  # fmt: skip
                    runs[p].append(res)
                    print(f"  {case} {p} #{r + 1}: {res['seconds']:.2f} s (all outputs {res['all_s']:.2f} s), peak RSS "
                          f"{res['peak_rss_mb']:.0f} MB, other CPU {res['other_cpu_s']} s", flush=True)  # fmt: skip
            base = statistics.median(x["seconds"] for x in runs["baseline"])
            report[case] = {}
            print(f"{case} ({bundle_name}): path | median s | baseline / path | all outputs s | Dice vs baseline | "
                  "voxels differing | peak RSS MB")  # fmt: skip
            for p in paths:
                med = statistics.median(x["seconds"] for x in runs[p])
                med_all = statistics.median(x["all_s"] for x in runs[p])
                dice, differ = mask_dice(runs["baseline"][0]["masks"], runs[p][0]["masks"])
                rss = max(x["peak_rss_mb"] for x in runs[p])
                row = {"median_s": round(med, 3), "ratio": round(base / med, 3), "median_all_s": round(med_all, 3),
                       "dice": round(dice, 5), "voxels_differing": differ, "peak_rss_mb": round(rss),
                       "seconds": [round(x["seconds"], 3) for x in runs[p]],
                       "other_cpu_s": [x["other_cpu_s"] for x in runs[p]],
                       **{k: runs[p][0][k] for k in ("backend", "windows", "open_s") if k in runs[p][0]}}  # fmt: skip
                report[case][p] = row
                print(f"  {p} | {med:.2f} | {base / med:.2f}x | {med_all:.2f} | {dice:.4f} | {differ} | {rss:.0f}"
                      + (f" | windows computed/skipped {row['windows']}" if "windows" in row else ""))  # fmt: skip
                if p == "medpipe:default" and case in ("cptac", "lidc"):
                    missed |= base / med < TARGET_RATIO or dice < TARGET_DICE
    print("load averages:", loadavg())
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if "medpipe:default" in next(iter(report.values()), {}):
        print(f"target (default >= {TARGET_RATIO}x at Dice >= {TARGET_DICE} on both CTs):",
              "MISSED" if missed else "met")  # fmt: skip
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
