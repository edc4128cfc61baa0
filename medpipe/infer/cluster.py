"""``medpipe infer --workers N`` / ``--scheduler ADDRESS``: the series of a run on a Dask cluster.

``--workers N`` starts a ``distributed.LocalCluster`` of N worker processes on this machine (one thread
each, the scheduler on 127.0.0.1, no dashboard) and closes it when the run ends, also on Ctrl-C or an
error; ``--scheduler tcp://HOST:PORT`` sends the series to a running cluster (``dask scheduler`` /
``dask worker``, dask-jobqueue on SLURM or PBS, Kubernetes), whose workers must see the bundle, the
input and the output at the same paths (a shared file system). A scheduler that does not answer within
:data:`CONNECT_TIMEOUT_S` is ``INFER_SCHEDULER_UNREACHABLE``, raised before anything is written.

Each series is one task (:func:`run_on_worker`): the worker opens the models once per process
(:func:`opened`) and runs :func:`~medpipe.infer.task.run_series`, one series at a time per process.
The ``medpipe infer`` process keeps the run's reports and its progress bar, taking each outcome as its
task completes (``distributed.as_completed``). A worker that dies loses only the series it was running,
which has no done record: Dask runs the task again on another worker, and after as many deaths as the
scheduler allows (``distributed.scheduler.allowed-failures``, 3 by default) the series is recorded as
``INFER_WORKER_DIED`` and the run goes on.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager

import dask
import torch
from distributed import Client, KilledWorker, LocalCluster, as_completed, get_worker
from distributed.comm import get_address_host

from medpipe.bundle.model import BundleModel
from medpipe.errors import Code
from medpipe.infer.classifier import CropClassifier
from medpipe.infer.task import ModelSpec, SeriesOutcome, SeriesTask, failed, release_memory, run_series
from medpipe.perf import tune_malloc

#: Seconds to wait for a ``--scheduler`` to answer.
CONNECT_TIMEOUT_S = 10
#: What Dask's nannies set by default (``distributed.nanny.pre-spawn-environ``) and ``--workers`` does not.
MALLOC_ENV = "MALLOC_TRIM_THRESHOLD_"
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

#: The models this worker process opened, for the last spec only (a long-lived cluster serving runs of
#: other bundles does not accumulate them).
_OPENED: dict[str, tuple[BundleModel, CropClassifier | None]] = {}
#: One series at a time per process, even on a worker started with more than one thread.
_ONE_SERIES = threading.Lock()


def usable_cpus() -> tuple[int, ...]:
    """The CPUs this process may run on (a SLURM allocation or a container's limit, not the whole machine)."""
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return tuple(range(os.cpu_count() or 1))


def worker_threads(client: Client) -> dict[str, int]:
    """torch threads of each worker now in the cluster: its CPUs shared among the workers of its host that
    may run on the same CPUs (``dask worker --nworkers 4`` on a node: a quarter each; one worker per SLURM
    task bound to its own CPUs: all of them)."""
    cpus = client.run(usable_cpus)
    sharing = Counter((get_address_host(a), c) for a, c in cpus.items())
    return {a: max(1, len(c) // sharing[get_address_host(a), c]) for a, c in cpus.items()}


def opened(spec: ModelSpec) -> tuple[BundleModel, CropClassifier | None]:
    """``spec.open()`` once per process: a worker reuses its models for every series it runs."""
    key = repr(spec)
    if key not in _OPENED:
        if not _OPENED and MALLOC_ENV in os.environ:
            # a worker a nanny started with Dask's default environment: its fixed trim threshold also fixes
            # glibc's mmap threshold at 128 KiB, so every large array is a fresh mmap (each series took 1.9x
            # as long here); keeping freed blocks for reuse undoes most of it (malloc_trim still runs after
            # each series)
            tune_malloc()
        _OPENED.clear()
        _OPENED[key] = spec.open()
    return _OPENED[key]


def run_on_worker(task: SeriesTask, spec: ModelSpec, threads: int | Mapping[str, int]) -> SeriesOutcome:
    """The Dask task of one series, with ``threads`` torch threads, or as many as ``threads`` maps this
    worker to (:func:`worker_threads`; a worker that joined since takes all its CPUs)."""
    with _ONE_SERIES:
        if not isinstance(threads, int):
            threads = threads.get(get_worker().address) or len(usable_cpus())
        torch.set_num_threads(threads)
        model, clf = opened(spec)
        try:
            return run_series(task, model, clf)
        finally:
            release_memory()  # nothing of this series is referenced any more


class DaskRunner:
    """Runs tasks on a connected client; ``describe`` says where, for the run's first line."""

    def __init__(self, client: Client, threads: int | None, describe: str) -> None:
        self.client, self.threads, self.describe = client, threads, describe
        self.futures: list = []

    def run(self, tasks: Mapping[int, SeriesTask], spec: ModelSpec) -> Iterator[tuple[int, SeriesOutcome]]:
        """``(index, outcome)`` of every task, as they complete; a bug in a task is raised here."""
        threads = self.threads or worker_threads(self.client)
        run = uuid.uuid4().hex[:8]
        index = {}
        for i, task in tasks.items():
            future = self.client.submit(
                run_on_worker, task, spec, threads, key=f"infer-{task.source.id}-{run}", pure=False
            )
            index[future.key] = i
            self.futures.append(future)
        for future in as_completed(self.futures):
            i = index[future.key]
            if future.status == "error" and isinstance(future.exception(), KilledWorker):
                deaths = future.exception().allowed_failures + 1
                message = (
                    f"series {tasks[i].source.id}: the Dask worker running it died, {deaths} time(s) "
                    "(killed, or out of memory: see the workers' logs); nothing of it was kept, a re-run tries again"
                )
                yield i, failed(tasks[i], Code.INFER_WORKER_DIED, message, None)
            else:
                yield i, future.result()  # raises a task's bug, with its traceback
            future.release()

    def cancel(self) -> None:
        """Drop every task not finished (a run that stops leaves a shared cluster nothing to do)."""
        pending = [f for f in self.futures if not f.done()]
        if pending:
            self.client.cancel(pending)


def local_threads(workers: int, threads: int | None) -> int:
    """torch threads of each of ``workers`` local workers: ``threads``, or this machine's CPUs shared out."""
    return threads or max(1, len(usable_cpus()) // workers)


@contextmanager
def dask_runner(workers: int | None, scheduler: str | None, threads: int | None) -> Iterator[DaskRunner]:
    """A runner on a local cluster of ``workers`` processes, or on the cluster at ``scheduler``; on leaving,
    the tasks not finished are cancelled and the client (and a local cluster) closed."""
    with ExitStack() as stack:
        if scheduler is not None:
            try:
                client = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - whatever stops the connection, the scheduler is unusable
                raise Code.INFER_SCHEDULER_UNREACHABLE(
                    f"--scheduler {scheduler}: no Dask scheduler reached within {CONNECT_TIMEOUT_S} s "
                    f"({type(exc).__name__}: {str(exc)[:200]}); start one (`dask scheduler`, dask-jobqueue) "
                    "and pass the address it prints, tcp://HOST:PORT"
                ) from exc
            stack.enter_context(client)
            describe = f"the Dask cluster at {scheduler} ({len(client.nthreads())} worker(s) now)"
        else:
            workers = int(workers or 1)
            threads = local_threads(workers, threads)
            config = {
                # one series in flight per worker (no second one queued on a worker that may die with it)
                "distributed.scheduler.worker-saturation": 1.0,
                # the environment of a plain process, with this worker's threads: Dask's default sets
                # MALLOC_TRIM_THRESHOLD_ (see opened) and 1 thread for OpenMP, MKL and OpenBLAS
                "distributed.nanny.pre-spawn-environ": {v: threads for v in THREAD_ENV},
            }
            with dask.config.set(config):
                cluster = stack.enter_context(
                    LocalCluster(
                        n_workers=workers,
                        threads_per_worker=1,
                        processes=True,
                        host="127.0.0.1",
                        dashboard_address=None,
                        silence_logs=logging.ERROR,
                    )
                )
            client = stack.enter_context(Client(cluster))
            describe = f"{workers} local Dask worker(s) x {threads} thread(s)"
        runner = DaskRunner(client, threads, describe)
        stack.callback(runner.cancel)
        yield runner
