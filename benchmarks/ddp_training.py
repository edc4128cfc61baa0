#!/usr/bin/env python
"""Benchmark: one training process against two (``medpipe train --nproc 2``, torchrun + DDP, gloo on CPU).

Trains ``bundles/hippocampus_mri`` (real MSD Task04 MRI from ``../shared``) with its own recipe for a
few epochs, first in one process (all cores), then in two (the cores shared between them), in the same
run and on the same machine, and prints each run's wall time, best validation Dice (every validation
case, reduced across the ranks) and the ratio of the two. The two-process run averages the gradients
of two batches per step, so it takes half the optimizer steps per epoch: the same recipe, not the
same numbers. Usage: ``python benchmarks/ddp_training.py [EPOCHS]`` (default 10, validation every 5).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, machine_info

BUNDLE = REPO / "bundles" / "hippocampus_mri"
DATA = REPO.parent / "shared" / "data" / "msd_task04_hippocampus"


def run(folder: Path, epochs: int, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "medpipe", "train", "--bundle", str(BUNDLE), "--max-epochs", str(epochs),
           "--device", "cpu", "--output", str(folder), *extra]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    record = json.loads((folder / "run.json").read_text())
    return {"seconds": seconds, "best": record["best_metric"], "epoch": record["best_epoch"],
            "processes": record["processes"]}  # fmt: skip


def main(epochs: int = 10) -> None:
    if not DATA.is_dir():
        sys.exit(f"skipped: {DATA} is absent (the real hippocampus MRI come from ../shared)")
    print(json.dumps(machine_info(("torch", "monai")), indent=1))
    with tempfile.TemporaryDirectory() as tmp:
        one = run(Path(tmp) / "one", epochs, [])
        two = run(Path(tmp) / "two", epochs, ["--nproc", "2"])
    for name, r in (("1 process ", one), ("2 processes", two)):
        print(f"{name}: {r['seconds'] / 60:.2f} min, best validation Dice {r['best']:.4f} (epoch {r['epoch']})")
    print(f"time 2 processes / 1 process: {two['seconds'] / one['seconds']:.3f}")
    print(f"Dice 2 processes - 1 process: {two['best'] - one['best']:+.4f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
