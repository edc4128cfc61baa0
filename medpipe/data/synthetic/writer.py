"""The staged-folder writer and stamp shared by the synthetic-data generators.

A generator writes every case into a hidden temporary sibling of its dataset folder and renames it into
place at the end (:func:`write_generated`), so an interrupted run leaves nothing half-written. The
folder then holds a stamp, ``.medpipe_generated.json`` (``STAMP``), naming the generator, its version and
the splits it made: :func:`already_generated` regenerates when the version or the splits differ and
refuses (``DATA_DIR_CONFLICT``) to write into a non-empty folder no generator made. The folder may also
hold its own manifest (``manifest.json``, written by :func:`medpipe.data.synthetic.default_manifest`
with ``dataset_dir: "."``): it does not make the folder foreign and survives a regeneration.

:class:`Generator` is what each generator module declares (``GENERATOR``) for the registry of
:mod:`medpipe.data.synthetic`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from medpipe.errors import Code

__all__ = ["MANIFEST_NAME", "STAMP", "Generator", "already_generated", "write_generated"]

#: Stamp file of a generated folder: ``{"name", "version", "splits"}`` of the generator that made it.
STAMP = ".medpipe_generated.json"
#: A manifest kept inside the dataset folder it describes (the generators' default manifests).
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class Generator:
    """A synthetic dataset medpipe can make: what a manifest's ``generator`` entry names.

    ``manifest_content(dataset_dir, splits, with_generator)`` returns the manifest of the dataset;
    ``generate_dataset(root, splits)`` writes it (atomically, with the stamp) and returns ``root``.
    """

    name: str
    version: int
    default_splits: Mapping[str, int]
    manifest_content: Callable[..., dict[str, Any]]
    generate_dataset: Callable[..., Path]

    def stamp(self, splits: Mapping[str, int]) -> dict[str, Any]:
        """The stamp (and manifest ``generator`` entry) of this generator's dataset for ``splits``."""
        return {"name": self.name, "version": self.version, "splits": dict(splits)}


def write_generated(
    root: str | Path,
    subdirs: tuple[str, ...],
    make_jobs: Callable[[Path], list[Any]],
    write_case: Callable[[Any], dict[str, Any]],
    *,
    stamp: dict[str, Any],
    what: str,
    desc: str,
    unit: str,
    workers: int | None = None,
    progress: bool = True,
    chunksize: int = 1,
) -> Path:
    """Run ``write_case`` on every job into a temporary sibling of ``root`` (processes when there are
    several jobs and workers), write ``cases.json`` and the stamp, then rename it to ``root``: a run
    killed half-way leaves no half-written dataset. A ``manifest.json`` already in ``root`` is kept.

    ``make_jobs(tmp)`` lists the jobs (each names its output folder ``tmp``); ``write_case(job)`` writes
    one case and returns its record for ``cases.json``. Cases are independent, so any worker count gives
    the same files. Raises ``DATA_GENERATION_FAILED`` when the disk refuses.
    """
    root = Path(root).resolve()
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for sub in subdirs:
            (tmp / sub).mkdir(parents=True, exist_ok=True)
        jobs = make_jobs(tmp)
        workers = workers or min(2, os.cpu_count() or 1)
        cases = []
        with tqdm(total=len(jobs), desc=desc, unit=unit, disable=not progress) as bar:
            if workers > 1 and len(jobs) > 1:
                with ProcessPoolExecutor(max_workers=workers) as pool:
                    for c in pool.map(write_case, jobs, chunksize=chunksize):
                        cases.append(c)
                        bar.update()
            else:
                for job in jobs:
                    cases.append(write_case(job))
                    bar.update()
        (tmp / "cases.json").write_text(json.dumps({"cases": cases}, indent=1))
        (tmp / STAMP).write_text(json.dumps(stamp))
        if root.exists():
            if (root / MANIFEST_NAME).is_file():
                shutil.copy2(root / MANIFEST_NAME, tmp / MANIFEST_NAME)
            shutil.rmtree(root)
        tmp.rename(root)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise Code.DATA_GENERATION_FAILED(f"could not write {what} to {root}: {e}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def already_generated(root: Path, version: int, splits: Mapping[str, int]) -> bool:
    """True when ``root`` holds a dataset this generator version made for ``splits``; refuse
    (``DATA_DIR_CONFLICT``) a folder no generator made that holds anything but its ``manifest.json``,
    rather than write into it."""
    stamp = root / STAMP
    if stamp.is_file():
        try:
            made = json.loads(stamp.read_text())
        except json.JSONDecodeError:
            made = {}
        return made.get("version") == version and made.get("splits") == dict(splits)
    if root.exists() and any(p.name != MANIFEST_NAME for p in root.iterdir()):
        raise Code.DATA_DIR_CONFLICT(
            f"{root} exists and was not made by medpipe's generator; move it away or set dataset_dir "
            "to your own data",
        )
    return False
