"""Hostile manifests: any file content gives a manifest, its entries, or a coded ManifestError.

Fuzzed: arbitrary bytes, arbitrary JSON (biased to manifest keys), the shipped manifests of
data_manifests/ mutated (a value replaced, a key dropped, the text cut), and entry paths built to
escape the dataset folder (``..``, absolute paths, ``~``, a symlink pointing out). Each input goes
through every call a bundle config makes: load_manifest, split (each split, with and without file
checks), manifest_dataset_dir, intensity_range. The regression tests below hold the minimal inputs
the fuzzing found.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medpipe.data.manifest import SPLITS, intensity_range, load_manifest, load_split, manifest_dataset_dir
from medpipe.errors import ManifestError, MedpipeError
from tests.conftest import REPO
from tests.unit.data.fuzzing import LONG, SHORT, coded_or_result, mutated_bytes

SHIPPED = sorted((REPO / "data_manifests").glob("*.json"))  # with a paste recipe: JSON, but no manifest
DATALISTS = [p for p in SHIPPED if not p.name.endswith(".recipe.json")]
KEYS = ["training", "validation", "test", "dataset_dir", "generator", "allow_outside_dataset_dir",
        "intensity_range", "image", "label", "mask", "dicom", "name", "npz_index", "splits", "version"]  # fmt: skip
PEAK = 64 * 2**20  # manifests here are < 1 MB; json + entries stay far below

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
paths = st.lists(st.sampled_from(["..", ".", "a", "b.nii.gz", "~", "~nobody", "~no_such_user", "/etc", "out", "\x00", "x" * 300]),
                 max_size=5).map(lambda parts: "/".join(parts))  # fmt: skip
json_values = st.recursive(
    scalars | paths,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)


@pytest.fixture(scope="module")
def world() -> Path:
    """A folder with a dataset (``data/``, with a symlink pointing out of it) and a secret beside it."""
    root = Path(tempfile.mkdtemp(prefix="fuzz_manifest_"))
    (root / "data").mkdir()
    (root / "data" / "a").mkdir()
    (root / "data" / "b.nii.gz").write_bytes(b"x")
    (root / "secret").write_text("outside the dataset")
    (root / "data" / "out").symlink_to(root / "secret")
    (root / "data" / "loop").symlink_to(root / "data" / "loop")
    return root


def every_call(manifest: Path) -> None:
    """What a bundle config calls on a manifest; only coded errors may come out."""
    intensity_range(manifest, (0.0, 1.0))
    try:
        m = load_manifest(manifest)
    except MedpipeError:
        return
    manifest_dataset_dir(manifest)
    root = os.path.realpath(m.dataset_dir())
    for split in SPLITS:
        for check in (True, False):
            try:
                entries = m.split(split, required_keys=(), check_files=check)
            except MedpipeError:
                continue
            if m.content.get("allow_outside_dataset_dir") is True:
                continue
            for entry in entries:  # the path-escape rule held
                for key in ("image", "label", "mask", "dicom"):
                    if isinstance(entry.get(key), str):
                        real = os.path.realpath(entry[key])
                        assert real == root or real.startswith(root.rstrip(os.sep) + os.sep), (entry[key], root)


def run(world: Path, target: str, content: bytes) -> None:
    manifest = world / "m.json"
    manifest.write_bytes(content)
    coded_or_result(target, lambda: every_call(manifest), max_peak=PEAK)


def _as_json(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


@st.composite
def manifests_with_paths(draw: Any) -> dict[str, Any]:
    entries = st.fixed_dictionaries({"image": paths}, optional={"label": paths | st.integers(0, 2)})
    content: dict[str, Any] = {"dataset_dir": "data", "training": draw(st.lists(entries, min_size=1, max_size=4))}
    if draw(st.booleans()):
        content["dataset_dir"] = draw(paths)
    return content


@st.composite
def mutated_shipped(draw: Any) -> bytes:
    """A shipped manifest (its first entries, so each example stays small) with values replaced or cut."""
    content = json.loads(draw(st.sampled_from(SHIPPED)).read_text())
    content = {k: (v[:3] if isinstance(v, list) else v) for k, v in content.items()}
    for _ in range(draw(st.integers(1, 4))):
        node: Any = content
        while isinstance(node, (dict, list)) and node and draw(st.booleans()):
            child = node[draw(st.sampled_from(sorted(node)))] if isinstance(node, dict) else draw(st.sampled_from(node))
            if not isinstance(child, (dict, list)):
                break
            node = child
        if isinstance(node, dict) and node:
            key = draw(st.sampled_from(sorted(node)))
            if draw(st.booleans()):
                del node[key]
            else:
                node[key] = draw(json_values)
        elif isinstance(node, list) and node:
            node[draw(st.integers(0, len(node) - 1))] = draw(json_values)
    return _as_json(content)


def _fuzz_bytes(world: Path, content: bytes) -> None:
    run(world, "manifest: bytes", content)


def _fuzz_json(world: Path, value: Any) -> None:
    run(world, "manifest: json", _as_json(value))


def _fuzz_shipped(world: Path, content: bytes) -> None:
    run(world, "manifest: shipped mutated", content)


def _fuzz_paths(world: Path, content: dict[str, Any]) -> None:
    run(world, "manifest: escaping paths", _as_json(content))


any_bytes = st.binary(max_size=200) | mutated_bytes(b'{"dataset_dir": "data", "training": [{"image": "b.nii.gz"}]}')
test_fuzz_bytes = SHORT(given(content=any_bytes)(_fuzz_bytes))
test_fuzz_json = SHORT(given(value=json_values)(_fuzz_json))
test_fuzz_shipped_manifests = SHORT(given(content=mutated_shipped())(_fuzz_shipped))
test_fuzz_escaping_paths = SHORT(given(content=manifests_with_paths())(_fuzz_paths))
test_fuzz_bytes_long = pytest.mark.slow(LONG(given(content=any_bytes)(_fuzz_bytes)))
test_fuzz_json_long = pytest.mark.slow(LONG(given(value=json_values)(_fuzz_json)))
test_fuzz_shipped_manifests_long = pytest.mark.slow(LONG(given(content=mutated_shipped())(_fuzz_shipped)))
test_fuzz_escaping_paths_long = pytest.mark.slow(LONG(given(content=manifests_with_paths())(_fuzz_paths)))


# --- regression tests: the minimal inputs the fuzzing found, and the path-escape rule


def write(tmp_path: Path, content: Any) -> Path:
    path = tmp_path / "m.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.mark.parametrize(
    ("content", "found"),
    [
        ("[" * 100_000 + "]" * 100_000, "RecursionError from json"),
        ({"dataset_dir": None, "training": [{"image": "a"}]}, "TypeError from Path(None)"),
        ({"dataset_dir": 5, "training": [{"image": "a"}]}, "TypeError from Path(5)"),
        ({"generator": 5, "training": [{"image": "a"}]}, "AttributeError: 'int' object has no attribute 'get'"),
        ({"generator": {"name": "lung_ct", "version": "x"}, "training": [{"image": "a"}]}, "ValueError from int('x')"),
        ({"training": [{"image": "~no_such_user/a"}]}, "RuntimeError: Could not determine home directory"),
        ({"dataset_dir": "~no_such_user", "training": [{"image": "a"}]}, "RuntimeError from expanduser"),
        ({"training": [{"image": "a\x00b"}]}, "ValueError: embedded null byte (from realpath)"),
        ({"allow_outside_dataset_dir": "yes", "training": [{"image": "a"}]}, "a string taken as true"),
    ],
)
def test_found_inputs_give_manifest_invalid(tmp_path: Path, content: Any, found: str) -> None:
    with pytest.raises(ManifestError) as e:
        load_split(write(tmp_path, content), "training", keys=("image",))
    assert e.value.code == "MANIFEST_INVALID", found


def test_too_long_file_name_is_a_missing_file_not_an_oserror(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as e:  # was OSError: [Errno 36] File name too long, from Path.exists
        load_split(write(tmp_path, {"training": [{"image": "a" * 5000}]}), "training", keys=("image",))
    assert e.value.code == "MANIFEST_MISSING_FILES"


def test_dataset_dir_symlink_loop_is_a_missing_file_not_a_runtimeerror(tmp_path: Path) -> None:
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(ManifestError) as e:  # was RuntimeError: Symlink loop, from Path.resolve
        load_split(write(tmp_path, {"dataset_dir": "loop", "training": [{"image": "a"}]}), "training", keys=("image",))
    assert e.value.code == "MANIFEST_MISSING_FILES"


def test_oversized_manifest_is_refused_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("medpipe.data.manifest.MAX_MANIFEST_BYTES", 100)
    with pytest.raises(ManifestError) as e:
        load_manifest(write(tmp_path, {"training": [{"image": "a" * 200}]}))
    assert e.value.code == "MANIFEST_INVALID" and "MiB" in str(e.value)


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "out", "a/../../secret", "~/x"])
def test_paths_escaping_the_dataset_folder_are_refused(world: Path, path: str) -> None:
    manifest = world / "escape.json"
    manifest.write_text(json.dumps({"dataset_dir": "data", "training": [{"image": "b.nii.gz", "label": path}]}))
    with pytest.raises(ManifestError) as e:
        load_split(manifest, "training")
    assert e.value.code == "MANIFEST_PATH_ESCAPES" and "allow_outside_dataset_dir" in str(e.value)


def test_escape_is_allowed_by_the_manifest_key_or_the_argument(world: Path) -> None:
    content = {"dataset_dir": "data", "training": [{"image": "b.nii.gz", "label": "../secret"}]}
    manifest = world / "allowed.json"
    manifest.write_text(json.dumps(content))
    (entry,) = load_manifest(manifest).split("training", allow_outside_dataset_dir=True)
    assert Path(entry["label"]).resolve() == (world / "secret").resolve()
    manifest.write_text(json.dumps({**content, "allow_outside_dataset_dir": True}))
    assert load_split(manifest, "training")[0]["label"] == entry["label"]
    with pytest.raises(ManifestError) as e:  # the argument overrides the key
        load_manifest(manifest).split("training", allow_outside_dataset_dir=False)
    assert e.value.code == "MANIFEST_PATH_ESCAPES"


def test_a_dataset_dir_outside_the_manifest_folder_is_no_escape(world: Path) -> None:
    """The shipped manifests point at ``../../shared/data/...``: that is the dataset folder itself."""
    (world / "manifests" / "sub").mkdir(parents=True, exist_ok=True)
    manifest = world / "manifests" / "sub" / "m.json"
    manifest.write_text(json.dumps({"dataset_dir": "../../data", "training": [{"image": "b.nii.gz", "label": "a"}]}))
    (entry,) = load_split(manifest, "training")
    assert entry["image"] == str(Path(os.path.realpath(world / "data")) / "b.nii.gz")
    absolute = str(Path(os.path.realpath(world / "data")) / "b.nii.gz")  # absolute, but inside: fine
    manifest.write_text(json.dumps({"dataset_dir": "../../data", "training": [{"image": absolute, "label": "a"}]}))
    assert load_split(manifest, "training")[0]["image"] == absolute


@pytest.mark.parametrize("manifest", DATALISTS, ids=[p.stem for p in DATALISTS])
def test_every_entry_of_the_shipped_manifests_lies_inside_its_dataset_folder(manifest: Path) -> None:
    m = load_manifest(manifest)
    for split in m.split_names():
        assert m.split(split, required_keys=(), check_files=False)
