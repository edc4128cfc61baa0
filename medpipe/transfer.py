"""Transfer learning for ``medpipe train``: initialise from another model, freeze layers, scale the LR.

* :func:`init_from` loads every weight of a source (a bundle folder -> its ``models/model.pt``, or a
  checkpoint saved as a state dict or ``{"model": state_dict}``) whose name and shape match the
  network's, with MONAI's :func:`~monai.networks.utils.copy_model_state`, and says what was loaded,
  skipped (same name, other shape) and left newly initialised.
* :func:`freeze` takes ``none``, ``backbone`` (everything but the last layer: ``fc`` of a ResNet,
  ``class_layers`` of a DenseNet) or ``until:LAYER`` (every parameter up to *and including* LAYER, in
  the network's registration order; LAYER is a module name such as ``layer2`` or ``features.denseblock2``)
  and turns ``requires_grad`` off. Batch-norm statistics of frozen layers keep adapting to the new
  data (the trainer puts the network in train mode); only the weights are fixed.
* :func:`regroup_optimizer` rebuilds the param groups of the optimizer the bundle's config built (same
  class and hyper-parameters): frozen parameters are dropped, pretrained ones get ``lr * scale``.
  It runs before the LR scheduler is built, so the scheduler sees both groups.

Errors (``BundleError``): ``INIT_SOURCE_NOT_FOUND``, ``INIT_NO_MATCHING_LAYERS``, ``FREEZE_INVALID``,
``FREEZE_UNKNOWN_LAYER`` (with the closest layer names), ``CHECKPOINT_UNREADABLE``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from monai.networks.utils import copy_model_state

from medpipe.bundle.weights import check_shipped, load_state_dict
from medpipe.errors import Code, did_you_mean

#: Names of the final (task-specific) layer of the network families medpipe ships.
HEAD_NAMES = ("fc", "class_layers", "classifier", "head", "out")


@dataclass
class InitReport:
    source: Path
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # same name, different shape
    new: list[str] = field(default_factory=list)  # not in the source at all

    def lines(self, limit: int = 8) -> list[str]:
        def short(names: list[str]) -> str:
            more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
            return ", ".join(names[:limit]) + more

        out = [
            f"init-from {self.source}: loaded {len(self.loaded)} tensors, skipped {len(self.skipped)} "
            f"(shape mismatch), newly initialised {len(self.skipped) + len(self.new)}"
        ]
        if self.skipped:
            out.append(f"  skipped: {short(self.skipped)}")
        if self.new:
            out.append(f"  not in source: {short(self.new)}")
        return out


def resolve_source(source: str | Path) -> Path:
    """A bundle folder -> its ``models/model.pt``; a file -> itself."""
    p = Path(source).expanduser()
    if p.is_dir():
        ckpt = p / "models" / "model.pt"
        if not ckpt.is_file():
            raise Code.INIT_SOURCE_NOT_FOUND(
                f"--init-from {p} is a folder without models/model.pt; train that bundle first or pass a checkpoint file",
            )
        check_shipped(p / "configs" / "metadata.json", ckpt)  # a bundle's weights: the ones it records
        return ckpt
    if not p.is_file():
        raise Code.INIT_SOURCE_NOT_FOUND(
            f"--init-from {p} does not exist; pass a bundle folder or a .pt checkpoint",
        )
    return p


def init_from(network: torch.nn.Module, source: str | Path) -> InitReport:
    """Copy every source weight whose name and shape match into ``network`` (in place)."""
    path = resolve_source(source)
    src = load_state_dict(path)
    # checkpoints saved from DataParallel/DDP wrappers carry a "module." prefix
    if src and all(k.startswith("module.") for k in src):
        src = {k[len("module.") :]: v for k, v in src.items()}
    dst = network.state_dict()
    _, updated, _ = copy_model_state(network, src, inplace=True)
    report = InitReport(source=path, loaded=list(updated))
    for name, value in dst.items():
        if name in updated:
            continue
        (report.skipped if name in src and src[name].shape != value.shape else report.new).append(name)
    if not updated:
        example = next(iter(src), "none")
        raise Code.INIT_NO_MATCHING_LAYERS(
            f"--init-from {path}: none of its {len(src)} tensors matches a layer of this network by name and "
            f"shape (source e.g. '{example}', network e.g. '{next(iter(dst), 'none')}'); pass a checkpoint of "
            "the same network family",
        )
    return report


def layer_names(network: torch.nn.Module) -> list[str]:
    """Module names that own parameters, e.g. ``conv1``, ``layer1``, ``layer1.0``, ``layer1.0.conv1``."""
    names: list[str] = []
    for pname, _ in network.named_parameters():
        parts = pname.split(".")[:-1]
        for i in range(1, len(parts) + 1):
            n = ".".join(parts[:i])
            if n not in names:
                names.append(n)
    return names


def _head(network: torch.nn.Module) -> str:
    tops = [n for n in layer_names(network) if "." not in n]
    for name in HEAD_NAMES:
        if name in tops:
            return name
    return tops[-1]


def frozen_parameters(network: torch.nn.Module, spec: str) -> list[str]:
    """Names of the parameters ``spec`` freezes (``none``, ``backbone``, ``until:LAYER``)."""
    spec = (spec or "none").strip()
    params = [n for n, _ in network.named_parameters()]
    if spec == "none":
        return []
    if spec == "backbone":
        head = _head(network)
        return [n for n in params if not (n == head or n.startswith(head + "."))]
    if spec.startswith("until:"):
        layer = spec.split(":", 1)[1].strip()
        names = layer_names(network)
        if layer not in names:
            hint = did_you_mean(layer, names, cutoff=0.5).removeprefix("; ")
            hint = f"{hint} " if hint else ""
            tops = [n for n in names if "." not in n]
            raise Code.FREEZE_UNKNOWN_LAYER(
                f"--freeze until:{layer}: the network has no layer '{layer}'; {hint}top-level layers: {', '.join(tops)}",
            )
        last = max(i for i, n in enumerate(params) if n.startswith(layer + "."))
        return params[: last + 1]
    hint = did_you_mean(spec, ("none", "backbone", "until:"))
    raise Code.FREEZE_INVALID(f"--freeze must be none, backbone or until:LAYER, got '{spec}'{hint}")


def freeze(network: torch.nn.Module, spec: str) -> tuple[int, int]:
    """Apply ``spec``; returns ``(trainable, total)`` parameter counts."""
    frozen = set(frozen_parameters(network, spec))
    for name, p in network.named_parameters():
        p.requires_grad_(name not in frozen)
    total = sum(p.numel() for p in network.parameters())
    trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
    return trainable, total


def regroup_optimizer(
    optimizer: torch.optim.Optimizer, network: torch.nn.Module, pretrained: set[str], lr_scale: float = 1.0
) -> list[tuple[str, int, float]]:
    """Rebuild ``optimizer``'s param groups: trainable pretrained parameters at ``lr * lr_scale``, the
    others at ``lr``; frozen ones dropped. Returns ``(group, n_tensors, lr)`` per group."""
    if optimizer.state:
        raise Code.CONFIG_INVALID(
            "the optimizer has already stepped; regroup it before training"
        )
    base = {k: v for k, v in optimizer.param_groups[0].items() if k not in ("params", "initial_lr")}
    lr = float(base["lr"])
    groups: dict[str, list[torch.nn.Parameter]] = {"pretrained": [], "new": [], "trainable": []}
    for name, p in network.named_parameters():
        if p.requires_grad:
            key = "trainable" if lr_scale == 1.0 else ("pretrained" if name in pretrained else "new")
            groups[key].append(p)
    optimizer.param_groups.clear()
    out = []
    for gname, params in groups.items():
        if not params:
            continue
        glr = lr * lr_scale if gname == "pretrained" else lr
        optimizer.add_param_group({**base, "params": params, "lr": glr})
        out.append((gname, len(params), glr))
    return out
