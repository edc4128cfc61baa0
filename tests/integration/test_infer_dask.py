"""``medpipe infer`` on Dask (``--workers``, ``--scheduler``): the outputs of the one-process run, and nothing
lost or half-written when a worker or the whole run is killed.

The input (module fixture): three good phantom CT series of ``test_infer_run``, one with a missing slice
(refused at discovery, so recorded by the ``medpipe infer`` process) and one with an undecodable image
(found only when its pixels are read, so recorded by the worker that runs it); the reference is the
one-process run over it.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dask
import nibabel as nib
import numpy as np
import psutil
import pydicom
import pytest
from distributed import Client, LocalCluster, WorkerPlugin

from tests.conftest import BUNDLE, REPO
from tests.integration.test_infer_run import FAST, _write_series

GOOD_SEEDS = (3, 4, 7)
TIMING = {"seconds", "peak_rss_mb"}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fp:
        return list(csv.DictReader(fp))


def _untimed(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _mask(out: Path, sid: str) -> np.ndarray:
    return np.asarray(nib.load(out / sid / f"{sid}_seg.nii.gz").dataobj)


def _options(**kwargs):
    from medpipe.infer.run import InferOptions

    return InferOptions(formats=["nifti"], overrides=FAST, progress=False, **kwargs)


def _assert_nothing_partial(out: Path) -> None:
    """No temporary file anywhere, and every series folder holds a complete, recorded set of outputs."""
    from medpipe.infer.records import outputs_exist, read_done

    assert not [p for p in out.rglob("*") if p.name.startswith(".tmp-")]
    for folder in (p for p in out.iterdir() if p.is_dir()):
        done = read_done(folder)
        assert done is not None and outputs_exist(folder, done), folder.name


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from medpipe.infer.run import infer
    from medpipe.infer.sources import discover

    root = tmp_path_factory.mktemp("infer_dask")
    inputs = root / "in"
    for seed in GOOD_SEEDS:
        _write_series(inputs, seed, f"case_{seed}")
    gap = _write_series(inputs, 6, "gap")
    sorted(gap.iterdir())[4].unlink()
    undecodable = _write_series(inputs, 9, "undecodable")  # headers fine; one image's RLE data is garbage
    ds = pydicom.dcmread(sorted(undecodable.iterdir())[3])
    ds.file_meta.TransferSyntaxUID = pydicom.uid.RLELossless
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64 + b"garbage!" * 32])
    ds["PixelData"].VR = "OB"
    ds.save_as(ds.filename, enforce_file_format=True)
    refused = [s.id for s in discover(inputs).sources if s.error is not None]
    one = root / "one"
    summary = infer(BUNDLE, inputs, one, _options(), echo=lambda _: None)
    assert (summary["series"], summary["done"], summary["failed"]) == (5, 3, 2) and len(refused) == 1
    codes = sorted(f["code"] for f in _rows(one / "failures.csv"))
    assert codes == ["DICOM_CORRUPT_FILE", "DICOM_MISSING_SLICES"]
    return {"root": root, "inputs": inputs, "one": one, "summary": summary}


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[tuple[LocalCluster, Client]]:
    """2 worker processes of one thread, one series in flight each (as ``--workers 2`` starts them); a series
    may kill 2 workers before it is given up (Dask's default: 4)."""
    config = {"distributed.scheduler.allowed-failures": 1, "distributed.scheduler.worker-saturation": 1.0}
    with dask.config.set(config), LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.CRITICAL
    ) as cluster, Client(cluster) as client:  # fmt: skip
        yield cluster, client


