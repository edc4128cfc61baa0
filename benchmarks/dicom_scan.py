#!/usr/bin/env python
"""Benchmark: header-only DICOM discovery (``medpipe.dicom.scan.scan``) on a 2,000-file tree.

Builds, deterministically, a folder tree of ``--series`` CT series x ``--slices`` slices of
``--size`` x ``--size`` pixels written with ``medpipe.dicom.writer.write_ct_series`` (default 20 x 100
x 256 x 256 = 2,000 files, 265 MB), spread over nested study/archive folders with a few non-DICOM files
(text, JSON, PNG/PDF-like blobs, a suffix-less file, a hidden file) mixed in. Then:

1. Times, interleaved over ``--rounds`` rounds (order rotated every round, warm-up first):
   * ``scan_w1``          -- ``scan(root, workers=1)``  (one process)
   * ``scan_default``     -- ``scan(root)``  (medpipe's default: ``os.cpu_count()`` worker processes)
   * ``pydicom_full``     -- ``pydicom.dcmread(path)`` of every file (pixel data included), one process
   * ``pydicom_headers``  -- ``pydicom.dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)``
     of every file, one process: the raw parsing floor under ``scan_w1`` (no grouping/validation)
2. Proves the scan reads no pixel data: each mode runs once more in a *fresh* subprocess that reads its
   own ``/proc/self/io`` before and after. ``rchar`` counts every byte returned by read() calls (page
   cache or disk). Linux adds a reaped child's counters to its parent's, so pool workers are included;
   the probe checks that by forking a child that reads a known file first. With worker processes the
   count also includes the pickled tasks/results passed over pipes (an upper bound on file bytes).

Files are in the page cache (just written): this is warm-cache, CPU-bound discovery.

    python benchmarks/dicom_scan.py [--rounds 5] [--json out.json] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from _common import cpu_snapshot, loadavg, machine_info, other_cpu

MARKER = ".medpipe-bench-scan.json"  # hidden: iter_files skips it
BUILD_VERSION = 1


# --------------------------------------------------------------------------------------------- data
def series_dir(root: Path, i: int, n_series: int) -> Path:
    study = root / f"study_{i // 4:02d}"
    if i >= n_series - 3:  # the last three series sit deeper: study/archive/2019/series
        return study / "archive" / "2019" / f"series_{i:03d}"
    return study / f"series_{i:03d}"


NON_DICOM = {
    # path -> deterministic content (not DICOM; counted by scan as "not DICOM")
    "README.txt": b"Benchmark tree for medpipe.dicom.scan; synthetic data only.\n" * 4,
    "study_00/manifest.json": json.dumps({"series": "synthetic", "n": 20}).encode(),
    "study_01/series_005/preview.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 16,
    "study_04/archive/report.pdf": b"%PDF-1.4\n" + bytes(range(256)) * 8 + b"\n%%EOF\n",
    "study_02/LOCK": b"locked by benchmark\n",  # no suffix: medpipe also tries a forced (ACR-NEMA) parse
    ".DS_Store": b"\x00\x00\x00\x01Bud1" + bytes(64),  # hidden: skipped by iter_files, never read
}


def build_tree(root: Path, n_series: int, n_slices: int, size: int) -> dict[str, object]:
    from medpipe.dicom.writer import write_ct_series

    t0 = time.perf_counter()
    for i in range(n_series):
        rng = np.random.default_rng(20260101 + i)
        volume = rng.integers(-1000, 1500, size=(size, size, n_slices), dtype=np.int16)
        write_ct_series(
            volume,
            series_dir(root, i, n_series),
            spacing=(0.7, 0.7, 1.5),
            origin_lps=(-90.0, -90.0, -150.0 + i),
            series_seed=f"medpipe-bench-scan-{i}",
            study_seed=f"medpipe-bench-study-{i // 4}",
            series_number=i + 1,
        )
    for rel, content in NON_DICOM.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)
    return {"build_s": time.perf_counter() - t0}


def describe_tree(root: Path) -> dict[str, object]:
    """Counts, sizes and a content digest of the tree (proves the build is deterministic)."""
    digest = hashlib.sha256()
    n_files = n_dicom = total = dicom_bytes = 0
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):  # hidden (the marker, .DS_Store): medpipe's iter_files skips them too
                continue
            path = Path(folder) / name
            data = path.read_bytes()
            digest.update(str(path.relative_to(root)).encode() + b"\0" + hashlib.sha256(data).digest())
            n_files += 1
            total += len(data)
            if name.endswith(".dcm"):
                n_dicom += 1
                dicom_bytes += len(data)
    return {
        "n_files": n_files,
        "n_dicom": n_dicom,
        "total_bytes": total,
        "dicom_bytes": dicom_bytes,
        "sha256": digest.hexdigest(),
    }


def prepare(args: argparse.Namespace) -> tuple[Path, dict[str, object], bool]:
    config = {"version": BUILD_VERSION, "series": args.series, "slices": args.slices, "size": args.size}
    if args.workdir:
        root = Path(args.workdir).resolve()
        marker = root / MARKER
        if marker.is_file() and json.loads(marker.read_text()).get("config") == config:
            return root, {"build_s": None, "reused": True}, False
        if root.exists() and any(root.iterdir()):
            sys.exit(
                f"--workdir {root} is not empty and holds no matching benchmark tree; give an empty folder"
            )
        root.mkdir(parents=True, exist_ok=True)
        temporary = False
    else:
        root = Path(tempfile.mkdtemp(prefix="medpipe-bench-scan-"))
        temporary = True
    info = build_tree(root, args.series, args.slices, args.size)
    t0 = time.perf_counter()
    os.sync()  # flush the 265 MB just written: kernel writeback during the timings would skew them
    info["sync_s"] = time.perf_counter() - t0
    (root / MARKER).write_text(json.dumps({"config": config}))
    info["reused"] = False
    return root, info, temporary


# --------------------------------------------------------------------------------------------- io probe
def proc_io() -> dict[str, int]:
    with open("/proc/self/io") as fp:
        return {k: int(v) for k, v in (line.split(": ") for line in fp)}


def _child_read(path: str) -> None:
    with open(path, "rb") as fp:
        while fp.read(1 << 20):
            pass


def io_probe(mode: str, root: str) -> dict[str, object]:
    """Run one mode once in this (fresh) process and return the I/O it caused, children included."""
    import multiprocessing

    import pydicom

    from medpipe.dicom.headers import HEADER_TAGS
    from medpipe.dicom.scan import PARALLEL_THRESHOLD, iter_files, read_headers, scan

    warnings.simplefilter("ignore")
    paths = iter_files(root)
    dicom_paths = [p for p in paths if p.endswith(".dcm")]
    # Warm-up outside the measurement: lazy imports (pydicom submodules, multiprocessing helpers) read
    # .py/.pyc files, which rchar would otherwise charge to the scan.
    read_headers(paths[:PARALLEL_THRESHOLD], workers=1)
    if mode == "scan_default":
        read_headers(paths[:PARALLEL_THRESHOLD], workers=None)
    pydicom.dcmread(dicom_paths[0])
    pydicom.dcmread(dicom_paths[0], stop_before_pixels=True, specific_tags=HEADER_TAGS)

    # Calibration: a forked child reads one whole file; once reaped, its bytes must show in our rchar.
    ctx = multiprocessing.get_context("fork")
    before = proc_io()["rchar"]
    child = ctx.Process(target=_child_read, args=(dicom_paths[0],))
    child.start()
    child.join()
    child_seen = proc_io()["rchar"] - before
    calibration_ok = child_seen >= os.path.getsize(dicom_paths[0])

    gc.collect()
    io0 = proc_io()
    t0 = time.perf_counter()
    if mode == "scan_w1":
        res = scan(root, workers=1)
        n = sum(len(s.slices) for s in res.stacks)
    elif mode == "scan_default":
        res = scan(root)
        n = sum(len(s.slices) for s in res.stacks)
    elif mode == "pydicom_full":
        n = len([pydicom.dcmread(p) for p in dicom_paths])
    elif mode == "pydicom_headers":
        n = len([pydicom.dcmread(p, stop_before_pixels=True, specific_tags=HEADER_TAGS) for p in dicom_paths])
    else:
        raise ValueError(mode)
    elapsed = time.perf_counter() - t0
    io1 = proc_io()
    return {
        "mode": mode,
        "elapsed_s": elapsed,
        "images": n,
        "files_in_tree": len(paths),
        "calibration_child_bytes_seen": child_seen,
        "calibration_ok": calibration_ok,
        **{f"{k}_delta": io1[k] - io0[k] for k in ("rchar", "syscr", "read_bytes")},
    }


def run_probe(mode: str, root: Path) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--_io-probe", mode, str(root)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_io-probe"]:  # internal: run in a fresh subprocess by run_probe
        print(json.dumps(io_probe(argv[1], argv[2])))
        return 0
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--series", type=int, default=20, help="number of series (default 20)")
    ap.add_argument("--slices", type=int, default=100, help="slices (files) per series (default 100)")
    ap.add_argument("--size", type=int, default=256, help="rows = columns of each slice (default 256)")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds; each runs every method once")
    ap.add_argument(
        "--workdir",
        help="build the tree here, or reuse the one built there before, and keep it (default: a temporary folder, removed)",
    )
    ap.add_argument("--json", metavar="OUT", help="write all timings, I/O counts and the machine here")
    args = ap.parse_args(argv)

    warnings.simplefilter("ignore")
    import pydicom

    from medpipe.dicom.headers import HEADER_TAGS
    from medpipe.dicom.scan import PARALLEL_THRESHOLD, iter_files, scan

    machine = machine_info(("numpy", "pydicom"))
    print("== DICOM header scan benchmark ==")
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()))
    root, build, temporary = prepare(args)
    try:
        tree = describe_tree(root)
        n_files = int(tree["n_files"])  # type: ignore[arg-type]
        pixel_bytes = args.series * args.slices * args.size * args.size * 2
        how = "reused" if build["reused"] else f"built in {build['build_s']:.1f} s"
        print(
            f"tree   : {root} ({how}); "
            f"{n_files} visible files ({tree['n_dicom']} DICOM + {n_files - int(tree['n_dicom'])} non-DICOM; "
            f"+1 hidden file), {int(tree['total_bytes']) / 1e6:.1f} MB, pixel data {pixel_bytes / 1e6:.1f} MB, "
            f"sha256 {str(tree['sha256'])[:16]}"
        )
        print(
            f"scan   : default workers = os.cpu_count() = {os.cpu_count()}, PARALLEL_THRESHOLD = {PARALLEL_THRESHOLD}"
        )

        # Correctness of what is timed.
        result = scan(str(root))
        ok_stacks = [s for s in result.stacks if s.ok]
        print(
            f"result : {len(result.stacks)} stacks ({len(ok_stacks)} loadable, slices per stack "
            f"{sorted({len(s.slices) for s in result.stacks})}), {len(result.problems)} problem files, "
            f"skipped {dict(result.skipped)}, n_files {result.n_files}"
        )
        correct = (
            len(ok_stacks) == args.series
            and all(len(s.slices) == args.slices for s in ok_stacks)
            and result.n_files == n_files
        )
        if not correct:
            print("ERROR: scan did not find the series that were written", file=sys.stderr)
        same = scan(str(root), workers=1)
        if [(s.id, len(s.slices)) for s in same.stacks] != [(s.id, len(s.slices)) for s in result.stacks]:
            print("ERROR: workers=1 and default workers disagree", file=sys.stderr)
            correct = False
        del result, same

        paths = iter_files(str(root))
        dicom_paths = [p for p in paths if p.endswith(".dcm")]

        def pydicom_full():
            return [pydicom.dcmread(p) for p in dicom_paths]

        def pydicom_headers():
            return [
                pydicom.dcmread(p, stop_before_pixels=True, specific_tags=HEADER_TAGS) for p in dicom_paths
            ]

        methods = {
            "scan_w1": lambda: scan(str(root), workers=1),
            "scan_default": lambda: scan(str(root)),
            "pydicom_full": pydicom_full,
            "pydicom_headers": pydicom_headers,
        }
        load_start = loadavg()
        for fn in methods.values():  # warm-up
            fn()
        names = list(methods)
        times: dict[str, list[float]] = {n: [] for n in names}
        other: dict[str, list[float]] = {n: [] for n in names}
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            row = {}
            for name in order:
                gc.collect()
                c0 = cpu_snapshot()
                t0 = time.perf_counter()
                out = methods[name]()
                row[name] = time.perf_counter() - t0
                c1 = cpu_snapshot()
                del out
                times[name].append(row[name])
                other[name].append(other_cpu(c0, c1))
            print(
                f"  round {r + 1}/{args.rounds}: "
                + "  ".join(f"{n}={row[n]:.3f} s (+{other[n][-1]:.2f})" for n in names),
                flush=True,
            )
        print("  (+x: CPU seconds used by other processes during that call: noise; 2 cores = 2 cpu-s per s)")
        load_end = loadavg()

        stats = {}
        for n, t in times.items():
            q1, q2, q3 = np.percentile(t, [25, 50, 75])
            stats[n] = {
                "median_s": float(q2),
                "iqr_s": float(q3 - q1),
                "min_s": float(min(t)),
                "max_s": float(max(t)),
                "files_per_s": n_files / float(q2),
            }
        print(
            f"\n-- timings: {args.rounds} rounds, warm page cache; loadavg start {load_start} end {load_end} --"
        )
        print(
            f"  {'method':16s} {'median s':>9s} {'IQR s':>7s} {'min s':>7s} {'files/s':>9s} {'ms/file':>8s}"
        )
        for n in names:
            s = stats[n]
            print(
                f"  {n:16s} {s['median_s']:9.3f} {s['iqr_s']:7.3f} {s['min_s']:7.3f} {s['files_per_s']:9.0f} "
                f"{s['median_s'] / n_files * 1e3:8.3f}"
            )
        speedup = stats["scan_w1"]["median_s"] / stats["scan_default"]["median_s"]
        paired = [a / b for a, b in zip(times["scan_w1"], times["scan_default"], strict=True)]
        print(
            f"  parallel speed-up scan_w1 / scan_default = {speedup:.2f}x "
            f"(per-round paired median {float(np.median(paired)):.2f}x) with {os.cpu_count()} workers"
        )
        print(
            f"  scan_default vs pydicom_full: {stats['pydicom_full']['median_s'] / stats['scan_default']['median_s']:.2f}x "
            f"faster; scan_w1 overhead over raw pydicom header parsing: "
            f"{(stats['scan_w1']['median_s'] / stats['pydicom_headers']['median_s'] - 1) * 100:+.0f}%"
        )

        print("\n-- bytes read (fresh subprocess per mode, /proc/self/io rchar, reaped children included) --")
        probes = {
            m: run_probe(m, root) for m in ("scan_w1", "scan_default", "pydicom_headers", "pydicom_full")
        }
        per_file_pixels = args.size * args.size * 2
        print(
            f"  pixel data per file {per_file_pixels} B; DICOM file size "
            f"{int(tree['dicom_bytes']) // int(tree['n_dicom'])} B; total pixel data {pixel_bytes} B"
        )
        print(
            f"  {'mode':16s} {'rchar bytes':>12s} {'B/file':>8s} {'% of pixel bytes':>16s} {'read() calls':>12s} "
            f"{'child ok':>8s}"
        )
        for m, p in probes.items():
            rchar = int(p["rchar_delta"])
            p["bytes_per_file"] = rchar / n_files
            p["fraction_of_pixel_bytes"] = rchar / pixel_bytes
            print(
                f"  {m:16s} {rchar:12d} {rchar / n_files:8.0f} {100 * rchar / pixel_bytes:15.2f}% "
                f"{int(p['syscr_delta']):12d} {str(p['calibration_ok']):>8s}"
            )
        # A buffered file object reads whole blocks (io.DEFAULT_BUFFER_SIZE = 8 KiB at most): a header-only
        # reader may over-read up to one block into Pixel Data, never a whole slice. The test is decisive
        # only when a slice is much larger than that block (the default 256 x 256 x 2 B = 128 KiB is).
        header_bytes = int(tree["dicom_bytes"]) // int(tree["n_dicom"]) - per_file_pixels
        allowance = header_bytes + io.DEFAULT_BUFFER_SIZE
        decisive = per_file_pixels >= 4 * allowance
        no_pixels = (
            all(probes[m]["calibration_ok"] for m in probes)
            and int(probes["scan_w1"]["rchar_delta"]) / n_files <= allowance
            and int(probes["scan_default"]["rchar_delta"]) / n_files <= allowance + 1024  # + pickled results
        )
        control = int(probes["pydicom_full"]["rchar_delta"]) >= int(tree["dicom_bytes"])
        verdict = "PROVEN" if (no_pixels and control and decisive) else "NOT PROVEN"
        if no_pixels and control and not decisive:
            verdict += " (inconclusive: slices too small next to the 8 KiB read buffer; use --size >= 128)"
        print(
            f"  {verdict}: scan reads {int(probes['scan_w1']['rchar_delta']) / n_files:.0f} B/file in one "
            f"process and {int(probes['scan_default']['rchar_delta']) / n_files:.0f} B/file with workers "
            f"(pipes included); allowed: header {header_bytes} B + one 8 KiB buffer = {allowance} B; pixel "
            f"data {per_file_pixels} B/file; the meter sees the full read "
            f"({int(probes['pydicom_full']['rchar_delta']) / n_files:.0f} B/file) and forked children."
        )
        no_pixels = no_pixels and decisive

        if args.json:
            out = {
                "benchmark": "dicom_scan",
                "config": {
                    "series": args.series,
                    "slices": args.slices,
                    "size": args.size,
                    "rounds": args.rounds,
                },
                "machine": machine,
                "tree": tree,
                "build": build,
                "pixel_bytes": pixel_bytes,
                "loadavg_start": load_start,
                "loadavg_end": load_end,
                "times_s": times,
                "other_processes_cpu_s": other,
                "stats": stats,
                "parallel_speedup": speedup,
                "io": probes,
                "scan_reads_no_pixels": no_pixels and control,
                "scan_result_correct": correct,
            }
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(out, indent=1))
            print(f"results written to {args.json}")
        return 0 if (correct and no_pixels and control) else 2
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
