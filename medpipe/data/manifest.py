"""Data manifests: Decathlon-format datalists with a portable dataset root.

A manifest is a JSON file in MONAI's Decathlon datalist format (``training`` / ``validation`` /
``test`` lists of ``{"image": ..., "label": ...}``) plus a few medpipe keys:

``dataset_dir``
    folder the relative paths are resolved against; itself relative to the manifest file, so a
    manifest and its data can move together. A bundle may override it (``--set dataset_dir=/data``).
``generator``
    optional ``{"name": ..., "version": ..., "splits": ...}``: the data is synthetic and medpipe makes
    it, deterministically, the first time a split is used (see :mod:`medpipe.data.synthetic`).
``intensity_range``
    optional ``[low, high]``: the input window of the images (:func:`intensity_range`).
``allow_outside_dataset_dir``
    optional ``true``: entries may name files outside the dataset folder. Without it an entry whose path
    resolves elsewhere (``../../etc/passwd``, an absolute path, a symlink pointing out) is refused with
    ``MANIFEST_PATH_ESCAPES``: a manifest from elsewhere cannot make a pipeline read (or a report name) any
    file the user can read. ``dataset_dir`` itself may lie anywhere (``../../shared/data/...``): it *is*
    the dataset folder. :meth:`Manifest.split` takes the same switch as an argument.
``labels``, ``name``, ``description``, ``synthetic``
    documentation carried with the data.

Every problem raises :class:`~medpipe.errors.ManifestError` with a stable code:
``MANIFEST_NOT_FOUND``, ``MANIFEST_INVALID``, ``MANIFEST_UNKNOWN_SPLIT``, ``MANIFEST_EMPTY_SPLIT``,
``MANIFEST_MISSING_FILES``, ``MANIFEST_PATH_ESCAPES``; any other file content, however hostile, is one of
these (``tests/unit/data/test_fuzz_manifest.py`` checks it), and a file over :data:`MAX_MANIFEST_BYTES`
is not read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medpipe.data.synthetic import ensure_generated
from medpipe.errors import Code, ManifestError

#: Splits a manifest may define, in the order they are reported.
SPLITS = ("training", "validation", "test")
#: Entry keys holding paths (resolved against the dataset folder); other keys are passed through.
PATH_KEYS = ("image", "label", "dicom", "mask", "instances", "nodules")
#: How many missing files an error message lists before summarising.
MAX_LISTED = 5
#: Intensity window of uint8 images (MedMNIST archives).
UINT8_RANGE = (0, 255)
#: Larger manifest files are refused unread (the largest shipped one is 0.2 MB; 10^6 cases are ~100 MB).
MAX_MANIFEST_BYTES = 256 * 2**20
#: Manifest key (and :meth:`Manifest.split` argument) allowing entries outside the dataset folder.
ALLOW_OUTSIDE = "allow_outside_dataset_dir"


def _expand(value: str, what: str, manifest: Path) -> Path:
    """``value`` as a path with ``~`` expanded; MANIFEST_INVALID for a home folder that does not exist."""
    try:
        return Path(value).expanduser()
    except RuntimeError:  # "~nobody/x": no such user
        raise Code.MANIFEST_INVALID(
            f"{what} {value!r} in {manifest} names a home folder that does not exist; write the full path",
        ) from None


def _real(path: Path | str, what: str, manifest: Path) -> str:
    """The path with every symlink followed (loops left as they are); MANIFEST_INVALID if no path can be."""
    try:
        return os.path.realpath(path)
    except (ValueError, OSError) as e:  # an embedded NUL byte
        raise Code.MANIFEST_INVALID(f"{what} {str(path)!r} in {manifest} is not a usable path ({e})") from None


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


@dataclass
class Manifest:
    """A parsed, structurally valid manifest. File existence is checked per split by :meth:`split`."""

    path: Path
    content: dict[str, Any] = field(repr=False)

    @property
    def name(self) -> str:
        return str(self.content.get("name", self.path.stem))

    @property
    def generator(self) -> dict[str, Any] | None:
        return self.content.get("generator")

    def dataset_dir(self, override: str | Path | None = None) -> Path:
        """The folder relative entries resolve against: ``override``, else ``dataset_dir`` relative
        to the manifest file, else the manifest's own folder."""
        if override not in (None, ""):
            return Path(_real(_expand(str(override), "dataset_dir", self.path), "dataset_dir", self.path))
        rel = _expand(self.content.get("dataset_dir", "."), "dataset_dir", self.path)
        return Path(_real(self.path.parent / rel, "dataset_dir", self.path))

    def split_names(self) -> list[str]:
        return [s for s in SPLITS if s in self.content]

    def split(
        self,
        name: str,
        *,
        dataset_dir: str | Path | None = None,
        required_keys: Sequence[str] = ("image",),
        check_files: bool = True,
        allow_outside_dataset_dir: bool | None = None,
    ) -> list[dict[str, Any]]:
        """Entries of split ``name`` with absolute paths; raises if the split is empty or files are missing.

        A path that resolves outside the dataset folder is MANIFEST_PATH_ESCAPES unless
        ``allow_outside_dataset_dir`` (``None``: the manifest's ``allow_outside_dataset_dir`` key decides).
        """
        if name not in self.content:
            known = ", ".join(self.split_names()) or "none"
            raise Code.MANIFEST_UNKNOWN_SPLIT(
                f"manifest {self.path} has no split '{name}' (it has: {known}); "
                f"add a '{name}' list or choose another split",
            )
        entries = self.content[name]
        if not entries:
            raise Code.MANIFEST_EMPTY_SPLIT(
                f"split '{name}' of manifest {self.path} is empty; add at least one case",
            )
        root = self.dataset_dir(dataset_dir)
        if self.generator and root == self.dataset_dir():
            # synthetic data made on first use, into the manifest's own dataset folder only
            ensure_generated(self.generator, root)
        allow = allow_outside_dataset_dir
        if allow is None:
            allow = self.content.get(ALLOW_OUTSIDE) is True
        real_root = str(root)  # dataset_dir() followed its symlinks already
        resolved, missing, escaping = [], [], []
        for i, entry in enumerate(entries):
            absent = [k for k in required_keys if k not in entry]
            if absent:
                raise Code.MANIFEST_INVALID(
                    f"entry {i} of split '{name}' in {self.path} lacks key(s) {absent}; "
                    f"every entry needs {list(required_keys)}",
                )
            item = dict(entry)
            for key in PATH_KEYS:
                if isinstance(item.get(key), str):  # a class index or number (classification) is no path
                    p = _expand(item[key], f"entry {i} {key}", self.path)
                    p = p if p.is_absolute() else root / p
                    item[key] = str(p)
                    if not allow and not _inside(_real(p, f"entry {i} {key}", self.path), real_root):
                        escaping.append(f"{item[key]!r} (entry {i} {key})")
                    elif check_files and not os.path.exists(p):  # False, not OSError, for a too long name
                        missing.append(str(p))
            resolved.append(item)
        if escaping:
            shown = ", ".join(escaping[:MAX_LISTED])
            more = f" and {len(escaping) - MAX_LISTED} more" if len(escaping) > MAX_LISTED else ""
            raise Code.MANIFEST_PATH_ESCAPES(
                f"{len(escaping)} path(s) of split '{name}' in {self.path} lie outside the dataset folder {root}: "
                f"{shown}{more}; move the files into it, or set \"{ALLOW_OUTSIDE}\": true in the manifest "
                "if it is yours",
            )
        if missing:
            shown = ", ".join(missing[:MAX_LISTED])
            more = f" and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
            raise Code.MANIFEST_MISSING_FILES(
                f"{len(missing)} file(s) of split '{name}' in {self.path} do not exist: {shown}{more}; "
                f"paths are resolved against {root} (set dataset_dir to where the data is)",
            )
        return resolved


