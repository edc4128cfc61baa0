"""Checkpoints are read with ``weights_only=True``: pickled code is refused, state dicts load."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch

from medpipe.bundle.weights import load_state_dict
from medpipe.errors import BundleError


class Payload:
    """Stands in for an attacker's object: unpickling it would run code in a full ``torch.load``."""

    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_plain_and_nested_state_dicts_load(tmp_path: Path) -> None:
    state = collections.OrderedDict(w=torch.ones(2, 3), b=torch.zeros(3))
    torch.save(state, tmp_path / "plain.pt")
    torch.save({"model": state, "epoch": 3}, tmp_path / "nested.pt")
    for name in ("plain.pt", "nested.pt"):
        got = load_state_dict(tmp_path / name)
        assert set(got) == {"w", "b"} and torch.equal(got["w"], state["w"])


def test_pickled_code_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save({"model": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(BundleError) as e:
        load_state_dict(tmp_path / "evil.pt")
    assert e.value.code == "CHECKPOINT_UNREADABLE"
    assert "code ran" not in capsys.readouterr().out


def test_not_a_state_dict(tmp_path: Path) -> None:
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(BundleError) as e:
        load_state_dict(tmp_path / "list.pt")
    assert e.value.code == "CHECKPOINT_UNREADABLE"
