"""``medpipe evaluate``: a bundle's inference on a labelled split, scored in each case's original space.

The bundle's own inference components do the work (``preprocessing``, ``network``, ``inferer`` and
``postprocessing`` minus its SaveImage step, from common + inference configs; weights from
``models/model.pt``, loaded weights-only). The post-processing maps predictions back to the input grid
(MONAI's ``Invertd``), so they are compared with the label as stored and the figures do not depend on
the bundle's resampling. Metrics are MONAI's: Dice, 95th-percentile Hausdorff
distance and normalised surface Dice (tolerance ``nsd_tolerance_mm``), per foreground class.

Writes ``metrics.csv`` (one row per case) and ``summary.json`` (mean, median, std, min, max per class
and metric) and returns the summary.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.atomic import atomic_write_text
from medpipe.bundle.layout import BundleLayout
from medpipe.bundle.workflow import build_workflow, inference_overrides, parsed
from medpipe.data.checks import check_labelled_cases
from medpipe.data.manifest import load_manifest
from medpipe.errors import Code

METRICS = ("dice", "hd95", "nsd")


def _class_names(content: dict[str, Any], num_classes: int) -> list[str]:
    labels = content.get("labels") or {}
    return [str(labels.get(str(c), f"class{c}")).lower() for c in range(1, num_classes)]


def _summary(rows: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for metric in METRICS:
        for name in [*names, "mean"]:
            values = np.array([r[f"{metric}_{name}"] for r in rows], dtype=float)
            finite = values[np.isfinite(values)]
            out[f"{metric}_{name}"] = {
                "mean": float(finite.mean()) if finite.size else None,
                "median": float(np.median(finite)) if finite.size else None,
                "std": float(finite.std()) if finite.size else None,
                "min": float(finite.min()) if finite.size else None,
                "max": float(finite.max()) if finite.size else None,
                "n": int(finite.size),
                "n_undefined": int(values.size - finite.size),  # e.g. HD95 with an empty prediction
            }
    return out


def evaluate(
    bundle: str | Path,
    *,
    manifest: str | Path | None = None,
    split: str = "test",
    output: str | Path | None = None,
    device: str | None = None,
    nsd_tolerance_mm: float = 1.0,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score ``bundle`` on ``split`` of its manifest (or ``manifest``); see the module docstring."""
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice
    from monai.networks.utils import one_hot
    from monai.transforms import LoadImage, SaveImage, SaveImaged
    from tqdm import tqdm

    from medpipe.bundle.export import load_state_dict

    layout = BundleLayout.open(bundle)
    wf = build_workflow(layout, "inference", inference_overrides(manifest, device))
    man = load_manifest(parsed(wf, "manifest"))
    entries = man.split(split, required_keys=("image", "label"))
    num_classes = int(parsed(wf, "num_classes"))
    names = _class_names(man.content, num_classes)
    check_labelled_cases(entries, num_classes, split=split)
    preprocessing = parsed(wf, "preprocessing")
    network = parsed(wf, "network")
    inferer = parsed(wf, "inferer")
    dev = parsed(wf, "device")
    weights = layout.model_pt
    if not weights.is_file():
        raise Code.BUNDLE_NO_WEIGHTS(f"{weights} does not exist: train the bundle first")
    network.load_state_dict(load_state_dict(weights))
    network.eval()
    post = [t for t in parsed(wf, "postprocessing").transforms if not isinstance(t, (SaveImaged, SaveImage))]
    load_label = LoadImage(image_only=True, ensure_channel_first=True)
    out_dir = Path(output) if output else layout.root / "eval" / split
    echo(f"evaluating {layout.root.name} on split '{split}' ({len(entries)} cases) on {dev}")

    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for entry in tqdm(entries, desc=f"evaluate {split}", unit="case", leave=False):
        case = Path(entry["image"]).name.split(".nii")[0]
        label = load_label(entry["label"])
        data = preprocessing({"image": entry["image"]})
        with torch.no_grad():
            logits = inferer(data["image"][None].to(dev), network)
        data["pred"] = logits[0].cpu()
        for transform in post:  # the bundle's own post-processing (Invertd, argmax, ...), minus saving
            data = transform(data)
        pred = data["pred"]
        if pred.shape[0] != 1:  # post-processing left probabilities: take the class
            pred = pred.argmax(dim=0, keepdim=True)
        if tuple(pred.shape[1:]) != tuple(label.shape[1:]):
            raise Code.BUNDLE_GRID_MISMATCH(
                f"{case}: the bundle's post-processing gives {tuple(pred.shape[1:])}, the label is "
                f"{tuple(label.shape[1:])}: its postprocessing must invert the preprocessing (Invertd)",
            )
        spacing = [float(s) for s in np.linalg.norm(np.asarray(label.affine)[:3, :3], axis=0)]
        p = one_hot(torch.as_tensor(np.asarray(pred))[None].long(), num_classes)
        y = one_hot(torch.as_tensor(np.asarray(label))[None].long(), num_classes)
        dice = compute_dice(p, y, include_background=False)[0]
        hd95 = compute_hausdorff_distance(p, y, include_background=False, percentile=95, spacing=spacing)[0]
        nsd = compute_surface_dice(
            p,
            y,
            class_thresholds=[nsd_tolerance_mm] * (num_classes - 1),
            include_background=False,
            spacing=spacing,
        )[0]
        row: dict[str, Any] = {"case": case}
        for metric, values in zip(METRICS, (dice, hd95, nsd), strict=True):
            vals = [float(v) for v in values]
            vals = [v if math.isfinite(v) else float("nan") for v in vals]
            row.update({f"{metric}_{n}": v for n, v in zip(names, vals, strict=True)})
            row[f"{metric}_mean"] = (
                float(np.nanmean(vals)) if any(math.isfinite(v) for v in vals) else float("nan")
            )
        rows.append(row)
    seconds = time.perf_counter() - start

    summary = {
        "bundle": layout.root.name,
        "split": split,
        "manifest": str(man.path),
        "cases": len(rows),
        "classes": names,
        "nsd_tolerance_mm": nsd_tolerance_mm,
        "seconds": round(seconds, 1),
        "metrics": _summary(rows, names),
    }
    fields = ["case"] + [f"{m}_{n}" for m in METRICS for n in [*names, "mean"]]
    lines = [",".join(fields)] + [",".join(_fmt(r[f]) for f in fields) for r in rows]
    atomic_write_text(out_dir / "metrics.csv", "\n".join(lines) + "\n")
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1) + "\n")

    echo(
        f"{'class':<12} {'Dice mean':>10} {'median':>8} {'std':>7} {'HD95 mm':>8} {'NSD@' + str(nsd_tolerance_mm):>8}"
    )
    for name in [*names, "mean"]:
        m = summary["metrics"]
        d, h, s = m[f"dice_{name}"], m[f"hd95_{name}"], m[f"nsd_{name}"]
        echo(
            f"{name:<12} {_fmt(d['mean']):>10} {_fmt(d['median']):>8} {_fmt(d['std']):>7} "
            f"{_fmt(h['mean']):>8} {_fmt(s['mean']):>8}"
        )
    echo(
        f"{len(rows)} cases in {seconds:.0f} s; per-case metrics {out_dir / 'metrics.csv'}, summary {out_dir / 'summary.json'}"
    )
    return summary


def _fmt(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "nan"
    return f"{value:.4f}"
