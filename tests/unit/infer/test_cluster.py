"""How ``medpipe infer --scheduler`` shares a machine's CPUs among the Dask workers on it (no cluster started)."""

from __future__ import annotations

from medpipe.infer.cluster import local_threads, worker_threads


class FakeClient:
    """``Client.run`` answering with the CPUs each worker may run on."""

    def __init__(self, cpus: dict[str, tuple[int, ...]]) -> None:
        self.cpus = cpus

    def run(self, func):
        return self.cpus


def test_workers_sharing_cpus_split_them_and_bound_workers_keep_theirs() -> None:
    cpus = {
        "tcp://10.0.0.1:4001": tuple(range(16)),  # `dask worker --nworkers 4` on a 16-CPU node
        "tcp://10.0.0.1:4002": tuple(range(16)),
        "tcp://10.0.0.1:4003": tuple(range(16)),
        "tcp://10.0.0.1:4004": tuple(range(16)),
        "tcp://10.0.0.2:4001": tuple(range(8)),  # 2 SLURM tasks, each bound to 8 CPUs of its own
        "tcp://10.0.0.2:4002": tuple(range(8, 16)),
        "tcp://10.0.0.3:4001": (0, 1, 2),  # 3 CPUs, 2 workers: 1 each (rounded down)
        "tcp://10.0.0.3:4002": (0, 1, 2),
        "tcp://10.0.0.4:4001": (0,),  # 1 CPU, 2 workers: never 0 threads
        "tcp://10.0.0.4:4002": (0,),
    }
    threads = worker_threads(FakeClient(cpus))  # type: ignore[arg-type]
    assert [threads[a] for a in cpus] == [4, 4, 4, 4, 8, 8, 1, 1, 1, 1]


def test_local_workers_share_this_machines_cpus_unless_told() -> None:
    assert local_threads(2, 3) == 3
    assert local_threads(10**6, None) == 1  # more workers than CPUs: one thread each
