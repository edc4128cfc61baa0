"""Synthetic datasets medpipe makes itself, deterministically, on first use.

A bundle that must run anywhere without a download points at a *generator* instead of shipping
volumes. ``REGISTRY`` maps each generator's name to its :class:`~medpipe.data.synthetic.writer.Generator`:

``lung_nodule_ct_demo``
    36 chest-CT phantoms with labelled nodules, NIfTI and DICOM (:mod:`.lung_ct`, :mod:`.phantom`);
``lung_nodule_malignancy_ct_demo``
    720 benign/malignant nodule crops (:mod:`.nodule_crops`).

:func:`default_manifest` is what a bundle config names as its manifest
(``"manifest": {"_target_": "medpipe.data.synthetic.default_manifest", "name": "lung_nodule_ct_demo"}``):
it writes the generator's
manifest once into the generator's folder of the data cache (:func:`data_cache_root`,
``<cache>/<name>-v<version>/manifest.json`` with ``dataset_dir: "."``) and returns its path. The data
themselves are written beside it the first time a split is used: :meth:`medpipe.data.manifest.Manifest.split`
calls :func:`ensure_generated` for a manifest with a ``generator`` entry. Errors:
``DATA_UNKNOWN_GENERATOR`` (a name not in ``REGISTRY``), ``DATA_GENERATOR_VERSION`` (a manifest made by
another version of a generator), ``DATA_DIR_CONFLICT`` and ``DATA_GENERATION_FAILED`` (:mod:`.writer`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medpipe.atomic import atomic_write_text
from medpipe.data.synthetic import lung_ct, nodule_crops
from medpipe.data.synthetic.writer import MANIFEST_NAME, Generator, already_generated
from medpipe.errors import Code, look_up

__all__ = ["REGISTRY", "data_cache_root", "dataset_folder", "default_manifest", "ensure_generated",
           "generator"]

#: Every synthetic-data generator, by the name manifests use.
REGISTRY: dict[str, Generator] = {g.name: g for g in (lung_ct.GENERATOR, nodule_crops.GENERATOR)}


def generator(name: str) -> Generator:
    """The generator called ``name``; ``DATA_UNKNOWN_GENERATOR`` (with a "did you mean") otherwise."""
    return REGISTRY[look_up(str(name), REGISTRY, what="data generator", code=Code.DATA_UNKNOWN_GENERATOR)]


def data_cache_root() -> Path:
    """The folder medpipe generates data into: ``$MEDPIPE_DATA`` if set, else ``$XDG_CACHE_HOME/medpipe``
    if ``XDG_CACHE_HOME`` is set, else ``~/.cache/medpipe``. Each generator has its own folder in it
    (:func:`dataset_folder`); deleting the folder only costs a regeneration."""
    if os.environ.get("MEDPIPE_DATA"):
        return Path(os.environ["MEDPIPE_DATA"]).expanduser().resolve()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser().resolve() / "medpipe"
    return Path.home() / ".cache" / "medpipe"


def dataset_folder(name: str) -> Path:
    """``<cache>/<name>-v<version>``: where generator ``name`` writes its default dataset and manifest."""
    gen = generator(name)
    return data_cache_root() / f"{gen.name}-v{gen.version}"


def default_manifest(name: str) -> str:
    """Path of generator ``name``'s default manifest, ``<cache>/<name>-v<version>/manifest.json``.

    The manifest (``dataset_dir: "."``, the ``generator`` entry, the default splits) is written
    atomically when it is absent or differs from what this medpipe would write; the data are generated
    beside it on first use of a split. Cheap: bundle configs call it every time they are parsed.
    """
    gen = generator(name)
    path = dataset_folder(name) / MANIFEST_NAME
    content = gen.manifest_content(".", gen.default_splits, with_generator=True)
    try:
        current = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        current = None
    if current != content:
        try:
            atomic_write_text(path, json.dumps(content, indent=1) + "\n")
        except OSError as e:
            raise Code.DATA_GENERATION_FAILED(
                f"could not write the manifest of {name} to {path}: {e}; set MEDPIPE_DATA to a writable "
                "folder"
            ) from e
    return str(path)


def ensure_generated(entry: Mapping[str, Any], root: str | Path) -> Path:
    """Make sure the synthetic dataset a manifest's ``generator`` ``entry`` (name, version,
    splits) describes exists in ``root``; generate it there when it does not. Returns ``root``."""
    gen = generator(entry.get("name"))  # type: ignore[arg-type]
    version = int(entry.get("version", gen.version))
    if version != gen.version:
        raise Code.DATA_GENERATOR_VERSION(
            f"manifest asks for {gen.name} version {version} but this medpipe makes version "
            f"{gen.version}; regenerate the manifest with this medpipe",
        )
    splits = dict(entry.get("splits", gen.default_splits))
    root = Path(root)
    if already_generated(root, gen.version, splits):
        return root
    return gen.generate_dataset(root, splits)
