#!/usr/bin/env python
"""Benchmark: seconds per series and peak memory of ``medpipe infer`` with ``bundles/lung_nodule_ct``.

Three runs, each in a fresh subprocess (so each peak RSS is its own), all outputs (mask NIfTI,
DICOM SEG, lesion table, preview) written:

1. ``ct99``   -- the real CPTAC-LSCC chest CT, 512x512x99 (``../shared/data/lung_ct_dicom_cptac_lscc``);
2. ``ct400``  -- a 512x512x400 series made by stacking it (alternate copies mirrored in z, so no seam
                 is a hard edge), written with ``medpipe.dicom.writer.write_ct_series`` to a temp dir;
3. ``multi``  -- one run over N copies of the 99-slice series (distinct UIDs): resident memory after
                 each series, to show it does not grow with the number of series.

Current RSS is ``VmRSS`` after each series; peak RSS ``VmHWM``, reset after each series (Linux
``/proc/self/clear_refs``), so each series reports its own peak, and the run's peak is their maximum.
Targets: peak RSS <= 3 GB on ct400; in ``multi``, over series 2..N (series 1 also pays one-off costs:
lazy imports, allocator arenas), the mean per-series peak and the mean RSS of the later half over
those of the earlier half <= 1.1. (Per-series peaks of identical series jitter by about +-6 %: a
ratio of two single series, the first criterion tried, is noise.)

    python benchmarks/infer_memory.py [--series DIR] [--copies 3] [--runs ct99,ct400,multi] [--json OUT]

Run it alone (``flock /tmp/medpipe-cpu.lock ...``): seconds depend on other load (printed). Exit
status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, cpu_snapshot, loadavg, machine_info, other_cpu

DEFAULT_SERIES = REPO.parent / "shared" / "data" / "lung_ct_dicom_cptac_lscc" / "series"
BUNDLE = REPO / "bundles" / "lung_nodule_ct"
TARGET_PEAK_GB = 3.0
TARGET_GROWTH = 1.1

#: runs in the child: infer over one input folder, report per-series RSS and time as JSON on stdout
CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[4])
from medpipe.infer.run import InferOptions, infer

def status():
    d = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(d[k].split()[0]) / 1024.0 for k in ("VmRSS", "VmHWM")}

per = []
t = [time.perf_counter()]
def after(series, state):
    now = time.perf_counter()
    per.append({"series": series, "status": state, "seconds": now - t[0], **status()})
    t[0] = now
    try:  # reset the high-water mark: the next VmHWM is the peak of the next series alone
        open("/proc/self/clear_refs", "w").write("5")
    except OSError:
        pass

t0 = time.perf_counter()
summary = infer(sys.argv[1], sys.argv[2], sys.argv[3], InferOptions(progress=False), echo=lambda _: None,
                after_series=after)
end = status()
end["VmHWM"] = max([p["VmHWM"] for p in per] + [end["VmHWM"]])  # the process's peak over all series
print(json.dumps({"per_series": per, "summary": summary, "total_s": time.perf_counter() - t0, **end}))
"""


