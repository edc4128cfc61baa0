"""The training controls of a bundle's train config (medpipe.controls), switched with ``--set`` on a
real training run of lung_nodule_ct (tiny phantoms), and kept across ``--resume``."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.conftest import BUNDLE, TINY_SPACING

TINY = {"pixdim": list(TINY_SPACING), "roi_size": [32, 32, 16], "val_interval": 1, "patches_per_case": 1}


def test_schedule_clipping_early_stop_and_disk_cache_from_the_command_line(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    from medpipe.train import TrainOptions, train

    cache = tmp_path / "cache"
    sets = {**TINY, "lr_schedule": "warmup_cosine", "warmup_epochs": 2, "learning_rate": 0.01, "grad_clip": 0.5,
            "early_stop_patience": 3, "dataset_cache": "disk", "cache_dir": str(cache), "weight_decay": 0.01}  # fmt: skip
    options = TrainOptions(
        manifest=tiny_dataset, max_epochs=6, device="cpu", sets=sets, output=tmp_path / "run"
    )
    record = train(BUNDLE, options, echo=lambda _: None)
    history = json.loads((tmp_path / "run" / "training_metrics.json").read_text())["history"]
    lrs = [row["lr"] for row in history]
    assert lrs[0] < lrs[1] < lrs[2] and abs(lrs[2] - 0.01) < 1e-9  # warm-up to the peak, per epoch
    dice = [row["val_mean_dice"] for row in history]
    best = max(range(len(dice)), key=lambda i: (dice[i], -i))
    # early stopping with patience 3: the run ends at the third validation in a row that does not beat the best
    assert len(history) == 6 or (len(history) == best + 4 and max(dice[best + 1 :]) <= dice[best])
    assert record["epochs_completed"] == len(history)
    assert sorted(p.name for p in cache.iterdir()) == ["train", "validate"]
    assert len(list((cache / "train").glob("*.pt"))) == 2  # the 2 training cases' deterministic preprocessing
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["grad_clip"] == 0.5 and config["lr_schedule"] == "warmup_cosine"
    state = torch.load(tmp_path / "run" / "checkpoint_last.pt", weights_only=True)
    assert "early_stop" in state and state["early_stop"]["counter"] == len(history) - 1 - best
    assert state["optimizer"]["param_groups"][0]["weight_decay"] == 0.01


def test_mlflow_tracking_logs_the_run_into_its_folder(tiny_dataset: Path, tmp_path: Path) -> None:
    """``--tracking mlflow``: MONAI's MLflow handlers log the loss and the validation metric of every
    epoch into the run folder's SQLite store, under the bundle's experiment and the run folder's name."""
    import pytest

    mlflow = pytest.importorskip("mlflow", reason="mlflow is an optional dependency (medpipe[tracking])")
    from medpipe.train import TrainOptions, train

    folder = tmp_path / "tracked"
    train(BUNDLE, TrainOptions(manifest=tiny_dataset, max_epochs=2, device="cpu", sets=TINY, output=folder,
                               tracking="mlflow"), echo=lambda _: None)  # fmt: skip
    client = mlflow.tracking.MlflowClient(f"sqlite:///{folder / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("lung_nodule_ct")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    history = json.loads((folder / "training_metrics.json").read_text())["history"]
    logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_mean_dice")}
    assert logged == pytest.approx({row["epoch"]: row["val_mean_dice"] for row in history}, abs=1e-6)
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) >= 2
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {
        "config.json",
        "training_curve.png",
        "training_metrics.json",
    }
    # a refused run leaves no folder, though MLflow's settings export the config when the workflow is built
    from medpipe.errors import BundleError

    sets = {**TINY, "grad_clip": -1}
    with pytest.raises(BundleError):
        train(BUNDLE, TrainOptions(manifest=tiny_dataset, max_epochs=2, device="cpu", sets=sets,
                                   output=tmp_path / "refused", tracking="mlflow"), echo=lambda _: None)  # fmt: skip
    assert not (tmp_path / "refused").exists()


def test_tensorboard_events_hold_the_loss_and_every_validation(tiny_dataset: Path, tmp_path: Path) -> None:
    """MONAI's TensorBoard handlers write into the run folder: the training loss of every iteration and
    the validation metric at the trainer's epoch, the figures of training_metrics.json."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from medpipe.train import TrainOptions, train

    folder = tmp_path / "tb"
    train(BUNDLE, TrainOptions(manifest=tiny_dataset, max_epochs=2, device="cpu", sets=TINY, output=folder),
          echo=lambda _: None)  # fmt: skip
    scalars: dict[str, dict[int, float]] = {}
    for events in folder.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    history = json.loads((folder / "training_metrics.json").read_text())["history"]
    assert scalars["val_mean_dice"] == {r["epoch"]: approx(r["val_mean_dice"]) for r in history}
    losses = scalars["train_loss"]  # by iteration; the report's epoch loss is their mean
    per_epoch = len(losses) // len(history)
    assert len(losses) == per_epoch * len(history) and per_epoch >= 1
    for r in history:
        steps = range((r["epoch"] - 1) * per_epoch + 1, r["epoch"] * per_epoch + 1)
        assert sum(losses[s] for s in steps) / per_epoch == approx(r["loss"])


def approx(value: float, rel: float = 1e-5):
    import pytest

    return pytest.approx(value, rel=rel, abs=1e-6)
