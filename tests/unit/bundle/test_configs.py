"""Every shipped bundle config: its medpipe references resolve, and it names nothing outside the bundle."""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

CONFIGS = sorted((REPO / "bundles").glob("*/configs/*.json"))
REFERENCE = re.compile(r"\bmedpipe(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)
    elif isinstance(node, str):
        yield node


def resolve(dotted: str) -> Any:
    """The object ``a.b.c`` names: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:n]))
        except ModuleNotFoundError:
            continue
        for attr in parts[n:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_there_are_configs_to_check() -> None:
    assert len(CONFIGS) >= 16 and {p.parent.parent.name for p in CONFIGS} >= {"hippocampus_mri", "lung_nodule_ct"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_every_medpipe_reference_resolves(config: Path) -> None:
    refs = {m for s in strings(json.loads(config.read_text())) for m in REFERENCE.findall(s)}
    for ref in sorted(refs):
        resolve(ref)


#: Bundles trained on real data that cannot be embedded: their default manifest is the repository's
#: (data_manifests/<bundle>.json); a copy elsewhere trains with --manifest.
REAL_DATA = {"hippocampus_mri", "vessel_aneurysm_mra", "lung_nodule_malignancy_ct"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_configs_name_nothing_outside_their_bundle(config: Path) -> None:
    """A bundle copied anywhere (the way MONAI bundles are shared) must not reach into this repository."""
    content = json.loads(config.read_text())
    bundle = config.parent.parent.name
    outside = {k: v for k, v in content.items() if isinstance(v, str) and "../" in v}
    if bundle in REAL_DATA and config.name == "common.json":
        assert outside == {"manifest": f"$@bundle_root + '/../../data_manifests/{bundle}.json'"}
    else:
        assert not [s for s in strings(content) if "../" in s], outside
    assert "$import glob" not in config.read_text()  # imported and never used (removed in 0.1.1 / 0.2.1)


@pytest.mark.parametrize("bundle", sorted(p.parent.parent for p in REPO.glob("bundles/*/configs/train.json")),
                         ids=lambda p: p.name)  # fmt: skip
def test_every_bundle_has_a_multi_process_layer_that_fits_its_train_config(bundle: Path) -> None:
    """configs/multi_gpu.json (``--nproc``): the ids it sets or references exist in the bundle's
    train config, and the ``distributed.`` names it calls exist in medpipe.distributed."""
    from monai.bundle import ConfigParser

    import medpipe.distributed

    layer = json.loads((bundle / "configs" / "multi_gpu.json").read_text())
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "common.json"), str(bundle / "configs" / "train.json")])
    for key in layer:
        parent = key.replace("#", "::").rsplit("::", 1)[0] if "#" in key else None
        assert key in ("imports", "initialize", "finalize") or key in parser or (parent and parent in parser), key
    for text in strings(layer):
        for ref in re.findall(r"@([A-Za-z_][\w#:]*)", text):
            assert ref.replace("#", "::") in parser or ref in {k for k in layer}, ref
        for name in re.findall(r"\bdistributed\.([A-Za-z_]\w*)", text):
            assert hasattr(medpipe.distributed, name), name
