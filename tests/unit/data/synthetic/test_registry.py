"""The registry of generators: dispatch by name and version, the data cache and the default manifests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medpipe.data.manifest import load_manifest, load_split
from medpipe.data.synthetic import (
    REGISTRY,
    data_cache_root,
    dataset_folder,
    default_manifest,
    ensure_generated,
    lung_ct,
    nodule_crops,
)
from medpipe.data.synthetic.writer import MANIFEST_NAME, STAMP
from medpipe.errors import DataGenerationError
from tests.conftest import REPO


def test_registry_holds_both_generators():
    assert REGISTRY == {lung_ct.GENERATOR_NAME: lung_ct.GENERATOR,
                        nodule_crops.GENERATOR_NAME: nodule_crops.GENERATOR}
    for name, gen in REGISTRY.items():
        assert gen.name == name and gen.stamp({"test": 1}) == {"name": name, "version": gen.version,
                                                              "splits": {"test": 1}}


def test_unknown_generator_suggests_the_closest(tmp_path):
    with pytest.raises(DataGenerationError) as e:
        ensure_generated({"name": "lung_nodule_ct_dmeo", "version": 1}, tmp_path)
    assert e.value.code == "DATA_UNKNOWN_GENERATOR"
    assert "did you mean 'lung_nodule_ct_demo'" in str(e.value)
    with pytest.raises(DataGenerationError) as e:
        default_manifest("phantoms")
    assert e.value.code == "DATA_UNKNOWN_GENERATOR" and "lung_nodule_malignancy_ct_demo" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_wrong_version_is_refused(tmp_path):
    with pytest.raises(DataGenerationError) as e:
        ensure_generated({"name": nodule_crops.GENERATOR_NAME, "version": nodule_crops.GENERATOR_VERSION + 1},
                         tmp_path)
    assert e.value.code == "DATA_GENERATOR_VERSION" and "regenerate the manifest" in str(e.value)


def test_cache_root_rule(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDPIPE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_cache_root() == tmp_path / "data"
    monkeypatch.setenv("MEDPIPE_DATA", "")  # set but empty: as if unset
    assert data_cache_root() == tmp_path / "xdg" / "medpipe"
    monkeypatch.delenv("MEDPIPE_DATA")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_cache_root() == tmp_path / "home" / ".cache" / "medpipe"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_default_manifest_honours_medpipe_data(monkeypatch, tmp_path, name):
    monkeypatch.setenv("MEDPIPE_DATA", str(tmp_path))
    gen = REGISTRY[name]
    path = Path(default_manifest(name))
    assert path == tmp_path / f"{name}-v{gen.version}" / MANIFEST_NAME == dataset_folder(name) / MANIFEST_NAME
    content = json.loads(path.read_text())
    assert content == gen.manifest_content(".", gen.default_splits)
    assert content["generator"] == {"name": name, "version": gen.version, "splits": dict(gen.default_splits)}
    assert {s: len(content[s]) for s in gen.default_splits} == dict(gen.default_splits)
    manifest = load_manifest(path)
    assert manifest.dataset_dir() == path.parent and manifest.generator == content["generator"]
    assert not (path.parent / STAMP).exists()  # the data come on first use of a split, not now
    written = path.stat().st_mtime_ns
    assert default_manifest(name) == str(path) and path.stat().st_mtime_ns == written  # written once
    path.write_text(json.dumps({**content, "description": "edited"}))
    default_manifest(name)
    assert json.loads(path.read_text()) == content  # a stale manifest is rewritten


def test_data_generated_beside_its_manifest_on_first_use(tmp_path):
    """The default-manifest layout (``dataset_dir: "."``): the data join the manifest, which survives."""
    folder = tmp_path / "crops-v1"
    folder.mkdir()
    splits = {"training": 2, "validation": 1, "test": 1}
    (folder / MANIFEST_NAME).write_text(json.dumps(nodule_crops.manifest_content(".", splits)))
    entries = load_split(folder / MANIFEST_NAME, "test")
    assert Path(entries[0]["image"]).is_file() and (folder / STAMP).is_file()
    assert len(list((folder / "imagesTr").iterdir())) == 4 and (folder / MANIFEST_NAME).is_file()
    stamp = json.loads((folder / STAMP).read_text())
    (folder / STAMP).write_text(json.dumps({**stamp, "version": 0}))  # made by an older recipe
    load_split(folder / MANIFEST_NAME, "training")
    assert json.loads((folder / STAMP).read_text()) == stamp and (folder / MANIFEST_NAME).is_file()


def test_bundle_configs_resolve_their_default_manifest_with_plain_monai(tmp_path):
    """MONAI's own parser, in a fresh process (nothing of medpipe imported), merging each workflow's files
    the way MONAI's bundle runner does: the manifest is the generator's default manifest."""
    code = (
        "import sys; from monai.bundle import ConfigParser\n"
        "for bundle, workflow in [(b, w) for b in sys.argv[1:] for w in ('train', 'inference')]:\n"
        "    p = ConfigParser()\n"
        "    p.read_config([f'{bundle}/configs/common.json', f'{bundle}/configs/{workflow}.json'])\n"
        "    print(p.get_parsed_content('manifest'))\n"
    )
    bundles = [str(REPO / "bundles" / "lung_nodule_ct")]  # (lung_nodule_malignancy_ct: the real VOIs since 0.2.0)
    env = {**os.environ, "MEDPIPE_DATA": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code, *bundles], capture_output=True, text=True, env=env,
                         cwd=tmp_path, check=True)
    version = lung_ct.GENERATOR_VERSION
    expected = [tmp_path / f"{name}-v{version}" / MANIFEST_NAME for name in ("lung_nodule_ct_demo",) * 2]
    assert [Path(line) for line in out.stdout.split()] == expected
    assert all(p.is_file() for p in expected)
