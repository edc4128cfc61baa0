"""``medpipe explain``: where a classifier bundle looked, for the clinician who has to trust it.

The input (a NIfTI file or a DICOM series folder) is read as ``medpipe infer`` reads it and the
bundle's own inference preprocessing, through :class:`~medpipe.bundle.model.BundleModel`, turns it
into the network input; MONAI's ``GradCAM`` / ``GradCAMpp`` (and, with ``occlusion=True``,
``OcclusionSensitivity``) compute a heat map for one class; the map is taken back to the input grid
by inverting the same preprocessing (MONAI's invertible transforms), so it overlays the input
voxel for voxel. Outputs, each written atomically into ``output``:

* ``<name>_gradcam.nii.gz`` (or ``_gradcampp``): float32 map in [0, 1], same shape and affine as the input;
* ``<name>_occlusion.nii.gz`` (option): drop of the class probability when a patch is hidden;
* ``<name>_montage.png``: eight axial slices across the network input with the map (>= 0.25) overlaid;
* ``<name>_probabilities.json``: class probabilities, predicted class, the validation threshold stored
  next to the weights (``models/threshold.json``), method and target layer.

``<name>`` is the series' hashed id (DICOM) or ``nii-`` + a hash of the file's content, never a file
name (:mod:`medpipe.privacy`); ``--show-paths`` adds the input path to the record.

The target layer defaults to the network's last convolutional block: the last module, in execution
order, whose feature map is at least 4 voxels along every axis (``layer3`` of the 32^3 malignancy
classifier, whose ``layer4`` is 2x2x2; ``layer4`` of the 28^3 vessel classifier), else the last one
larger than one voxel.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.visualize import GradCAM, GradCAMpp, OcclusionSensitivity

from medpipe.atomic import atomic_path, atomic_write_text, file_sha256
from medpipe.bundle.model import BundleModel
from medpipe.data.images import read_image
from medpipe.data.nifti import write_nifti
from medpipe.errors import Code, did_you_mean, look_up
from medpipe.evaluate.threshold import threshold_beside
from medpipe.privacy import shown_path

METHODS = ("gradcam", "gradcampp")
#: The default target layer is the last one whose feature map is at least this many voxels along every
#: axis: a 2x2x2 map (the last block of a small crop classifier) localises nothing.
MIN_CAM_SIZE = 4


def feature_layers(network: torch.nn.Module, x: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """``(name, spatial size)`` of the modules whose output is a feature map (> 1 voxel), in completion order."""
    done: list[tuple[str, tuple[int, ...]]] = []
    hooks = []
    for name, module in network.named_modules():
        if not name:
            continue

        def hook(_m: Any, _i: Any, out: Any, name: str = name) -> None:
            if isinstance(out, torch.Tensor) and out.ndim == x.ndim and int(np.prod(out.shape[2:])) > 1:
                done.append((name, tuple(int(v) for v in out.shape[2:])))

        hooks.append(module.register_forward_hook(hook))
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            network(x)
    finally:
        network.train(was_training)
        for h in hooks:
            h.remove()
    return done


def pick_target_layer(network: torch.nn.Module, x: torch.Tensor, requested: str | None = None) -> str:
    names = [n for n, _ in network.named_modules() if n]
    if requested:
        if requested not in names:
            hint = did_you_mean(requested, names, cutoff=0.5)
            raise Code.EXPLAIN_UNKNOWN_LAYER(
                f"--target-layer {requested}: the network has no module of that name{hint}",
            )
        return requested
    layers = feature_layers(network, x)
    if not layers:
        raise Code.EXPLAIN_UNKNOWN_LAYER(
            "the network produces no spatial feature map for this input; pass --target-layer",
        )
    fine = [name for name, size in layers if min(size) >= MIN_CAM_SIZE]
    return fine[-1] if fine else layers[-1][0]


def _montage(image: np.ndarray, heat: np.ndarray, path: Path, title: str, n: int = 8) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    nz = heat.shape[-1]
    ks = sorted({int(round(v)) for v in np.linspace(nz * 0.1, nz * 0.9 - 1, min(n, nz))})  # across the volume
    cols = min(4, len(ks))
    rows = int(np.ceil(len(ks) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.4 * rows + 0.4), dpi=100, squeeze=False)
    lo, hi = np.percentile(image, [1, 99])
    for ax in axes.flat:
        ax.axis("off")
    for ax, k in zip(axes.flat, ks, strict=False):
        # RAS array [x, y, z]: show rows = anterior at top, columns = patient's right on the left (radiological)
        ax.imshow(np.flipud(image[:, :, k].T)[:, ::-1], cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
        shown = np.ma.masked_less(np.flipud(heat[:, :, k].T)[:, ::-1], 0.25)  # the map where it matters
        ax.imshow(shown, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(f"z {k}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def _to_input_grid(heat: torch.Tensor, image: Any, preprocessing: Any) -> np.ndarray:
    """Invert the bundle's preprocessing on a map defined on the network input grid."""
    # inverse() consumes the trace: give each map its own copy
    mt = MetaTensor(heat, meta=dict(image.meta), applied_operations=copy.deepcopy(image.applied_operations))
    inv = preprocessing.inverse({"image": mt})["image"]
    return np.asarray(inv.detach().cpu().numpy()[0], dtype=np.float32)


