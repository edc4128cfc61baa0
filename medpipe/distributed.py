"""Training in several processes on torch's own launcher (torchrun) and DistributedDataParallel.

``medpipe train --nproc N`` re-runs the same command under ``torch.distributed.run`` (torchrun,
standalone rendezvous) with ``N`` processes; ``torchrun --nproc_per_node N -m medpipe train ...`` is
the same thing typed by hand, and multi-node is torchrun's rendezvous options (``--nnodes``,
``--rdzv-backend c10d --rdzv-endpoint HOST:PORT``). Every process builds the bundle's train config
with its ``configs/multi_gpu.json`` layer (the MONAI model-zoo layout):

* the network wrapped in ``DistributedDataParallel`` (gradients averaged across processes), a
  ``DistributedSampler`` for the training and the validation data (each case validated once);
* the validation metric reduced across processes by MONAI's metric handlers, so every rank sees the
  same value (and early stopping stops all ranks together);
* only rank 0 keeps the handlers that print or write (:func:`handlers_of_rank`): the best
  checkpoint, the training report and curve, TensorBoard, the threshold. The other ranks' run-folder
  id points at a scratch folder (:func:`rank_output_dir`), so nothing of theirs lands in the run.

The backend is NCCL on CUDA and gloo on CPU. Tested with 2 processes on CPU (gloo).
"""

from __future__ import annotations

import os
import shlex
import tempfile
from collections.abc import Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

from medpipe.errors import Code

#: the config layer a bundle needs for ``--nproc`` (MONAI model-zoo name)
MULTI_GPU_CONFIG = "multi_gpu"


def world_size() -> int:
    """Processes of this run: torchrun's ``WORLD_SIZE`` (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return (
        dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", "0"))
    )


def is_main() -> bool:
    """Rank 0, the process that prints and writes (also true outside torchrun)."""
    return rank() == 0


def local_device(device: str | None = None) -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` where torch sees GPUs (or for ``device="cuda"``), else
    (or for ``device="cpu"``) the CPU."""
    if device != "cpu" and torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    return torch.device("cpu")


def init_process_group(device: Any = None) -> bool:
    """Join the run's process group (once; NCCL on CUDA, gloo on CPU); False outside torchrun."""
    if world_size() < 2 or dist.is_initialized():
        return dist.is_initialized()
    device = torch.device(device) if device is not None else local_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=60)
    )
    return True


def threads_per_rank() -> int:
    """CPU threads for each process: the cores shared among the processes of this node."""
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    return max(1, (os.cpu_count() or 1) // max(1, per_node))


def unwrap(network: Any) -> Any:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (else ``network``)."""
    return (
        network.module
        if isinstance(network, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel))
        else network
    )


class SyncBuffers:
    """Before each validation, give every rank rank 0's buffers (BatchNorm running statistics), so all
    ranks validate the very model rank 0 saves (DDP broadcasts buffers only at training forwards)."""

    def __init__(self, network: torch.nn.Module) -> None:
        self.network = unwrap(network)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if dist.is_initialized():
            for buffer in self.network.buffers():
                dist.broadcast(buffer.data, src=0)


#: handlers every rank needs (they steer the training); all others print or write, on rank 0 only
_EVERY_RANK = ("ValidationHandler", "LrSchedule", "LrScheduleHandler", "GradientClip", "EarlyStop",
               "EarlyStopHandler", "SyncBuffers")  # fmt: skip


def handlers_of_rank(handlers: Iterable[Any] | None, network: Any = None) -> list[Any]:
    """The handlers of this rank: all on rank 0, the steering ones elsewhere; with ``network``, a
    :class:`SyncBuffers` first (for a validator's handler list)."""
    keep = [h for h in handlers or [] if is_main() or type(h).__name__ in _EVERY_RANK]
    return ([SyncBuffers(network)] if network is not None else []) + keep


def rank_output_dir(output_dir: str) -> str:
    """The run folder on rank 0; a scratch folder on the other ranks (handlers that write at construction,
    like TensorBoard's, write there and not into the run)."""
    if is_main():
        return output_dir
    return tempfile.mkdtemp(prefix=f"medpipe-rank{rank()}-")


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (``value`` itself outside a process group)."""
    if not dist.is_initialized():
        return value
    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_nproc(nproc: int, device: str | None) -> None:
    """Refuse ``--nproc`` this machine cannot run: fewer than 2, more than its CPU cores or GPUs."""
    if nproc < 2:
        raise Code.TRAIN_BAD_NPROC(
            f"--nproc {nproc}: several processes means 2 or more (leave it out for one)"
        )
    cuda = (device or "").startswith("cuda") or (device is None and torch.cuda.is_available())
    available = torch.cuda.device_count() if cuda else (os.cpu_count() or 1)
    if nproc > available:
        what = "GPUs" if cuda else "CPU cores"
        raise Code.TRAIN_BAD_NPROC(
            f"--nproc {nproc}: this machine has {available} {what}; use at most {available}, or torchrun's "
            "multi-node options to add machines (docs/scaling.md)"
        )


def launch(nproc: int, argv: Sequence[str]) -> None:
    """Run ``medpipe train ARGV`` in ``nproc`` processes with torchrun (standalone, this machine)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "-m", "medpipe", "train", *argv]
    )
    try:
        run(args)
    except ChildFailedError as exc:
        failures = "; ".join(f"rank {r}: exit {f.exitcode}" for r, f in sorted(exc.failures.items()))
        raise Code.TRAIN_DISTRIBUTED_FAILED(
            f"the {nproc}-process run failed ({failures}); each process printed its error above. Command: "
            + shlex.join(
                ["torchrun", "--standalone", f"--nproc-per-node={nproc}", "-m", "medpipe", "train", *argv]
            )
        ) from None


def multi_gpu_config(configs_dir: Path) -> Path:
    """The bundle's ``configs/multi_gpu.json`` (``TRAIN_BAD_NPROC`` when it has none)."""
    path = Path(configs_dir) / f"{MULTI_GPU_CONFIG}.json"
    if not path.is_file():
        raise Code.TRAIN_BAD_NPROC(
            f"{path.parent.parent.name} has no configs/{path.name}: it cannot train in several processes "
            "(docs/bundle_authoring.md shows the layer)"
        )
    return path
