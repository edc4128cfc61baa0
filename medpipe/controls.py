"""Training controls a bundle's train config exposes as ids, so ``--set`` changes them without editing it.

Each bundle's ``train.json`` builds its LR scheduler, training dataset and three trainer handlers from here::

    "lr_schedule": "cosine",        # cosine | warmup_cosine | step | plateau | onecycle | constant
    "warmup_epochs": 0, "lr_step_epochs": 20, "lr_gamma": 0.5, "lr_patience": 2, "min_lr": 1e-5,
    "weight_decay": 1e-5,           # the optimizer's (AdamW)
    "grad_clip": 0,                 # max gradient norm; 0 = off
    "early_stop_patience": 0,       # validations without improvement before the run stops; 0 = off
    "dataset_cache": "memory",      # memory (CacheDataset, cache_rate) | disk (PersistentDataset, cache_dir) | none

* :func:`lr_scheduler` -- the scheduler for a named schedule: torch's own (``CosineAnnealingLR``,
  ``StepLR``, ``ReduceLROnPlateau``, ``OneCycleLR``, ``ConstantLR``) or MONAI's ``WarmupCosineSchedule``.
* :class:`LrSchedule` -- steps it: per epoch, per iteration (``onecycle``), or after each validation
  with the validation metric (``plateau``, so epochs without validation do not count as patience).
* :class:`GradientClip` -- clips the gradient norm between ``backward()`` and the optimizer step
  (MONAI's ``BACKWARD_COMPLETED`` event; with a CUDA ``GradScaler`` the gradients are unscaled first).
* :class:`EarlyStop` -- MONAI's ``EarlyStopHandler`` on the validator, given the trainer when it is
  attached to it (so the config has no cycle); its counter and best score are in the resume checkpoint.
* :func:`training_dataset` -- MONAI's ``CacheDataset``, ``PersistentDataset`` or ``Dataset``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.data.utils import json_hashing
from monai.engines.utils import IterationEvents
from monai.handlers import EarlyStopHandler
from monai.optimizers import WarmupCosineSchedule

from medpipe.errors import Code, look_up

SCHEDULES = ("cosine", "warmup_cosine", "step", "plateau", "onecycle", "constant")
DATASET_CACHES = ("memory", "disk", "none")


def lr_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: str,
    max_epochs: int,
    steps_per_epoch: int = 1,
    warmup_epochs: int = 0,
    step_epochs: int = 20,
    gamma: float = 0.5,
    patience: int = 2,
    min_lr: float = 1e-5,
    pct_start: float = 0.2,
) -> Any:
    """The LR scheduler of ``schedule`` (:data:`SCHEDULES`); ``onecycle`` counts iterations, the rest epochs."""
    look_up(schedule, SCHEDULES, what="lr_schedule", code=Code.CONFIG_BAD_OVERRIDE)
    if warmup_epochs < 0 or (schedule == "warmup_cosine" and warmup_epochs >= max_epochs):
        raise Code.CONFIG_BAD_OVERRIDE(
            f"warmup_epochs must be 0..max_epochs-1 ({max_epochs - 1}), got {warmup_epochs}"
        )
    sched = torch.optim.lr_scheduler
    if schedule == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=max_epochs, eta_min=min_lr)
    if schedule == "warmup_cosine":
        end = min_lr / max(g["lr"] for g in optimizer.param_groups)
        return WarmupCosineSchedule(optimizer, warmup_steps=warmup_epochs, t_total=max_epochs, end_lr=end)
    if schedule == "step":
        return sched.StepLR(optimizer, step_size=max(1, step_epochs), gamma=gamma)
    if schedule == "plateau":
        return sched.ReduceLROnPlateau(optimizer, mode="max", factor=gamma, patience=patience, min_lr=min_lr)
    if schedule == "onecycle":
        return sched.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                total_steps=max_epochs * max(1, steps_per_epoch), pct_start=pct_start)  # fmt: skip
    return sched.ConstantLR(optimizer, factor=1.0, total_iters=0)


class LrSchedule:
    """Steps ``lr_scheduler`` on the trainer: see the module docstring."""

    def __init__(
        self, lr_scheduler: Any, schedule: str, validator: Engine | None = None, key_metric: str = ""
    ) -> None:
        self.lr_scheduler, self.schedule, self.validator, self.key_metric = (
            lr_scheduler,
            schedule,
            validator,
            key_metric,
        )

    def attach(self, engine: Engine) -> None:
        event = Events.ITERATION_COMPLETED if self.schedule == "onecycle" else Events.EPOCH_COMPLETED
        engine.add_event_handler(event, self)

    def __call__(self, engine: Engine) -> None:
        if self.schedule != "plateau":
            self.lr_scheduler.step()
            return
        v = self.validator
        if v is not None and getattr(v, "state", None) is not None and v.state.epoch == engine.state.epoch:
            value = v.state.metrics.get(self.key_metric)
            if value is not None:
                self.lr_scheduler.step(float(value))


class GradientClip:
    """Clip the gradients' total norm to ``max_norm`` before every optimizer step (0: off)."""

    def __init__(self, max_norm: float = 0.0) -> None:
        if max_norm < 0:
            raise Code.CONFIG_BAD_OVERRIDE(f"grad_clip must be >= 0 (0 = off), got {max_norm}")
        self.max_norm = float(max_norm)

    def attach(self, engine: Engine) -> None:
        if self.max_norm > 0:
            engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        scaler = getattr(engine, "scaler", None)
        if getattr(engine, "amp", False) and scaler is not None:
            scaler.unscale_(engine.optimizer)
        params = [p for g in engine.optimizer.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, self.max_norm)