def explain(
    bundle: str | Path,
    input_path: str | Path,
    output: str | Path,
    *,
    method: str = "gradcam",
    occlusion: bool = False,
    target_layer: str | None = None,
    class_index: int | None = None,
    device: str | None = None,
    weights: str | Path | None = None,
    show_paths: bool = False,
    echo: Any = print,
) -> dict[str, Any]:
    """Heat map(s), montage and probabilities for one input; returns the probabilities record."""
    method = look_up(method, METHODS, what="--method", code=Code.EXPLAIN_INVALID)
    model = BundleModel.open(bundle, weights=weights, device=device)
    out_dir = Path(output)
    out_dir.mkdir(parents=True, exist_ok=True)
    image = read_image(input_path)
    name = image.series_id or "nii-" + file_sha256(str(input_path))[:10]
    data = model.prepare(image, name)
    network = model.network
    x = data["image"].as_tensor()[None].to(next(network.parameters()).device)
    with torch.no_grad():
        logits = network(x)
    if logits.ndim != 2:
        raise Code.EXPLAIN_NOT_CLASSIFIER(
            f"bundle {model.layout.root.name} outputs shape {tuple(logits.shape)}, not one score per class; "
            "explain works on classifier bundles"
        )
    probs = torch.softmax(logits, dim=1)[0].cpu().numpy()
    n_classes = probs.shape[0]
    cls = int(np.argmax(probs)) if class_index is None else int(class_index)
    if not 0 <= cls < n_classes:
        raise Code.EXPLAIN_INVALID(f"--class {cls} is not a class of this network (0..{n_classes - 1})")
    layer = pick_target_layer(network, x, target_layer)
    cam_cls = GradCAM if method == "gradcam" else GradCAMpp
    cam = cam_cls(nn_module=network, target_layers=layer)
    heat = cam(x, class_idx=cls)[0].detach().cpu()  # (1, X, Y, Z) in [0, 1], on the network input grid
    names = model.class_names
    files = {}
    maps = {method: heat}
    if occlusion:
        occ = OcclusionSensitivity(
            nn_module=network, mask_size=max(4, min(x.shape[2:]) // 4), n_batch=32, overlap=0.25
        )
        occ_map, _ = occ(x)
        maps["occlusion"] = (
            float(probs[cls]) - occ_map[0, cls : cls + 1].detach().cpu()
        )  # > 0: supports the class
    for key, m in maps.items():
        arr = _to_input_grid(m, data["image"], model.preprocessing)
        if arr.shape != image.array.shape:
            raise Code.EXPLAIN_NOT_INVERTIBLE(
                f"the bundle's preprocessing could not be inverted onto the input grid (got {arr.shape}, input "
                f"{image.array.shape})"
            )
        path = out_dir / f"{name}_{key}.nii.gz"
        files[key] = str(write_nifti(path, arr, image.affine_ras, dtype=np.float32))
    record_t = threshold_beside(model.weights.path)
    threshold = None if record_t is None else record_t.threshold
    label = names.get(cls, str(cls))
    _montage(
        data["image"].detach().cpu().numpy()[0],
        heat.numpy()[0],
        out_dir / f"{name}_montage.png",
        f"{model.layout.root.name}: {method} for '{label}' (p={probs[cls]:.3f}), layer {layer}",
    )
    files["montage"] = str(out_dir / f"{name}_montage.png")
    record = {
        "input": name,
        "input_path": shown_path(input_path, show_paths),
        "bundle": model.layout.root.name,
        "bundle_version": model.version,
        "weights_sha256": model.weights.sha256,
        "probabilities": {names.get(i, str(i)): round(float(p), 6) for i, p in enumerate(probs)},
        "predicted_class": int(np.argmax(probs)),
        "explained_class": cls,
        "threshold": threshold,
        "method": method,
        "target_layer": layer,
        "files": files,
    }
    if threshold is not None and n_classes == 2:
        record["positive_at_threshold"] = bool(probs[1] >= threshold)
    atomic_write_text(out_dir / f"{name}_probabilities.json", json.dumps(record, indent=1))
    probs_txt = ", ".join(f"{k} {v:.3f}" for k, v in record["probabilities"].items())
    echo(f"weights {model.describe_weights()}")
    echo(f"{name}: {probs_txt}; {method} of '{label}' at layer {layer} -> {out_dir}")
    return record
