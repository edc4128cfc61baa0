"""``--set ID=VALUE`` overrides, checked against the bundle's parsed config before anything runs.

An override of an id that does not exist would silently *add* a new key in MONAI (and be ignored);
a typo like ``train::dataloader::batchsize`` would then waste an hour of training. Here an unknown id
is an error naming the closest existing ids. Values are parsed as YAML scalars/lists (``4`` -> int,
``1e-3`` -> float, ``[96,96,32]`` -> list, ``true`` -> bool); ``$``-expressions and ``@`` references
are kept as strings, as MONAI expects.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

import yaml
from monai.bundle import ConfigParser
from monai.bundle.utils import ID_SEP_KEY

from medpipe.errors import Code, did_you_mean

_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def parse_value(text: str) -> Any:
    if text.startswith(("$", "@", "%")):
        return text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and _FLOAT.match(value):  # YAML 1.1 reads "1e-3" as a string
        return float(value)
    return value


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """``["a::b=1", ...]`` -> ``{"a::b": 1}``; ``#`` is accepted as the legacy separator."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("#", ID_SEP_KEY)
        if not sep or not key:
            raise Code.CONFIG_BAD_OVERRIDE(
                f"override '{pair}' is not of the form ID=VALUE (e.g. train::dataloader::batch_size=4)",
            )
        out[key] = parse_value(value.strip())
    return out


def iter_ids(config: Any, prefix: str = "") -> Iterator[str]:
    """Every id of a nested config, e.g. ``train``, ``train::dataloader``, ``train::dataloader::batch_size``."""
    if isinstance(config, dict):
        items: Iterable[tuple[Any, Any]] = config.items()
    elif isinstance(config, list):
        items = enumerate(config)
    else:
        return
    for k, v in items:
        cid = f"{prefix}{ID_SEP_KEY}{k}" if prefix else str(k)
        yield cid
        yield from iter_ids(v, cid)


def check_override_ids(parser: ConfigParser, overrides: dict[str, Any], allow_new: Iterable[str] = ()) -> None:
    """Raise ``CONFIG_UNKNOWN_ID`` for an override id absent from the config (suggesting the closest)."""
    allowed = set(allow_new)
    ids = None
    for key in overrides:
        if key in allowed or key in parser:
            continue
        ids = ids if ids is not None else sorted(set(iter_ids(parser.get())))
        raise Code.CONFIG_UNKNOWN_ID(
            f"config id '{key}' does not exist in this bundle's configs{did_you_mean(key, ids)}"
        )