def test_two_workers_write_what_one_process_writes(data: dict, dask_cluster: tuple, tmp_path: Path) -> None:
    """With ``--scheduler`` (``--workers``, which starts its own cluster, runs in the test of a killed run)."""
    from medpipe.infer.run import infer

    out, logs, finished = tmp_path / "out", [], []
    options = _options(scheduler=dask_cluster[0].scheduler_address)
    summary = infer(BUNDLE, data["inputs"], out, options, echo=logs.append,
                    after_series=lambda series, status: finished.append(series))  # fmt: skip
    assert f"on the Dask cluster at {options.scheduler} (2 worker(s) now)" in logs[0]
    untimed = {k: v for k, v in data["summary"].items() if k not in TIMING}
    assert {k: v for k, v in summary.items() if k not in TIMING} == untimed
    assert sorted(finished) == sorted(r["series"] for r in _rows(data["one"] / "results.csv"))  # each once
    for name in ("results.csv", "failures.csv", "lesions.csv", "candidates.csv"):  # the same rows, in order
        assert _untimed(_rows(out / name)) == _untimed(_rows(data["one"] / name)), name
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == sorted(p.name for p in data["one"].iterdir() if p.is_dir()) and len(folders) == 3
    for sid in folders:
        np.testing.assert_array_equal(_mask(out, sid), _mask(data["one"], sid))
        headers = [nib.load(o / sid / f"{sid}_seg.nii.gz").header for o in (out, data["one"])]
        assert headers[0] == headers[1]
        records = [json.loads((o / sid / "done.json").read_text())["record"] for o in (out, data["one"])]
        assert records[0] == records[1]
    _assert_nothing_partial(out)
    # idempotent across the two: a one-process run finds every series the workers did
    again = infer(BUNDLE, data["inputs"], out, _options(), echo=lambda _: None)
    assert (again["done"], again["skipped"], again["failed"]) == (0, 3, 2)


class DieBeforeDoneRecord(WorkerPlugin):
    """The worker running series ``always`` SIGKILLs itself once every output of the series is written but
    not its done record, leaving the temporary file of a write it was in the middle of; for series ``once``
    only the first worker does. Dask sets the plugin up again on every restarted worker."""

    name = "die-before-done-record"

    def __init__(self, always: str, once: str, marker: Path) -> None:
        self.always, self.once, self.marker = always, once, marker

    def setup(self, worker) -> None:
        from medpipe.infer import task

        self.real = real = task.write_done

        def write_done(folder: Path, *args, **kwargs) -> None:
            first = folder.name == self.once and not self.marker.exists()
            if first:
                self.marker.touch()
            if folder.name == self.always or first:
                (folder / f".tmp-{os.getpid()}-killed-{folder.name}_seg.nii.gz").write_bytes(b"\x1f\x8b torn")
                os.kill(os.getpid(), signal.SIGKILL)
            real(folder, *args, **kwargs)

        task.write_done = write_done

    def teardown(self, worker) -> None:
        from medpipe.infer import task

        task.write_done = self.real


def test_a_killed_worker_loses_only_its_series_and_the_rerun_does_the_rest(
    data: dict, dask_cluster: tuple, tmp_path: Path
) -> None:
    from medpipe.infer.run import infer

    good = sorted(p.name for p in data["one"].iterdir() if p.is_dir())
    always, once = good[0], good[1]
    cluster, client = dask_cluster
    out, logs = tmp_path / "out", []
    client.register_plugin(DieBeforeDoneRecord(always, once, tmp_path / "killed-once"))
    try:
        pids = set(client.run(os.getpid).values())
        options = _options(scheduler=cluster.scheduler_address)
        summary = infer(BUNDLE, data["inputs"], out, options, echo=logs.append)
        # workers were killed (and replaced by their nannies)
        assert pids != set(client.run(os.getpid).values())
    finally:
        client.unregister_worker_plugin(DieBeforeDoneRecord.name)
    # `once` killed one worker and was done again by another; `always` killed 2 (allowed-failures 1)
    assert (summary["done"], summary["failed"]) == (2, 3)
    failures = {f["series"]: f for f in _rows(out / "failures.csv")}
    assert failures[always]["code"] == "INFER_WORKER_DIED" and "2 time(s)" in failures[always]["message"]
    assert "INFER_WORKER_DIED" in summary["failures"] and once not in failures
    assert f"{always}: INFER_WORKER_DIED: " in "\n".join(logs)
    assert not (out / always).exists()  # nothing of the lost series is left: no outputs, no torn file
    _assert_nothing_partial(out)  # nor of the attempt at `once` that died
    for sid in (once, good[2]):
        np.testing.assert_array_equal(_mask(out, sid), _mask(data["one"], sid))
    # the re-run (one process) does only the lost series
    again = infer(BUNDLE, data["inputs"], out, _options(), echo=lambda _: None)
    assert (again["done"], again["skipped"], again["failed"]) == (1, 2, 2)
    np.testing.assert_array_equal(_mask(out, always), _mask(data["one"], always))
    _assert_nothing_partial(out)


