"""``medpipe promote``: the one deliberate step that changes a bundle's shipped weights, with a version bump.

``medpipe train`` writes into a run folder and never into the bundle. Promoting a run:

1. checks that the folder is a finished run of *this* bundle (``run.json`` naming it, ``model.pt``)
   and that its weights load into the bundle's ``network_def`` (``BUNDLE_NOT_A_RUN``,
   ``CHECKPOINT_MISMATCH``);
2. bumps ``metadata.json`` ``version`` (the next minor version, or ``version`` when given, which must
   be greater: ``BUNDLE_VERSION_INVALID``) and adds a ``changelog`` entry naming the run and its result;
3. copies ``model.pt``, ``training_metrics.json``, ``training_curve.png``, ``threshold.json`` and
   ``operating_point.json`` (when the run has them; stale ones are removed) and ``run.json`` (as ``models/training_run.json``: the
   exact command, its time and result) into ``models/``, each atomically.

Anything already computed from the old weights (``medpipe infer`` done records) is redone on the next
run, because the weights hash and the version both change.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from medpipe.atomic import atomic_path, atomic_write_text, file_sha256
from medpipe.bundle.layout import BundleLayout
from medpipe.bundle.weights import WEIGHTS_FILE, load_weights
from medpipe.bundle.workflow import build_workflow, parsed
from medpipe.errors import Code

RUN_FILE = "run.json"
#: run file -> file in models/
COPIED = {
    WEIGHTS_FILE: WEIGHTS_FILE,
    "training_metrics.json": "training_metrics.json",
    "training_curve.png": "training_curve.png",
    RUN_FILE: "training_run.json",
}
OPTIONAL = ("training_curve.png",)
#: files chosen for a checkpoint on validation: a classifier's decision threshold, a lesion bundle's
#: operating point (medpipe.evaluate.threshold / .detection)
WEIGHT_SIDECARS = ("threshold.json", "operating_point.json")
_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


def parse_version(text: str) -> tuple[int, int, int]:
    match = _VERSION.match(str(text).strip())
    if match is None:
        raise Code.BUNDLE_VERSION_INVALID(f"version {text!r} is not MAJOR.MINOR.PATCH, e.g. 0.3.0")
    return int(match[1]), int(match[2]), int(match[3])


def next_version(current: str, requested: str | None = None) -> str:
    """``requested`` (checked to be greater than ``current``), else the next minor version."""
    old = parse_version(current)
    if requested is None:
        return f"{old[0]}.{old[1] + 1}.0"
    new = parse_version(requested)
    if new <= old:
        raise Code.BUNDLE_VERSION_INVALID(f"version {requested} is not greater than the bundle's {current}")
    return requested


def read_run(layout: BundleLayout, run: str | Path) -> dict[str, Any]:
    """The ``run.json`` of a finished run of this bundle."""
    folder = Path(run).expanduser()
    record_path = folder / RUN_FILE
    if not (folder / WEIGHTS_FILE).is_file() or not record_path.is_file():
        raise Code.BUNDLE_NOT_A_RUN(
            f"{folder} is not a finished training run (it needs {WEIGHTS_FILE} and {RUN_FILE}, which medpipe "
            "train writes at the end)"
        )
    record = json.loads(record_path.read_text(encoding="utf-8"))
    if record.get("bundle_folder") != layout.root.name:
        raise Code.BUNDLE_NOT_A_RUN(
            f"{folder} is a run of bundle {record.get('bundle_folder')!r}, not of {layout.root.name!r}"
        )
    return record


def promote(
    bundle: str | Path, run: str | Path, *, version: str | None = None, note: str = ""
) -> dict[str, Any]:
    """Make run ``run`` the shipped weights of ``bundle``; returns ``{"version", "previous", "model_sha256"}``."""
    layout = BundleLayout.open(bundle)
    folder = Path(run).expanduser().resolve()
    record = read_run(layout, folder)
    wf = build_workflow(layout, "inference")
    load_weights(parsed(wf, "network_def"), folder / WEIGHTS_FILE)  # fits the shipped network, or refuse now
    meta = json.loads(layout.metadata.read_text(encoding="utf-8"))
    previous = str(meta.get("version", "0.0.0"))
    new = next_version(previous, version)
    best = record.get("best_metric")
    result = (
        f"{record.get('key_metric')} {best:.4f} at epoch {record.get('best_epoch')}"
        if best is not None
        else ""
    )
    entry = f"weights from training run {folder.name}" + (f" (validation {result})" if result else "")
    meta["version"] = new
    meta["changelog"] = {new: entry + (f": {note}" if note else ""), **meta.get("changelog", {})}
    models = layout.root / "models"
    for src, dst in COPIED.items():
        if (folder / src).is_file():
            with atomic_path(models / dst) as tmp:
                shutil.copyfile(folder / src, tmp)
        elif src not in OPTIONAL:
            raise Code.BUNDLE_NOT_A_RUN(f"{folder} lacks {src}")
    for name in WEIGHT_SIDECARS:  # chosen for these weights, or absent: one of other weights would mislead
        if (folder / name).is_file():
            with atomic_path(models / name) as tmp:
                shutil.copyfile(folder / name, tmp)
        else:
            (models / name).unlink(missing_ok=True)
    _portable_run_record(models / COPIED[RUN_FILE], layout.root.parent.parent, folder)
    # what every later load of the shipped weights checks (medpipe.bundle.weights.check_shipped)
    meta["weights_sha256"] = {WEIGHTS_FILE: file_sha256(models / WEIGHTS_FILE)}
    atomic_write_text(layout.metadata, json.dumps(meta, indent=4, ensure_ascii=False) + "\n")
    return {"version": new, "previous": previous, "model_sha256": meta["weights_sha256"][WEIGHTS_FILE]}


def _portable_run_record(path: Path, project: Path, run: Path) -> None:
    """The shipped copy of run.json names no folder of the machine that trained: its manifest becomes a
    path relative to the project holding the bundle (``bundles/<name>/../..``), or just a file name, in
    the record, its overrides and its command line; the run folder in the command becomes its name."""
    if not path.is_file():
        return
    record = json.loads(path.read_text(encoding="utf-8"))
    command = str(record.get("command") or "")
    if record.get("manifest"):
        original = str(record["manifest"])
        manifest = Path(original)
        try:
            record["manifest"] = manifest.resolve().relative_to(project.resolve()).as_posix()
        except (ValueError, OSError):
            record["manifest"] = manifest.name
        overrides = record.get("overrides") or {}
        for key, value in overrides.items():  # the same path given as an override on the command line
            if value == original:
                overrides[key] = record["manifest"]
        command = command.replace(original, record["manifest"])
    for folder in {str(run), str(run.resolve())}:
        command = command.replace(folder, run.name)
    if command:
        record["command"] = command
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
