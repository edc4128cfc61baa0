"""Ignite handlers that bundle configs attach to MONAI engines: progress and a training record.

* :class:`LossProgressBar` -- a tqdm bar per epoch showing the running loss.
* :class:`TrainingReport` -- after each epoch: one summary line (loss, validation Dice when it ran,
  time), printed and appended to ``train.log``, and ``training_metrics.json`` and ``training_curve.png``
  (loss, validation metric and learning rate, redrawn every epoch)
  in ``output_dir`` (the run folder), written to a temporary name and renamed so a killed run never
  leaves a torn file.
* :class:`ValidationHandler` -- MONAI's, validating every ``interval`` epochs **and after the last
  epoch**, so a run whose epoch count is not a multiple of the interval (``--max-epochs 1``) still
  validates, and so still saves its best checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar
from monai.handlers import ValidationHandler as MonaiValidationHandler
from tqdm import tqdm

from medpipe.atomic import atomic_path, atomic_write_text


def loss_of(output: Any) -> float:
    """The loss of a MONAI trainer iteration (its output is a dict, or a list of per-sample dicts)."""
    item = output[0] if isinstance(output, (list, tuple)) else output
    return float(item["loss"])


class ValidationHandler(MonaiValidationHandler):
    """MONAI's ``ValidationHandler`` (epoch level) that also validates after the final epoch."""

    def attach(self, engine: Engine) -> None:
        if not self.epoch_level:
            super().attach(engine)
            return
        interval = max(1, int(self.interval))

        def due(engine: Engine, epoch: int) -> bool:
            return epoch % interval == 0 or epoch == engine.state.max_epochs

        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=due), self)
        if self.exec_at_start:
            engine.add_event_handler(Events.STARTED, self)


class LossProgressBar:
    """tqdm progress over the iterations of each epoch, with the current loss."""

    def __init__(self, persist: bool = False) -> None:
        self.bar = ProgressBar(persist=persist, desc="train", bar_format=None)

    def attach(self, engine: Engine) -> None:
        self.bar.attach(engine, output_transform=lambda output: {"loss": loss_of(output)})


class TrainingReport:
    """Per-epoch summary line, metrics JSON and training-curve PNG.

    Attach it *after* ``ValidationHandler`` in the trainer's handler list so the validation of an
    epoch has run when the epoch is summarised.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        validator: Engine | None = None,
        key_metric: str = "val_mean_dice",
        json_name: str = "training_metrics.json",
        png_name: str = "training_curve.png",
        print_fn: Any = None,
        log_name: str = "train.log",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.validator = validator
        self.key_metric = key_metric
        self.json_name = json_name
        self.png_name = png_name
        self.print_fn = print_fn
        self.log_name = log_name
        self.history: list[dict[str, Any]] = []
        self._resumed = False
        self._epoch_losses: list[float] = []
        self._epoch_lr: float | None = None
        self._epoch_start = 0.0
        self._run_start = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _started(self, engine: Engine) -> None:
        self._run_start = time.perf_counter()
        if not self._resumed:
            self.history = []
        self._resumed = False

    def state_dict(self) -> dict[str, Any]:
        """The epochs summarised so far: what a resumed run (:mod:`medpipe.resume`) continues from."""
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = list(state.get("history", []))
        self._resumed = True  # the next STARTED (of the resumed run) keeps them

    def _epoch_started(self, engine: Engine) -> None:
        self._epoch_losses = []
        optimizer = getattr(engine, "optimizer", None)
        self._epoch_lr = float(optimizer.param_groups[0]["lr"]) if optimizer is not None else None
        self._epoch_start = time.perf_counter()

    def _iteration_completed(self, engine: Engine) -> None:
        self._epoch_losses.append(loss_of(engine.state.output))

    def _validation_of(self, epoch: int) -> float | None:
        v = self.validator
        if v is None or getattr(v, "state", None) is None or v.state.epoch != epoch:
            return None
        value = v.state.metrics.get(self.key_metric)
        return None if value is None else float(value)

    def _epoch_completed(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        seconds = time.perf_counter() - self._epoch_start
        loss = sum(self._epoch_losses) / max(1, len(self._epoch_losses))
        val = self._validation_of(epoch)
        row: dict[str, Any] = {"epoch": epoch, "loss": round(loss, 6), "seconds": round(seconds, 2)}
        if self._epoch_lr is not None:  # the (first group's) learning rate the epoch started with
            row["lr"] = float(f"{self._epoch_lr:.6g}")
        if val is not None:
            row[self.key_metric] = round(val, 6)
        self.history.append(row)
        vals = [r[self.key_metric] for r in self.history if self.key_metric in r]
        best = max(vals) if vals else None
        best_epoch = next((r["epoch"] for r in self.history if r.get(self.key_metric) == best), None)
        line = f"epoch {epoch}/{engine.state.max_epochs}  loss {loss:.4f}"
        line += f"  {self.key_metric} {val:.4f}" if val is not None else ""
        line += f"  (best {best:.4f} @ {best_epoch})" if best is not None else ""
        line += f"  {seconds:.1f}s"
        self._print(line)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "key_metric": self.key_metric,
            "best_metric": best,
            "best_epoch": best_epoch,
            "epochs_completed": epoch,
            "max_epochs": engine.state.max_epochs,
            "total_seconds": round(time.perf_counter() - self._run_start, 1),
            "history": self.history,
        }
        atomic_write_text(self.output_dir / self.json_name, json.dumps(record, indent=1))
        self._plot()

    def _print(self, line: str) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / self.log_name, "a", encoding="utf-8") as log:
            log.write(line + "\n")
        if self.print_fn is not None:
            self.print_fn(line)
            return
        tqdm.write(line)

    def _plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        epochs = [r["epoch"] for r in self.history]
        lrs = [(r["epoch"], r["lr"]) for r in self.history if r.get("lr")]
        fig, axes = plt.subplots(2 if lrs else 1, 1, figsize=(6, 5 if lrs else 3.5), dpi=100, sharex=True,
                                 squeeze=False, gridspec_kw={"height_ratios": [3, 1.2]} if lrs else None)  # fmt: skip
        ax = axes[0][0]
        ax.plot(epochs, [r["loss"] for r in self.history], label="training loss", color="tab:blue")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        vals = [(r["epoch"], r[self.key_metric]) for r in self.history if self.key_metric in r]
        if vals:
            ax2 = ax.twinx()
            ax2.plot(
                [e for e, _ in vals], [v for _, v in vals], "o-", color="tab:orange", label=self.key_metric
            )
            ax2.set_ylabel(self.key_metric)
            ax2.set_ylim(0, 1)
            ax2.legend(loc="lower right")
        ax.legend(loc="upper right")
        ax.set_title("training curve")
        if lrs:
            lr_ax = axes[1][0]
            lr_ax.plot([e for e, _ in lrs], [v for _, v in lrs], color="tab:green")
            lr_ax.set_yscale("log")
            lr_ax.set_ylabel("learning rate")
            lr_ax.grid(alpha=0.3)
        axes[-1][0].set_xlabel("epoch")
        fig.tight_layout()
        with atomic_path(self.output_dir / self.png_name) as tmp:
            fig.savefig(tmp)
        plt.close(fig)
        if math.isnan(self.history[-1]["loss"]):
            self._print("warning: training loss is NaN; lower the learning rate (--set learning_rate=...)")