def run_child(input_dir: Path, out_dir: Path) -> dict:
    before = cpu_snapshot()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(BUNDLE), str(input_dir), str(out_dir), str(REPO)],
        capture_output=True,
        text=True,
    )
    after = cpu_snapshot()
    if proc.returncode != 0:
        sys.exit(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["other_cpu_s"] = round(other_cpu(before, after), 1)
    if any(p["status"] != "ok" for p in result["per_series"]):
        sys.exit(f"a series failed: {result['per_series']}")
    return result


def make_inputs(series: Path, work: Path, copies: int) -> dict[str, Path]:
    import numpy as np

    from medpipe.dicom.volume import load_dicom
    from medpipe.dicom.writer import write_ct_series

    vol = load_dicom(str(series))
    a = np.clip(vol.array, -1024, 32767).astype(np.int16)
    spacing, origin = vol.spacing, vol.affine_lps[:3, 3]
    if not np.allclose(vol.affine_lps[:3, :3], np.diag(spacing), atol=1e-4):
        sys.exit("this benchmark stacks an axial series with an identity direction; pass such a series")
    reps = -(-400 // a.shape[2])
    big = np.concatenate([a if r % 2 == 0 else a[:, :, ::-1] for r in range(reps)], axis=2)[:, :, :400]
    write_ct_series(big, work / "ct400" / "s", spacing=spacing, origin_lps=origin, series_seed="bench-400")
    del big
    for i in range(copies):
        write_ct_series(
            a, work / "multi" / f"s{i}", spacing=spacing, origin_lps=origin, series_seed=f"bench-{i}"
        )
    return {"ct99": series, "ct400": work / "ct400", "multi": work / "multi"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--series", type=Path, default=DEFAULT_SERIES)
    ap.add_argument("--copies", type=int, default=3, help="series in the multi-series run (>= 3)")
    ap.add_argument("--json", type=Path, help="write every figure here")
    ap.add_argument("--keep", type=Path, help="build inputs/outputs here and keep them")
    ap.add_argument("--runs", default="ct99,ct400,multi", help="which runs (comma-separated)")
    args = ap.parse_args()
    if not args.series.is_dir():
        print(f"skip: {args.series} not found (shared data absent)")
        return 0
    info = machine_info(("numpy", "torch", "monai", "highdicom"))
    print(json.dumps(info))
    print(f"load average before: {loadavg()}")
    with tempfile.TemporaryDirectory(prefix="infer-bench-") as tmp:
        work = args.keep or Path(tmp)
        t0 = time.perf_counter()
        inputs = make_inputs(args.series, work, max(3, args.copies))
        print(f"inputs written in {time.perf_counter() - t0:.0f} s")
        wanted = [r.strip() for r in args.runs.split(",") if r.strip()]
        results = {
            name: run_child(path, work / f"out-{name}") for name, path in inputs.items() if name in wanted
        }

    print(
        f"\n{'run':<7} {'series':>6} {'s/series':>9} {'peak RSS MB':>12} {'RSS end MB':>11} {'other CPU s':>12}"
    )
    for name, r in results.items():
        per = r["per_series"]
        mean_s = sum(p["seconds"] for p in per) / len(per)
        print(
            f"{name:<7} {len(per):>6} {mean_s:>9.1f} {r['VmHWM']:>12.0f} {r['VmRSS']:>11.0f} {r['other_cpu_s']:>12}"
        )
    ok = True
    if "ct400" in results:
        peak400 = results["ct400"]["VmHWM"] / 1024.0
        ok &= peak400 <= TARGET_PEAK_GB
        print(f"peak RSS ct400: {peak400:.2f} GB (target <= {TARGET_PEAK_GB} GB)")
        if "ct99" in results:
            print(f"ct400 / ct99: peak RSS {results['ct400']['VmHWM'] / results['ct99']['VmHWM']:.2f}")
    if "multi" in results:
        multi = results["multi"]["per_series"]
        print("\nmulti-series run, after each series (RSS, that series' own peak, seconds):")
        for i, p in enumerate(multi):
            print(f"  #{i + 1}: RSS {p['VmRSS']:.0f} MB, peak {p['VmHWM']:.0f} MB, {p['seconds']:.1f} s")
        # Series 1 also pays one-off costs (lazy imports, allocator arenas); per-series peaks jitter by
        # about +-6 % between identical series, so halves are compared rather than two single series.
        later = multi[1:]
        half = len(later) // 2
        first, second = later[:half], later[len(later) - half :]

        def mean(rows: list[dict], key: str) -> float:
            return sum(r[key] for r in rows) / len(rows)

        growth_peak = mean(second, "VmHWM") / mean(first, "VmHWM")
        growth_rss = mean(second, "VmRSS") / mean(first, "VmRSS")
        print(
            f"multi: series 2-{len(multi)}, mean of the last {half} / mean of the first {half}: "
            f"peak {growth_peak:.3f}, RSS after series {growth_rss:.3f} (target <= {TARGET_GROWTH}); "
            f"RSS after series {len(multi)} / after series 1 = {multi[-1]['VmRSS'] / multi[0]['VmRSS']:.3f}"
        )
        ok &= max(growth_peak, growth_rss) <= TARGET_GROWTH
    print("targets met" if ok else "TARGET MISSED")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
