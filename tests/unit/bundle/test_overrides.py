"""``--set ID=VALUE`` parsing and id checking."""

from __future__ import annotations

import pytest
from monai.bundle import ConfigParser

from medpipe.bundle.layout import BundleLayout
from medpipe.bundle.overrides import check_override_ids, iter_ids, parse_overrides
from medpipe.errors import BundleError
from tests.conftest import BUNDLE


def test_values_are_typed() -> None:
    got = parse_overrides(
        ["train::dataloader::batch_size=4", "learning_rate=1e-3", "roi_size=[96, 96, 32]", "amp=true",
         "device=$torch.device('cpu')", "name=abc", "legacy#sep=1"]
    )
    assert got == {
        "train::dataloader::batch_size": 4,
        "learning_rate": 1e-3,
        "roi_size": [96, 96, 32],
        "amp": True,
        "device": "$torch.device('cpu')",
        "name": "abc",
        "legacy::sep": 1,
    }


@pytest.mark.parametrize("bad", ["no_equals", "=5", ""])
def test_malformed_override(bad: str) -> None:
    with pytest.raises(BundleError) as e:
        parse_overrides([bad])
    assert e.value.code == "CONFIG_BAD_OVERRIDE"


def test_iter_ids_walks_dicts_and_lists() -> None:
    ids = set(iter_ids({"a": {"b": [1, {"c": 2}]}}))
    assert ids == {"a", "a::b", "a::b::0", "a::b::1", "a::b::1::c"}


def test_unknown_id_suggests_closest() -> None:
    parser = ConfigParser()
    parser.read_config([str(p) for p in BundleLayout.open(BUNDLE).workflow_configs("train")])
    check_override_ids(parser, {"train::dataloader::batch_size": 4})  # exists: no error
    with pytest.raises(BundleError) as e:
        check_override_ids(parser, {"train::dataloader::batchsize": 4})
    assert e.value.code == "CONFIG_UNKNOWN_ID"
    assert "'train::dataloader::batch_size'" in str(e.value)
