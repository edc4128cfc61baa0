"""Shared fixtures: the repository layout and a tiny phantom dataset made once per session."""

from __future__ import annotations

import json
import os
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
    cache, unless the environment sets MEDPIPE_DATA (e.g. to reuse data generated once)."""
    if os.environ.get("MEDPIPE_DATA"):
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
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
