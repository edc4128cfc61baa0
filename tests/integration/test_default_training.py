"""The README's main command, as shipped: default manifest (synthetic phantoms generated on first
use), default epochs, CPU. Slow (about 8 minutes on 2 cores): run with ``pytest -m slow``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from medpipe.cli import cli
from tests.conftest import BUNDLE

#: The acceptance floor of the default run (validation Dice of the nodule class).
DICE_FLOOR = 0.7


@pytest.mark.slow
def test_default_training_reaches_dice_floor(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "--bundle", str(BUNDLE), "--output", str(run)])
    assert result.exit_code == 0, result.output
    record = json.loads((run / "training_metrics.json").read_text())
    assert record["best_metric"] >= DICE_FLOOR, record
    assert (run / "model.pt").is_file()