def test_a_killed_run_on_two_workers_resumes_with_the_remaining_series(data: dict, tmp_path: Path) -> None:
    from medpipe.infer.run import infer

    out = tmp_path / "out"
    args = [sys.executable, "-m", "medpipe", "infer", "--bundle", str(BUNDLE), "--input", str(data["inputs"]),
            "-o", str(out), "--format", "nifti", "--set", "sliding_window_inferer#sw_batch_size=4", "--workers", "2"]  # fmt: skip
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob("*/done.json")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
        proc.send_signal(signal.SIGKILL)  # the whole run, as a node failure or `scancel` would
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    # its workers do not outlive it (they would go on writing into the output)
    assert workers and not psutil.wait_procs(workers, timeout=30)[1]
    done = {p.parent.name for p in out.glob("*/done.json")}
    assert 1 <= len(done) < 3, done  # killed mid-run: some series done, some not
    summary = infer(BUNDLE, data["inputs"], out, _options(), echo=lambda _: None)
    assert (summary["done"], summary["skipped"], summary["failed"]) == (3 - len(done), len(done), 2)
    _assert_nothing_partial(out)
    for folder in (p for p in out.iterdir() if p.is_dir()):
        np.testing.assert_array_equal(_mask(out, folder.name), _mask(data["one"], folder.name))


def test_unreachable_scheduler_and_bad_workers_are_coded_errors_before_anything_is_written(
    data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from click.testing import CliRunner

    from medpipe.cli import cli
    from medpipe.errors import InputError
    from medpipe.infer import cluster
    from medpipe.infer.run import infer

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 1)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = ["infer", "--bundle", str(BUNDLE), "--input", str(data["inputs"]), "-o", str(tmp_path / "out")]
    result = CliRunner().invoke(cli, [*base, "--scheduler", f"tcp://127.0.0.1:{port}"])
    assert result.exit_code == 3 and "INFER_SCHEDULER_UNREACHABLE" in result.output, result.output
    assert str(tmp_path) not in result.output.split("INFER_SCHEDULER_UNREACHABLE", 1)[1]
    for scheduler in ("127.0.0.1", "http://127.0.0.1:1"):  # no port, not a Dask protocol
        result = CliRunner().invoke(cli, [*base, "--scheduler", scheduler])
        assert result.exit_code == 3 and "INFER_SCHEDULER_UNREACHABLE" in result.output, result.output
    result = CliRunner().invoke(cli, [*base, "--scheduler", f"tcp://127.0.0.1:{port}", "--workers", "2"])
    assert result.exit_code == 3 and "INFER_BAD_WORKERS" in result.output, result.output
    assert CliRunner().invoke(cli, [*base, "--workers", "0"]).exit_code == 2  # click's range check
    for workers in (0, -1, True, 1.5):
        with pytest.raises(InputError) as e:
            infer(BUNDLE, data["inputs"], tmp_path / "out", _options(workers=workers))
        assert e.value.code == "INFER_BAD_WORKERS"
    assert not (tmp_path / "out").exists()


def test_one_process_runs_never_import_dask() -> None:
    code = "import json, sys; from medpipe.cli import cli; from medpipe.infer import run; print(json.dumps(list(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    modules = json.loads(done.stdout.strip().splitlines()[-1])
    assert "medpipe.infer.run" in modules
    assert not [m for m in modules if m.split(".")[0] in ("dask", "distributed")]
