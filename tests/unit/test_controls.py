"""medpipe.controls: the LR schedules, gradient clipping, early stopping and dataset caching a bundle's
train config switches with ``--set``, each checked on a real MONAI ``SupervisedTrainer``."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from ignite.engine import Engine, Events

from medpipe.controls import EarlyStop, GradientClip, LrSchedule, lr_scheduler, training_dataset
from medpipe.errors import BundleError


def optimizer(lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=lr)


def lrs(schedule: str, epochs: int, **kw) -> list[float]:
    """The learning rate each epoch starts with, stepping once per epoch."""
    opt = optimizer()
    sched = lr_scheduler(opt, schedule, epochs, **kw)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedules_follow_their_shapes():
    cos = lrs("cosine", 10, min_lr=1e-3)
    assert cos[0] == pytest.approx(0.1) and all(a > b for a, b in zip(cos, cos[1:], strict=False))
    warm = lrs("warmup_cosine", 10, warmup_epochs=3, min_lr=1e-3)
    assert warm[0] < warm[1] < warm[2] < warm[3] and warm[3] == pytest.approx(0.1)  # warm-up, then the peak
    assert all(a > b for a, b in zip(warm[3:], warm[4:], strict=False))  # and cosine decay
    step = lrs("step", 6, step_epochs=2, gamma=0.5)
    assert step == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    assert lrs("constant", 4) == pytest.approx([0.1] * 4)
    opt = optimizer()
    one = lr_scheduler(opt, "onecycle", max_epochs=2, steps_per_epoch=5)
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        one.step()
    assert max(seen) == pytest.approx(0.1, rel=0.05) and seen[0] < 0.01 and seen[-1] < 0.01


def test_a_wrong_schedule_names_the_valid_ones():
    with pytest.raises(BundleError) as err:
        lr_scheduler(optimizer(), "cosin", 10)
    assert err.value.code == "CONFIG_BAD_OVERRIDE" and "cosine" in err.value.message
    with pytest.raises(BundleError):
        lr_scheduler(optimizer(), "warmup_cosine", 5, warmup_epochs=5)


def test_plateau_counts_validations_not_epochs():
    """ReduceLROnPlateau steps with the validation metric after a validation, and never in between."""
    opt = optimizer()
    sched = lr_scheduler(opt, "plateau", max_epochs=20, patience=1, gamma=0.5)
    validator = SimpleNamespace(state=SimpleNamespace(epoch=0, metrics={"val": 0.5}))
    trainer = Engine(lambda e, b: None)

    @trainer.on(Events.EPOCH_COMPLETED(every=4))
    def validate(engine):  # a flat metric, validated every 4th epoch, before the scheduler steps
        validator.state.epoch = engine.state.epoch

    LrSchedule(sched, "plateau", validator, "val").attach(trainer)
    lr_at = {}
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: lr_at.__setitem__(e.state.epoch, opt.param_groups[0]["lr"])
    )
    trainer.run([0], max_epochs=12)
    # validations at 4 (best), 8 (1 bad: within patience), 12 (2 bad: reduce)
    assert lr_at[11] == pytest.approx(0.1) and lr_at[12] == pytest.approx(0.05)


def supervised_trainer(handlers: list, max_epochs: int = 1, scale: float = 100.0):
    from monai.engines import SupervisedTrainer

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1)
    data = [{"image": torch.randn(2, 4) * scale, "label": torch.randn(2, 1) * scale} for _ in range(3)]
    opt = torch.optim.SGD(net.parameters(), lr=1e-6)
    return SupervisedTrainer(device=torch.device("cpu"), max_epochs=max_epochs, train_data_loader=data, network=net,
                             optimizer=opt, loss_function=torch.nn.MSELoss(), train_handlers=handlers)  # fmt: skip


@pytest.mark.parametrize("max_norm", [0.0, 1.5])
def test_gradients_are_clipped_before_every_step(max_norm):
    trainer = supervised_trainer([GradientClip(max_norm)])
    norms: list[float] = []
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        grads = [p.grad for g in trainer.optimizer.param_groups for p in g["params"]]
        norms.append(math.sqrt(sum(float((g**2).sum()) for g in grads)))
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    trainer.run()
    assert len(norms) == 3
    if max_norm:
        assert max(norms) <= max_norm * (1 + 1e-5)
    else:
        assert min(norms) > 100  # left alone: the gradients of this loss are large
    with pytest.raises(BundleError):
        GradientClip(-1)


def test_early_stop_ends_the_run_and_its_state_survives_a_resume():
    validator = Engine(lambda e, b: None)
    scores = iter([0.5, 0.6, 0.55, 0.58, 0.59, 0.9, 0.9])

    @validator.on(Events.EPOCH_COMPLETED)
    def metric(engine):
        engine.state.metrics["val"] = next(scores)

    stop = EarlyStop(validator, "val", patience=3)
    trainer = supervised_trainer([stop], max_epochs=10)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: validator.run([0]))
    trainer.run()
    assert trainer.state.epoch == 5  # best 0.6 at epoch 2, then 3 validations without improvement
    state = stop.state_dict()
    assert state["counter"] == 3 and state["best_score"] == pytest.approx(0.6)
    again = EarlyStop(Engine(lambda e, b: None), "val", patience=3)
    again.attach(Engine(lambda e, b: None))
    again.load_state_dict(state)
    assert again.state_dict() == state
    off = EarlyStop(validator, "val", patience=0)
    assert off.handler is None and off.state_dict()["counter"] == 0


def test_dataset_caches(tmp_path):
    from monai.data import CacheDataset, Dataset, PersistentDataset
    from monai.transforms import Compose, Lambdad

    calls = []

    def double(x):
        calls.append(x)
        return x * 2

    transform = Compose([Lambdad("v", double)])
    data = [{"v": torch.tensor(float(i))} for i in range(4)]
    disk = training_dataset(data, transform, "disk", cache_dir=tmp_path / "c")
    assert isinstance(disk, PersistentDataset) and [float(d["v"]) for d in disk] == [0, 2, 4, 6]
    assert len(list((tmp_path / "c").glob("*.pt"))) == 4
    calls.clear()
    again = training_dataset(data, transform, "disk", cache_dir=tmp_path / "c")
    assert [float(d["v"]) for d in again] == [0, 2, 4, 6] and calls == []  # read from disk, not recomputed
    other = training_dataset(
        data, Compose([Lambdad("v", double), Lambdad("v", double)]), "disk", cache_dir=tmp_path / "c"
    )
    assert [float(d["v"]) for d in other] == [0, 4, 8, 12]  # another preprocessing: not the first one's cache
    assert isinstance(training_dataset(data, transform, "memory", cache_rate=0.5), CacheDataset)
    assert type(training_dataset(data, transform, "none")) is Dataset
    with pytest.raises(BundleError):
        training_dataset(data, transform, "ram")
    with pytest.raises(BundleError):
        training_dataset(data, transform, "disk", cache_dir=None)
