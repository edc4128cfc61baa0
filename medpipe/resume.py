"""Exact resume of a training run: everything an epoch boundary holds, saved atomically, restored as it was.

After every epoch (its validation included) :class:`ResumeCheckpoint` writes ``checkpoint_last.pt``
into the run folder, under a temporary name renamed into place, with

* the trainer's ignite state (epoch, iteration, epoch length, max epochs), the network, the optimizer
  and the LR scheduler;
* the validation evaluator's best metric and its epoch, the state of the best-checkpoint saver (so a
  resumed run replaces ``model.pt`` only with a better one), the early-stopping counter and best score
  (:class:`medpipe.controls.EarlyStop`) and the epochs the training report holds;
* every random state: python's, numpy's, torch's (and CUDA's), and the ``R`` of every MONAI random
  transform of the training data (:class:`RandomStates`).

``resume.json`` beside it holds what the run was started with (config overrides, bundle version), so
``medpipe train --output RUN --resume`` rebuilds the same workflow; :func:`restore` loads the
checkpoint into it and the trainer goes on from the next epoch. On CPU the result is bit-identical to
an uninterrupted run (a test kills a run with SIGKILL and compares). A run is resumed from its last
finished epoch: the epoch it was killed in is run again.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointSaver
from monai.transforms import Compose, Randomizable

from medpipe.atomic import atomic_write_text
from medpipe.errors import Code

CHECKPOINT_FILE = "checkpoint_last.pt"
RESUME_FILE = "resume.json"


def _randomizables(transform: Any, seen: set[int] | None = None) -> Iterator[Randomizable]:
    """Every MONAI random transform in ``transform``, in a fixed order: a Compose's children and the
    random transforms a transform holds as attributes (``RandCropByPosNegLabeld.cropper``...), since
    each draws from its own ``R``."""
    seen = set() if seen is None else seen
    if id(transform) in seen:
        return
    seen.add(id(transform))
    if isinstance(transform, Randomizable):
        yield transform
    children = list(getattr(transform, "transforms", None) or [])
    for name, value in sorted(vars(transform).items()) if hasattr(transform, "__dict__") else []:
        if name != "transforms" and isinstance(value, (Randomizable, Compose)):
            children.append(value)
    for child in children:
        yield from _randomizables(child, seen)


def _np_state(state: tuple) -> tuple:
    """A numpy ``RandomState`` state with its key array as a tensor (a weights-only loadable checkpoint)."""
    name, keys, pos, has_gauss, cached = state
    return (name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached))


def _np_unstate(state: tuple) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return (name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached)


class RandomStates:
    """python, numpy, torch (CUDA) and every data transform's random state, as one state dict."""

    def __init__(self, transform: Compose | None = None) -> None:
        self.transforms = list(_randomizables(transform)) if transform is not None else []

    def state_dict(self) -> dict[str, Any]:
        return {
            "python": random.getstate(),
            "numpy": _np_state(np.random.get_state()),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "transforms": [_np_state(t.R.get_state()) for t in self.transforms],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if len(state["transforms"]) != len(self.transforms):
            raise Code.TRAIN_RESUME_INVALID(
                f"the checkpoint holds {len(state['transforms'])} random transforms, this training {len(self.transforms)}: "
                "its data pipeline changed"
            )
        random.setstate(state["python"])
        np.random.set_state(_np_unstate(state["numpy"]))
        torch.set_rng_state(state["torch"])
        if state.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        for t, s in zip(self.transforms, state["transforms"], strict=True):
            t.R.set_state(_np_unstate(s))


def best_saver(handlers: Any) -> Any:
    """The ignite ``Checkpoint`` behind a best-model ``CheckpointSaver`` among ``handlers`` (None without one)."""
    for handler in handlers or []:
        if isinstance(handler, CheckpointSaver):
            return handler._key_metric_checkpoint
    return None


class ResumeCheckpoint:
    """Writes ``checkpoint_last.pt`` at the end of every trainer epoch; see the module docstring.

    ``parts``: the objects with ``state_dict`` / ``load_state_dict`` to save (network, optimizer,
    scheduler, report, random states); the trainer and evaluator states are added by it."""

    def __init__(
        self, folder: Path, trainer: Engine, evaluator: Any, parts: Mapping[str, Any], saver: Any = None
    ) -> None:
        self.folder, self.trainer, self.evaluator, self.saver = Path(folder), trainer, evaluator, saver
        self.parts = {k: v for k, v in parts.items() if v is not None}

    def attach(self) -> None:
        self.trainer.add_event_handler(Events.EPOCH_COMPLETED, self.save)

    def state(self) -> dict[str, Any]:
        ev = getattr(self.evaluator, "state", None)
        saver = self.saver
        return {
            "trainer": self.trainer.state_dict(),
            "evaluator": {"best_metric": getattr(ev, "best_metric", None), "best_metric_epoch": getattr(ev, "best_metric_epoch", None)},
            "best_saver": saver.state_dict() if saver is not None else None,
            **{k: v.state_dict() for k, v in self.parts.items()},
        }  # fmt: skip

    def save(self, engine: Engine) -> None:
        path = self.folder / CHECKPOINT_FILE
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(self.state(), tmp)
        os.replace(tmp, path)
        atomic_write_text(self.folder / "checkpoint.json", json.dumps({"epoch": engine.state.epoch}) + "\n")

    def restore(self) -> int:
        """Load ``checkpoint_last.pt`` into the trainer, evaluator and parts; returns its epoch."""
        path = self.folder / CHECKPOINT_FILE
        if not path.is_file():
            raise Code.TRAIN_RESUME_INVALID(f"{self.folder} has no {CHECKPOINT_FILE}: nothing to resume from")
        for stale in self.folder.glob(f".{CHECKPOINT_FILE}.*.tmp"):  # a write the kill interrupted
            stale.unlink(missing_ok=True)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torn, foreign or not a checkpoint of save()
            raise Code.TRAIN_RESUME_INVALID(f"{path} cannot be read as a medpipe checkpoint ({type(exc).__name__})") from None
        for key, part in self.parts.items():
            try:
                part.load_state_dict(state[key])
            except (KeyError, RuntimeError, ValueError) as exc:
                raise Code.TRAIN_RESUME_INVALID(f"{path.name}: its {key} does not fit this training ({exc})") from None
        self.trainer.load_state_dict(state["trainer"])
        ev = getattr(self.evaluator, "state", None)
        if ev is not None and state["evaluator"]["best_metric"] is not None:
            ev.best_metric = state["evaluator"]["best_metric"]
            ev.best_metric_epoch = state["evaluator"]["best_metric_epoch"]
        if self.saver is not None and state.get("best_saver") is not None:
            self.saver.load_state_dict(state["best_saver"])
        return int(self.trainer.state.epoch)


def record_resume(folder: Path, overrides: Mapping[str, Any], user_ids: list[str], version: str | None,
                  transfer: Mapping[str, Any]) -> None:  # fmt: skip
    """``resume.json``: what the run was started with, so ``--resume`` rebuilds the same workflow."""
    content = {"bundle_version": version, "overrides": dict(overrides), "user_ids": list(user_ids),
               "transfer": dict(transfer)}  # fmt: skip
    atomic_write_text(Path(folder) / RESUME_FILE, json.dumps(content, indent=1, default=str) + "\n")


def resumed_run(output: str | Path | None, version: str | None) -> tuple[Path, dict[str, Any], list[str], dict]:
    """(folder, overrides, user ids, transfer options) of the run to resume in ``output``."""
    if output is None:
        raise Code.TRAIN_RESUME_INVALID("--resume continues a run: name its folder with --output RUN_DIR")
    folder = Path(output).expanduser().resolve()
    path = folder / RESUME_FILE
    if not (folder / CHECKPOINT_FILE).is_file() or not path.is_file():
        raise Code.TRAIN_RESUME_INVALID(
            f"{folder} lacks {CHECKPOINT_FILE} or {RESUME_FILE}: not a run medpipe train started, or it "
            "was killed before its first epoch ended (start it again without --resume)"
        )
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
        overrides, user_ids = dict(content["overrides"]), list(content["user_ids"])
    except (ValueError, KeyError, TypeError) as exc:
        raise Code.TRAIN_RESUME_INVALID(f"{path} is not a resume record medpipe train wrote ({exc})") from None
    if content.get("bundle_version") != version:
        raise Code.TRAIN_RESUME_INVALID(
            f"{folder} was started with bundle version {content.get('bundle_version')}, the bundle is {version} now"
        )
    overrides["output_dir"] = overrides["ckpt_dir"] = str(folder)
    return folder, overrides, user_ids, dict(content.get("transfer") or {})


def resume_checkpoint(wf: Any, folder: Path) -> ResumeCheckpoint:
    """The :class:`ResumeCheckpoint` of a built train workflow (network, optimizer, scheduler, report, RNG)."""
    from medpipe.bundle.workflow import parsed
    from medpipe.controls import EarlyStop
    from medpipe.distributed import unwrap
    from medpipe.handlers import TrainingReport

    def get(config_id: str) -> Any:
        return parsed(wf, config_id) if config_id in wf.parser else None

    trainer = parsed(wf, "train::trainer")
    handlers = get("train::handlers") or []
    report = next((h for h in handlers if isinstance(h, TrainingReport)), None)
    early_stop = next((h for h in handlers if isinstance(h, EarlyStop) and h.handler is not None), None)
    dataset = get("train::dataset")
    parts = {
        "network": unwrap(get("network")),  # the same checkpoint for 1 or N processes
        "optimizer": get("optimizer"),
        "lr_scheduler": get("lr_scheduler"),
        "report": report,
        "early_stop": early_stop,
        "rng": RandomStates(getattr(dataset, "transform", None)),
    }
    return ResumeCheckpoint(folder, trainer, get("validate::evaluator"), parts, best_saver(get("validate::handlers")))
