"""Helpers shared by the benchmark scripts: machine description and a noise meter.

Imported as ``from _common import ...``: a script's own folder is first on ``sys.path``.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # benchmark the checkout beside the scripts, from any working directory


def machine_info(distributions: tuple[str, ...] = ("numpy", "pydicom")) -> dict[str, object]:
    """CPU, memory, Python, the given packages' versions, medpipe's commit and a hash of medpipe/dicom."""
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    commit = "?"
    try:  # read-only
        run = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        commit = run.stdout.strip() or "?"
    except OSError:
        pass
    src = hashlib.sha256()
    for p in sorted((REPO / "medpipe" / "dicom").glob("*.py")):
        src.update(p.name.encode() + p.read_bytes())
    info: dict[str, object] = {
        "platform": platform.platform(),
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": mem_gb,
        "python": platform.python_version(),
    }
    for dist in distributions:
        try:
            info[dist] = version(dist)
        except PackageNotFoundError:
            info[dist] = "?"
    info.update(medpipe_commit=commit, medpipe_dicom_sources_sha256=src.hexdigest()[:12])
    return info


def cpu_snapshot() -> tuple[float, float]:
    """(CPU seconds the whole machine was busy, CPU seconds used by this process and its reaped children)."""
    try:
        with open("/proc/stat") as fp:
            v = [int(x) for x in fp.readline().split()[1:]]
        busy = (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    except (OSError, ValueError, IndexError):
        busy = float("nan")
    t = os.times()
    return busy, t.user + t.system + t.children_user + t.children_system


def other_cpu(before: tuple[float, float], after: tuple[float, float]) -> float:
    """CPU seconds used by *other* processes (or stolen) between two snapshots: the noise during a call."""
    return max(0.0, (after[0] - before[0]) - (after[1] - before[1]))


def loadavg() -> list[float]:
    try:
        return [float(v) for v in open("/proc/loadavg").read().split()[:3]]
    except OSError:
        return []
