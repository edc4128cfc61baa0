#!/usr/bin/env python
"""Benchmark: series per minute of ``medpipe infer`` on Dask (``--workers 1``, ``--workers 2``) vs one process.

The input holds the two real chest CTs of ``../shared/data`` -- CPTAC-LSCC C3N-00247 (512x512x99) and
LIDC-IDRI-0003 (512x512x140) -- ``--copies`` times each. A series is named by its SeriesInstanceUID
(``medpipe.privacy.series_id``), so a plain copy would be the same series; each copy is the original files
with only the Series and SOP Instance UIDs replaced (``pydicom.uid.generate_uid``, from the original UID and
the copy number): the same pixels and headers, distinct series.

Three runs of ``python -m medpipe infer --bundle bundles/lung_nodule_ct`` over that input, each a fresh
process into a fresh output folder, every output written (mask NIfTI, DICOM SEG, lesion tables, preview):

1. ``one``      -- the one-process run, ``--threads C`` (C = this machine's usable CPUs): the baseline;
2. ``workers1`` -- ``--workers 1`` (one Dask worker of C threads: the cost of Dask alone);
3. ``workers2`` -- ``--workers 2`` (two workers of C/2 threads each).

Printed per run: the seconds of the run as summary.json has them (from the end of DICOM discovery: cluster
start, worker start-up and model loading included), series per minute from them, the whole command's wall
seconds (Python and torch imports, the bundle check and discovery in the ``medpipe infer`` process
included), the highest peak RSS of a process, the CPU seconds other processes used meanwhile; then each
Dask run's series/min over the baseline's. Run it alone (``flock /tmp/medpipe-cpu.lock ...``).

    python benchmarks/infer_dask_throughput.py [--copies 2] [--runs one,workers1,workers2] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, cpu_snapshot, loadavg, machine_info, other_cpu

SHARED = REPO.parent / "shared" / "data"
SERIES = {
    "cptac": SHARED / "lung_ct_dicom_cptac_lscc" / "series",
    "lidc": next((SHARED / "lidc_idri_0003_dicom_xml" / "LIDC-IDRI-0003").glob("*/*"), None),
}
BUNDLE = REPO / "bundles" / "lung_nodule_ct"


RUNS = {
    "one": lambda c: ["--threads", str(c)],
    "workers1": lambda c: ["--workers", "1"],
    "workers2": lambda c: ["--workers", "2"],
}


def make_copies(series: dict[str, Path], work: Path, copies: int) -> Path:
    """``copies`` distinct series of each real series: its files with new Series / SOP Instance UIDs."""
    import pydicom
    from pydicom.uid import generate_uid

    root = work / "in"
    for name, folder in series.items():
        files = sorted(p for p in folder.iterdir() if p.suffix == ".dcm")
        for k in range(copies):
            out = root / f"{name}-{k}"
            out.mkdir(parents=True)
            for f in files:
                ds = pydicom.dcmread(f)
                ds.SeriesInstanceUID = generate_uid(entropy_srcs=[ds.SeriesInstanceUID, f"copy {k}"])
                ds.SOPInstanceUID = generate_uid(entropy_srcs=[ds.SOPInstanceUID, f"copy {k}"])
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                ds.save_as(out / f.name, enforce_file_format=True)
    return root


def run(name: str, inputs: Path, out: Path, cpus: int) -> dict:
    args = [sys.executable, "-m", "medpipe", "infer", "--bundle", str(BUNDLE), "--input", str(inputs),
            "-o", str(out), *RUNS[name](cpus)]  # fmt: skip
    before, t0 = cpu_snapshot(), time.perf_counter()
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    wall, after = time.perf_counter() - t0, cpu_snapshot()
    if proc.returncode != 0:
        sys.exit(f"{name} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    if summary["done"] != summary["series"]:
        sys.exit(f"{name}: not every series done: {summary}")
    return {"series": summary["series"], "seconds": summary["seconds"], "wall_s": round(wall, 1),
            "series_per_min": round(60.0 * summary["series"] / summary["seconds"], 2),
            "peak_rss_mb": summary["peak_rss_mb"], "other_cpu_s": round(other_cpu(before, after), 1),
            "where": proc.stdout.splitlines()[0].partition("; on ")[2] or "this process"}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--copies", type=int, default=2, help="copies of each real series (default 2: 4 series)")
    ap.add_argument(
        "--runs", default=",".join(RUNS), help="which runs, comma-separated (the first is the baseline)"
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    missing = [name for name, folder in SERIES.items() if folder is None or not folder.is_dir()]
    if missing:
        print(f"skip: the real series of {', '.join(missing)} are not under {SHARED} (shared data absent)")
        return 0
    cpus = len(os.sched_getaffinity(0))
    print(json.dumps(machine_info(("numpy", "torch", "monai", "distributed"))))
    print(f"load average before: {loadavg()}; usable CPUs: {cpus}")
    wanted = [r.strip() for r in args.runs.split(",") if r.strip()]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="infer-dask-bench-") as tmp:
        work = Path(tmp)
        inputs = make_copies(SERIES, work, args.copies)  # type: ignore[arg-type]
        for name in wanted:
            results[name] = r = run(name, inputs, work / f"out-{name}", cpus)
            print(f"{name}: on {r['where']}, {r['seconds']:.1f} s")
    base = results[wanted[0]]
    print(f"\n{'run':<9} {'series':>6} {'run s':>7} {'series/min':>11} {'vs ' + wanted[0]:>8} {'wall s':>7} "
          f"{'peak RSS MB':>12} {'other CPU s':>12}")  # fmt: skip
    for name, r in results.items():
        ratio = r["series_per_min"] / base["series_per_min"]
        print(f"{name:<9} {r['series']:>6} {r['seconds']:>7.1f} {r['series_per_min']:>11.2f} {ratio:>8.2f} "
              f"{r['wall_s']:>7.1f} {r['peak_rss_mb']:>12.0f} {r['other_cpu_s']:>12}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
