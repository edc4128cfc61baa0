"""The lung_nodule_ct_demo dataset: manifest entries, files written per case, worker-independent bytes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from medpipe.data.manifest import load_manifest, load_split
from medpipe.data.synthetic import lung_ct
from medpipe.data.synthetic.phantom import PhantomSpec
from medpipe.data.synthetic.writer import STAMP

SPEC = PhantomSpec(shape=(96, 80, 24), spacing=(3.2, 3.2, 5.0))


def test_default_manifest_content_matches_the_generator(tmp_path):
    """What ``default_manifest('lung_nodule_ct_demo')`` writes lists exactly the cases the generator makes."""
    content = lung_ct.manifest_content(".")
    assert content["dataset_dir"] == "." and content["synthetic"] is True
    assert content["generator"] == {"name": "lung_nodule_ct_demo", "version": lung_ct.GENERATOR_VERSION,
                                    "splits": lung_ct.DEFAULT_SPLITS}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(content))
    assert load_manifest(path).generator == content["generator"]
    ids = [e["case_id"] for s in ("training", "validation", "test") for e in content[s]]
    assert len(ids) == len(set(ids)) == sum(lung_ct.DEFAULT_SPLITS.values())  # no case in two splits
    assert ids == [f"phantom_{i:03d}" for i in range(36)]
    assert content["test"][0] == {"case_id": "phantom_030", "image": "imagesTr/phantom_030.nii.gz",
                                  "label": "labelsTr/phantom_030.nii.gz", "dicom": "dicom/phantom_030"}
    assert "generator" not in lung_ct.manifest_content(".", with_generator=False)


def test_tiny_dataset_files_and_case_records(tiny_dataset: Path):
    root = tiny_dataset.parent / "data"
    cases = json.loads((root / "cases.json").read_text())["cases"]
    entries = [e for s in ("training", "validation", "test") for e in load_split(tiny_dataset, s)]
    assert [c["case_id"] for c in cases] == [Path(e["image"]).name.removesuffix(".nii.gz") for e in entries]
    assert all(c["seed"] == lung_ct.BASE_SEED + i and c["nodules"] for i, c in enumerate(cases))
    assert json.loads((root / STAMP).read_text())["name"] == "lung_nodule_ct_demo"


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_files_with_one_or_two_workers(tmp_path):
    splits = {"training": 2}
    one = lung_ct.generate_dataset(tmp_path / "one", splits, spec=SPEC, workers=1, progress=False)
    two = lung_ct.generate_dataset(tmp_path / "two", splits, spec=SPEC, workers=2, progress=False)
    digests = _digests(one)
    assert digests == _digests(two)
    assert len([k for k in digests if k.startswith("dicom/")]) == 2 * SPEC.shape[2]
