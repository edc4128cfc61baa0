#!/usr/bin/env python
"""Benchmark: what the resume checkpoint costs a training run (issue 15, exact resume).

``medpipe train`` writes ``checkpoint_last.pt`` (network, optimizer, scheduler, random states; about
58 MB for lung_nodule_ct) after every epoch. This trains ``bundles/lung_nodule_ct`` with its own
recipe on its embedded phantoms (generated into ``$MEDPIPE_DATA`` on first use) for a few epochs,
times every checkpoint write, and prints the ratio of checkpoint seconds to the epochs' seconds
(the baseline, measured in the same run). Usage: ``python benchmarks/resume_overhead.py [EPOCHS]``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from medpipe import resume
from medpipe.train import TrainOptions, train

REPO = Path(__file__).resolve().parents[1]


def main(epochs: int = 5) -> None:
    spent: list[float] = []
    save = resume.ResumeCheckpoint.save

    def timed(self: resume.ResumeCheckpoint, engine: object) -> None:
        t0 = time.perf_counter()
        save(self, engine)
        spent.append(time.perf_counter() - t0)

    resume.ResumeCheckpoint.save = timed  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        train(REPO / "bundles" / "lung_nodule_ct", TrainOptions(max_epochs=epochs, output=run), echo=lambda _: None)
        history = json.loads((run / "training_metrics.json").read_text())["history"]
        size_mb = (run / resume.CHECKPOINT_FILE).stat().st_size / 1e6
    epoch_s = sum(e["seconds"] for e in history)
    print(f"{epochs} epochs: {epoch_s:.1f} s of epochs, {sum(spent):.2f} s of checkpoint writes "
          f"({sum(spent) / len(spent):.3f} s each, {size_mb:.0f} MB)")
    print(f"checkpoint / epochs: {sum(spent) / epoch_s:.4f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
