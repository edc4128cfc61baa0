#!/usr/bin/env python
"""Benchmark: seconds of ``medpipe infer`` with ``bundles/lung_nodule_ct`` on a 512x512x261 LIDC series.

Issue 14's target: ``medpipe infer`` <= 60 s for a 512x512x261 series on 2 cores. No 261-slice LIDC
series is held here, so the run makes one from the real LIDC-IDRI-0003 series (512x512x140, 2.5 mm):
the series followed by its first 121 slices mirrored in z (no hard seam), written as a DICOM series
with ``medpipe.dicom.writer.write_ct_series``. Two runs, each in a fresh subprocess (the child of
``infer_memory.py``), every output written (mask NIfTI, DICOM SEG, lesion tables, preview):

1. ``lidc140`` -- the real series as it is (the baseline measured in the same run);
2. ``lidc261`` -- the 261-slice series.

Printed: seconds per run, seconds per slice, the ratio lidc261 / lidc140 (how time grows with the
series) and lidc261 / 60 s (the target; <= 1 is met). CPU used by other processes during each run is
printed too: run it alone.

    python benchmarks/infer_lidc_time.py [--series DIR] [--json OUT]

Exit status 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _common import REPO, machine_info
from infer_memory import run_child

DEFAULT_SERIES = next(
    (REPO.parent / "shared" / "data" / "lidc_idri_0003_dicom_xml" / "LIDC-IDRI-0003").glob("*/*"), None
)
SLICES = 261
TARGET_S = 60.0


def make_series(series: Path, work: Path) -> Path:
    import numpy as np

    from medpipe.dicom.volume import load_dicom
    from medpipe.dicom.writer import write_ct_series

    vol = load_dicom(str(series))
    a = np.clip(vol.array, -1024, 32767).astype(np.int16)
    if not np.allclose(vol.affine_lps[:3, :3], np.diag(vol.spacing), atol=1e-4):
        sys.exit("this benchmark stacks an axial series with an identity direction; pass such a series")
    big = np.concatenate([a, a[:, :, ::-1]], axis=2)[:, :, :SLICES]
    out = work / f"lidc{SLICES}" / "s"
    write_ct_series(big, out, spacing=vol.spacing, origin_lps=vol.affine_lps[:3, 3], series_seed="bench-261")
    return out.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--series", type=Path, default=DEFAULT_SERIES, help="the LIDC-IDRI-0003 series folder")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if args.series is None or not args.series.is_dir():
        sys.exit("no series: pass --series (../shared/data/lidc_idri_0003_dicom_xml/LIDC-IDRI-0003/*/*)")
    print(json.dumps(machine_info()))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        inputs = {"lidc140": args.series, f"lidc{SLICES}": make_series(args.series, work)}
        for name, folder in inputs.items():
            r = run_child(folder, work / f"out_{name}")
            seconds = r["per_series"][0]["seconds"]
            slices = 140 if name == "lidc140" else SLICES
            results[name] = {"seconds": round(seconds, 2), "total_s": round(r["total_s"], 2),
                             "peak_rss_gb": round(r["VmHWM"] / 1024.0, 2), "other_cpu_s": r["other_cpu_s"],
                             "lesions": r["summary"].get("lesions")}  # fmt: skip
            print(f"{name}: {seconds:.1f} s for the series ({seconds / slices:.3f} s per slice), "
                  f"peak RSS {results[name]['peak_rss_gb']:.2f} GB, other processes' CPU {r['other_cpu_s']} s")  # fmt: skip
    big = results[f"lidc{SLICES}"]["seconds"]
    print(f"lidc{SLICES} / lidc140: {big / results['lidc140']['seconds']:.2f} (slices: {SLICES / 140:.2f})")
    ok = big <= TARGET_S
    print(
        f"lidc{SLICES} / target {TARGET_S:.0f} s: {big / TARGET_S:.2f} -> {'target met' if ok else 'TARGET MISSED'}"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
