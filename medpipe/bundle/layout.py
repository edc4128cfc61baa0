"""Where a bundle's files are, and which config files make up each workflow.

A medpipe bundle follows MONAI's bundle specification::

    <bundle>/LICENSE
    <bundle>/configs/metadata.json
    <bundle>/configs/common.json      shared definitions (network, preprocessing constants, paths)
    <bundle>/configs/train.json       training workflow, layered on common
    <bundle>/configs/evaluate.json    override layer on train: evaluation of the saved model
    <bundle>/configs/inference.json   inference workflow, layered on common
    <bundle>/configs/logging.conf
    <bundle>/docs/README.md
    <bundle>/models/model.pt          trained weights (state dict)

Configs may be ``.json`` or ``.yaml``. A workflow is run with its layers merged in order, exactly as
``python -m monai.bundle run --config_file "['configs/common.json','configs/train.json']"`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medpipe.bundle.trust import CONFIG_EXTS, check_trust
from medpipe.errors import Code

#: Layers of each workflow, in merge order (``common`` is optional for bundles that do not split).
WORKFLOW_LAYERS: dict[str, tuple[str, ...]] = {
    "train": ("common", "train"),
    "evaluate": ("common", "train", "evaluate"),
    "inference": ("common", "inference"),
    # a crop classifier used by ``medpipe infer --classifier`` needs only its common definitions
    "crop": ("common",),
}


@dataclass(frozen=True)
class BundleLayout:
    root: Path

    @classmethod
    def open(cls, path: str | Path) -> BundleLayout:
        """Validate that ``path`` is a bundle folder (``BUNDLE_NOT_FOUND``/``BUNDLE_NO_CONFIGS``) that may run
        here (``BUNDLE_UNTRUSTED``, :mod:`medpipe.bundle.trust`)."""
        root = Path(path).expanduser()
        if not root.is_dir():
            raise Code.BUNDLE_NOT_FOUND(
                f"bundle folder {root} does not exist; pass --bundle with a folder such as "
                "bundles/lung_nodule_ct",
            )
        configs = root / "configs"
        if not configs.is_dir() or not any(p.suffix in CONFIG_EXTS for p in configs.iterdir()):
            raise Code.BUNDLE_NO_CONFIGS(
                f"{root} has no configs/ folder with .json/.yaml configs; a bundle needs at least "
                "configs/metadata.json and a workflow config (see docs/bundle_authoring.md)",
            )
        check_trust(root.resolve())  # before any config is parsed: a config is code (medpipe.bundle.trust)
        return cls(root.resolve())

    @property
    def configs_dir(self) -> Path:
        return self.root / "configs"

    def find_config(self, name: str) -> Path | None:
        """``configs/<name>.json`` (or .yaml/.yml) if present."""
        for ext in CONFIG_EXTS:
            p = self.configs_dir / f"{name}{ext}"
            if p.is_file():
                return p
        return None

    def config(self, name: str) -> Path:
        """``configs/<name>.*``, raising ``BUNDLE_MISSING_CONFIG`` if the bundle lacks it."""
        p = self.find_config(name)
        if p is None:
            raise Code.BUNDLE_MISSING_CONFIG(
                f"bundle {self.root.name} has no configs/{name}.json (or .yaml); it is needed for this command",
            )
        return p

    @property
    def metadata(self) -> Path:
        return self.config("metadata")

    @property
    def logging_conf(self) -> Path | None:
        p = self.configs_dir / "logging.conf"
        return p if p.is_file() else None

    @property
    def model_pt(self) -> Path:
        return self.root / "models" / "model.pt"

    def workflow_configs(self, workflow: str) -> list[Path]:
        """Config files to merge for ``workflow`` (``train``, ``evaluate``, ``inference`` or ``crop``)."""
        layers = WORKFLOW_LAYERS[workflow]
        if layers == ("common",):
            return [self.config("common")]
        return [p for p in (self.find_config(n) if n == "common" else self.config(n) for n in layers) if p]
