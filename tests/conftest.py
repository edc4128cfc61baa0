"""Shared fixtures: the repository layout and a tiny phantom dataset made once per session."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests are derandomized by default so CI is reproducible; explore with fresh random examples
# locally: HYPOTHESIS_PROFILE=explore pytest tests/unit/test_dicom_geometry_properties.py (repeat it)
settings.register_profile("default", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "lung_nodule_ct"
SHARED_DATA = REPO.parent / "shared" / "data"

#: Small but anatomically complete phantoms: fast to make and to train on for one epoch.
TINY_SHAPE = (96, 80, 24)
TINY_SPACING = (3.2, 3.2, 5.0)
TINY_SPLITS = {"training": 2, "validation": 1, "test": 1}


@pytest.fixture(scope="session", autouse=True)
def _session_data_cache(tmp_path_factory: pytest.TempPathFactory):
    """Generated data (the bundles' default manifests) go to a per-session folder, never into the user's
    cache, unless the environment sets MEDPIPE_DATA (e.g. to reuse data generated once); the same for the
    bundle trust store."""
    with pytest.MonkeyPatch.context() as patch:
        # the bundle trust store of the tests is theirs, never the user's (medpipe.bundle.trust)
        patch.setenv("MEDPIPE_TRUST_STORE", str(tmp_path_factory.mktemp("trust") / "trusted_bundles.json"))
        patch.delenv("MEDPIPE_TRUST_BUNDLE", raising=False)
        if not os.environ.get("MEDPIPE_DATA"):
            patch.setenv("MEDPIPE_DATA", str(tmp_path_factory.mktemp("medpipe_data")))
        yield


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-case phantom dataset (NIfTI + DICOM) and its manifest ``manifest.json`` beside it."""
    from medpipe.data.synthetic.lung_ct import generate_dataset, manifest_content
    from medpipe.data.synthetic.phantom import PhantomSpec

    root = tmp_path_factory.mktemp("tiny") / "data"
    spec = PhantomSpec(shape=TINY_SHAPE, spacing=TINY_SPACING)
    generate_dataset(root, TINY_SPLITS, spec=spec, workers=1, progress=False)
    manifest = root.parent / "manifest.json"
    manifest.write_text(json.dumps(manifest_content("data", TINY_SPLITS, with_generator=False)))
    return manifest


def seal_weights(bundle: Path) -> None:
    """Record ``models/model.pt``'s sha256 in the bundle's metadata.json, as ``medpipe promote`` does: a test
    that puts other weights into a copied bundle ships them deliberately (medpipe.bundle.weights.check_shipped)."""
    import hashlib

    meta_path = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["weights_sha256"] = {"model.pt": hashlib.sha256((bundle / "models" / "model.pt").read_bytes()).hexdigest()}
    meta_path.write_text(json.dumps(meta, indent=4))


def copy_with_random_weights(source: Path, bundle: Path, seed: int = 0) -> Path:
    """``bundle``: a copy of ``source``'s configs with random ``network_def`` weights in models/model.pt,
    recorded in its metadata (:func:`seal_weights`), for tests that need a bundle but no training."""
    import shutil

    import torch
    from monai.bundle import ConfigParser

    shutil.copytree(source / "configs", bundle / "configs")
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "common.json"))
    torch.manual_seed(seed)
    (bundle / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
    seal_weights(bundle)
    return bundle


class LogCollector(logging.Handler):
    """Every log record of every logger, formatted: what a verbose run logs, for tests that scan it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(f"{record.name} {record.getMessage()}")
        except Exception:  # noqa: BLE001 - a record that cannot be formatted holds its raw args
            self.lines.append(f"{record.name} {record.msg} {record.args}")


@contextlib.contextmanager
def every_logger_at_debug() -> Iterator[LogCollector]:
    """Every logger at DEBUG into one :class:`LogCollector` (those that do not propagate too), levels
    restored after. pydicom stays at INFO: its DEBUG trace names each file it reads (and with
    ``pydicom.config.debug()`` dumps element values), a developer's tool no medpipe option turns on."""
    handler = LogCollector()
    loggers = [logging.getLogger()] + [v for v in logging.root.manager.loggerDict.values() if isinstance(v, logging.Logger)]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.INFO if lg.name.split(".")[0] == "pydicom" else logging.DEBUG)
        if lg is loggers[0] or not lg.propagate:
            lg.addHandler(handler)
    try:
        yield handler
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