def load_manifest(path: str | Path) -> Manifest:
    """Read and structurally validate a manifest file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise Code.MANIFEST_NOT_FOUND(
            f"manifest file {p} does not exist; pass --manifest with the path of a datalist JSON",
        )
    try:
        size = p.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise Code.MANIFEST_INVALID(
                f"manifest {p} is {size / 2**20:.0f} MiB, over the {MAX_MANIFEST_BYTES // 2**20} MiB a manifest "
                "may have; split it",
            )
        content = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise Code.MANIFEST_NOT_FOUND(f"manifest file {p} cannot be read ({e.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Code.MANIFEST_INVALID(f"manifest {p} is not valid JSON ({e})") from None
    except RecursionError:  # "[[[[...": json's C decoder recurses per level
        raise Code.MANIFEST_INVALID(f"manifest {p} nests arrays or objects too deeply to be a datalist") from None
    if not isinstance(content, dict):
        raise Code.MANIFEST_INVALID(
            f"manifest {p} must be a JSON object with 'training'/'validation'/'test' lists, "
            f"got {type(content).__name__}",
        )
    if not any(s in content for s in SPLITS):
        raise Code.MANIFEST_INVALID(
            f"manifest {p} has none of the splits {list(SPLITS)}; keys found: {sorted(content)[:8]}",
        )
    for s in SPLITS:
        if s in content and not (
            isinstance(content[s], list) and all(isinstance(e, dict) for e in content[s])
        ):
            raise Code.MANIFEST_INVALID(
                f"split '{s}' of manifest {p} must be a list of objects like "
                '{"image": "...", "label": "..."}',
            )
    _check_medpipe_keys(content, p)
    return Manifest(path=p.resolve(), content=content)


def _check_medpipe_keys(content: dict[str, Any], p: Path) -> None:
    """MANIFEST_INVALID for a medpipe key of the wrong type (it would fail far from the manifest)."""
    if not isinstance(content.get("dataset_dir", ""), str):
        raise Code.MANIFEST_INVALID(
            f"dataset_dir of manifest {p} must be a folder path (a string), got {content['dataset_dir']!r}"[:300],
        )
    if not isinstance(content.get(ALLOW_OUTSIDE, False), bool):
        raise Code.MANIFEST_INVALID(f"{ALLOW_OUTSIDE} of manifest {p} must be true or false")
    gen = content.get("generator")
    if gen is None:
        return
    splits = gen.get("splits", {}) if isinstance(gen, dict) else None
    if not (
        isinstance(gen, dict) and isinstance(gen.get("name"), str)
        and isinstance(gen.get("version", 0), int) and not isinstance(gen.get("version"), bool)
        and isinstance(splits, dict)
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in splits.values())
    ):  # fmt: skip
        raise Code.MANIFEST_INVALID(
            f"generator of manifest {p} must be {{\"name\": str, \"version\": int, \"splits\": {{split: count}}}}",
        )


def load_split(
    manifest: str | Path,
    split: str,
    dataset_dir: str | Path | None = None,
    keys: Sequence[str] = ("image", "label"),
) -> list[dict[str, Any]]:
    """Entries of one split with absolute paths: the call bundle configs make
    (``"$medpipe.data.manifest.load_split(@manifest, 'training', @dataset_dir)"``)."""
    return load_manifest(manifest).split(split, dataset_dir=dataset_dir, required_keys=keys)


def manifest_dataset_dir(manifest: str | Path) -> str:
    """Default ``dataset_dir`` of a manifest, for bundle configs."""
    return str(load_manifest(manifest).dataset_dir())


def intensity_range(manifest: str | Path | None, default: Sequence[float]) -> list[float]:
    """Input intensity window ``[low, high]`` of a manifest's images, for a bundle's intensity scaling.

    An explicit ``"intensity_range": [low, high]`` in the manifest wins; else a manifest whose entries
    point into an npz archive (they carry ``npz_index``, as ``medpipe manifest medmnist`` writes them:
    MedMNIST stores uint8 crops) gets ``UINT8_RANGE``; else ``default`` (e.g. a CT window in HU). A
    missing or unreadable manifest also gets ``default``, so inference from a copied bundle still works.
    """
    try:
        content = load_manifest(manifest).content if manifest not in (None, "") else {}
    except ManifestError:
        content = {}
    window = content.get("intensity_range")
    if (isinstance(window, list) and len(window) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in window)):
        return [float(window[0]), float(window[1])]
    if any("npz_index" in entry for split in SPLITS for entry in content.get(split, ())):
        return [float(v) for v in UINT8_RANGE]
    return [float(v) for v in default]


NIFTI_SUFFIXES = (".nii", ".nii.gz")


def inference_inputs(
    dataset_dir: str | Path | None, manifest: str | Path | None = None, split: str = "test"
) -> list[dict[str, str]]:
    """Inputs of an inference config: every NIfTI file in ``dataset_dir`` (sorted), or, when no
    folder is given, the images of ``split`` in ``manifest``."""
    if dataset_dir not in (None, ""):
        root = Path(str(dataset_dir)).expanduser()
        if root.is_file() and root.name.endswith(NIFTI_SUFFIXES):
            return [{"image": str(root.resolve())}]
        if not root.is_dir():
            raise Code.INPUT_NOT_FOUND(
                f"input {root} is neither a folder nor a NIfTI file; pass --dataset_dir with a folder of "
                ".nii/.nii.gz images",
            )
        files = sorted(p for p in root.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))
        if not files:
            raise Code.INPUT_NO_IMAGES(
                f"folder {root} holds no .nii/.nii.gz files; DICOM folders go through 'medpipe infer'",
            )
        return [{"image": str(p.resolve())} for p in files]
    if manifest in (None, ""):
        raise Code.INPUT_NOT_FOUND("no input: set dataset_dir (a folder of NIfTI images) or manifest")
    return [{"image": e["image"]} for e in load_split(manifest, split, keys=("image",))]