class EarlyStop:
    """Stop training after ``patience`` validations without a better ``key_metric`` (0: off).

    Listed among the *trainer's* handlers: attaching it gives MONAI's ``EarlyStopHandler`` the trainer
    and attaches that to ``validator``. All ranks of a distributed run see the same (reduced) metric,
    so they stop together."""

    def __init__(self, validator: Engine, key_metric: str, patience: int = 0, min_delta: float = 0.0) -> None:
        if patience < 0:
            raise Code.CONFIG_BAD_OVERRIDE(f"early_stop_patience must be >= 0 (0 = off), got {patience}")
        self.validator, self.key_metric, self.patience = validator, key_metric, int(patience)
        self.handler: EarlyStopHandler | None = None
        if self.patience:
            self.handler = EarlyStopHandler(
                patience=self.patience, score_function=self.score, min_delta=min_delta
            )

    def score(self, engine: Engine) -> float:
        return float(engine.state.metrics[self.key_metric])

    def attach(self, engine: Engine) -> None:
        if self.handler is not None:
            self.handler.set_trainer(engine)
            self.handler.attach(self.validator)

    def state_dict(self) -> dict[str, Any]:
        inner = getattr(self.handler, "_handler", None)
        return {"counter": 0, "best_score": None} if inner is None else inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        inner = getattr(self.handler, "_handler", None)
        if inner is not None:
            inner.load_state_dict(state)


def training_dataset(
    data: Sequence[dict], transform: Any, cache: str = "memory", cache_rate: float = 1.0,
    cache_dir: str | Path | None = None, num_workers: int | None = 0, **kwargs: Any,
) -> Dataset:  # fmt: skip
    """MONAI's dataset for ``cache``: ``memory`` CacheDataset (the deterministic transforms' results for
    ``cache_rate`` of the cases, in RAM), ``disk`` PersistentDataset (the same, in ``cache_dir``, kept
    across runs and processes), ``none`` Dataset. ``kwargs`` go to CacheDataset."""
    look_up(cache, DATASET_CACHES, what="dataset_cache", code=Code.CONFIG_BAD_OVERRIDE)
    if cache == "memory":
        return CacheDataset(
            data, transform, cache_rate=cache_rate, num_workers=num_workers, progress=False, **kwargs
        )
    if cache == "disk":
        if not cache_dir:
            raise Code.CONFIG_BAD_OVERRIDE(
                "dataset_cache=disk needs cache_dir (--set cache_dir=/fast/disk/folder)"
            )
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        # keyed by the case and the deterministic transforms (their settings, or their names where those
        # do not serialise), so a changed preprocessing does not read another one's cache
        return PersistentDataset(data, transform, cache_dir=cache_dir, hash_transform=json_hashing)
    return Dataset(data, transform)
