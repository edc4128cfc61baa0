"""medpipe.handlers.ValidationHandler: every ``interval`` epochs and always after the last one."""

from __future__ import annotations

import pytest
from ignite.engine import Engine


class RecordingValidator:
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def run(self, epoch: int) -> None:
        self.epochs.append(epoch)


@pytest.mark.parametrize(
    ("max_epochs", "interval", "expected"),
    [(5, 2, [2, 4, 5]), (4, 2, [2, 4]), (1, 5, [1]), (3, 1, [1, 2, 3])],
)
def test_validates_every_interval_and_after_the_last_epoch(max_epochs, interval, expected):
    from medpipe.handlers import ValidationHandler

    handler = ValidationHandler(interval=interval)
    handler.validator = RecordingValidator()  # any object with run(epoch); MONAI's setter wants an Evaluator
    trainer = Engine(lambda engine, batch: None)
    handler.attach(trainer)
    trainer.run([0, 1], max_epochs=max_epochs)
    assert handler.validator.epochs == expected
