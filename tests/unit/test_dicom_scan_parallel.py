"""Header reading in worker processes: same result as in-process, and safe inside daemon processes."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest

from medpipe.dicom import scan as scan_module
from medpipe.dicom.writer import write_ct_series


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory: pytest.TempPathFactory):
    """Two series of 40 slices each: above the parallel threshold together."""
    root = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    for i in range(2):
        image = rng.integers(-1000, 400, size=(16, 16, 40)).astype(np.int16)
        write_ct_series(image, root / f"s{i}", spacing=(1.0, 1.0, 2.0), origin_lps=(0, 0, 0), series_seed=f"p{i}")
    assert 80 >= scan_module.PARALLEL_THRESHOLD
    return root


def _summaries(result: scan_module.ScanResult) -> list[dict]:
    return [s.summary() for s in result.stacks]


def test_parallel_scan_equals_serial_scan(big_folder):
    serial = scan_module.scan(str(big_folder), workers=1)
    parallel = scan_module.scan(str(big_folder), workers=2)
    assert _summaries(parallel) == _summaries(serial)
    assert all(s.ok and len(s.slices) == 40 for s in parallel.stacks)


def _scan_in_daemon(root: str, queue) -> None:  # runs in a daemon child: may not start its own pool
    try:
        result = scan_module.scan(root, workers=2)
        queue.put([len(s.slices) for s in result.stacks])
    except BaseException as e:  # report, do not hang the parent
        queue.put(repr(e))


def test_scan_inside_a_daemon_process_reads_in_process(big_folder):
    """torch DataLoader workers are daemons; a process pool there raises 'daemonic processes...'."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_scan_in_daemon, args=(str(big_folder), queue), daemon=True)
    proc.start()
    outcome = queue.get(timeout=60)
    proc.join(timeout=10)
    assert outcome == [40, 40]
