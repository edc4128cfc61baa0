"""Which weights a command uses, and loading them safely: the one owner of "does the checkpoint exist".

A bundle ships its weights as ``models/model.pt``. ``medpipe train`` writes its checkpoints into a run
folder instead (``runs/<bundle>/<time>/model.pt``), so every command that predicts takes the shipped
weights by default and other weights only when asked (``--weights FILE`` or ``--weights RUN_DIR``):
:func:`resolve_weights` decides, and raises ``BUNDLE_NO_WEIGHTS`` (in one wording) when they are absent.

Checkpoints are read with ``torch.load(..., weights_only=True)``: a pickled checkpoint cannot execute
code. A plain state dict and MONAI/ignite's ``{"model": state_dict, ...}`` are both accepted. The shipped
``models/model.pt`` is also checked against the sha256 its ``metadata.json`` records (:func:`check_shipped`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from medpipe.atomic import file_sha256
from medpipe.bundle.layout import BundleLayout
from medpipe.errors import Code

WEIGHTS_FILE = "model.pt"


@dataclass(frozen=True)
class Weights:
    """The checkpoint a command predicts with."""

    path: Path
    sha256: str
    #: the bundle's own ``models/model.pt`` (not a run's or another file)
    shipped: bool

    def describe(self, layout: BundleLayout, version: str) -> str:
        """``models/model.pt (shipped with 0.2.1, sha256 1a2b3c4d)``: what the command says it used."""
        where = (
            f"{self.path.relative_to(layout.root)} (shipped with {version}"
            if self.shipped
            else f"{self.path} (not the shipped weights"
        )
        return f"{where}, sha256 {self.sha256[:8]})"


def resolve_weights(layout: BundleLayout, weights: str | Path | None = None) -> Weights:
    """The shipped ``models/model.pt`` (``weights=None``), ``<folder>/model.pt`` for a run folder, or a file."""
    if weights is None:
        path = layout.model_pt
    else:
        path = Path(weights).expanduser()
        path = path / WEIGHTS_FILE if path.is_dir() else path
    if not path.is_file():
        hint = (
            f"train the bundle (medpipe train --bundle {layout.root}) and promote the run, or pass --weights"
            if weights is None
            else "pass a checkpoint file or a training run folder holding model.pt"
        )
        raise Code.BUNDLE_NO_WEIGHTS(f"the weights {path} do not exist: {hint}")
    path = path.resolve()
    weights_ = Weights(path, file_sha256(path), shipped=path == layout.model_pt.resolve())
    if weights_.shipped:
        check_shipped(layout.metadata, path, weights_.sha256)
    return weights_


def check_shipped(metadata: Path, path: Path, sha256: str | None = None) -> None:
    """``BUNDLE_WEIGHTS_TAMPERED`` when ``models/<name>`` is not the file ``metadata.json`` records
    (``weights_sha256``, written by ``medpipe promote``); a bundle that records none is not checked."""
    try:
        recorded = json.loads(Path(metadata).read_text(encoding="utf-8")).get("weights_sha256") or {}
    except (OSError, ValueError):
        return  # an unreadable metadata.json is reported by the commands that need it
    expected = recorded.get(Path(path).name) if isinstance(recorded, dict) else None
    if expected is None:
        return
    actual = sha256 or file_sha256(path)
    if actual != expected:
        raise Code.BUNDLE_WEIGHTS_TAMPERED(
            f"{path} has sha256 {actual[:12]}..., but the bundle's metadata.json records {expected[:12]}... for it: "
            "the shipped weights were changed or damaged; restore them (git checkout / a fresh copy), or pass "
            "other weights with --weights"
        )


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights of a checkpoint, loaded with ``weights_only=True`` (no pickled code is executed)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise Code.CHECKPOINT_UNREADABLE(
            f"{path} is not a weights-only PyTorch checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from None
    if isinstance(ckpt, dict) and "model" in ckpt and isinstance(ckpt["model"], dict):
        ckpt = ckpt["model"]
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise Code.CHECKPOINT_UNREADABLE(f"{path} holds no state dict of tensors")
    return ckpt


def load_weights(network: torch.nn.Module, path: str | Path) -> None:
    """Load ``path`` into ``network`` (strict); ``CHECKPOINT_MISMATCH`` names the first tensor that does not fit."""
    state = load_state_dict(path)
    try:
        network.load_state_dict(state)
    except RuntimeError as e:
        detail = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e))
        raise Code.CHECKPOINT_MISMATCH(
            f"{path} does not fit the bundle's network_def ({detail}); use the weights trained with this "
            "config, or fix the config"
        ) from None
