"""``medpipe evaluate`` for segmentation bundles: the shipped prediction path, scored in each case's own grid.

Each case of the split is read as ``medpipe infer`` reads an input (:func:`medpipe.data.images.read_image`)
and segmented by :meth:`medpipe.bundle.model.BundleModel.segment` -- the very path ``medpipe infer``
ships -- so the mask is on the image's grid and is compared with the label as stored: the figures
do not depend on the bundle's resampling. Metrics are MONAI's: Dice, 95th-percentile Hausdorff
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

import nibabel as nib
import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice
from monai.networks.utils import one_hot
from tqdm import tqdm

from medpipe.atomic import atomic_write_text
from medpipe.bundle.model import BundleModel
from medpipe.data.checks import check_labelled_cases
from medpipe.data.images import read_image
from medpipe.data.manifest import load_manifest
from medpipe.errors import Code
from medpipe.evaluate.metrics import summarise
from medpipe.privacy import case_id, shown_path
from medpipe.tables import write_csv

METRICS = ("dice", "hd95", "nsd")


def class_names(content: dict[str, Any], num_classes: int) -> list[str]:
    """Foreground class names from the manifest's ``labels`` (``class<k>`` where it is silent)."""
    labels = content.get("labels") or {}
    return [str(labels.get(str(c), f"class{c}")).lower() for c in range(1, num_classes)]


def score_case(
    pred: np.ndarray, label: np.ndarray, spacing: list[float], num_classes: int, nsd_tolerance_mm: float
) -> dict[str, list[float]]:
    """Dice, HD95 (mm) and NSD per foreground class of one case; NaN where a metric is undefined."""
    p = one_hot(torch.as_tensor(pred)[None, None].long(), num_classes)
    y = one_hot(torch.as_tensor(label)[None, None].long(), num_classes)
    values = (
        compute_dice(p, y, include_background=False)[0],
        compute_hausdorff_distance(p, y, include_background=False, percentile=95, spacing=spacing)[0],
        compute_surface_dice(
            p,
            y,
            class_thresholds=[nsd_tolerance_mm] * (num_classes - 1),
            include_background=False,
            spacing=spacing,
        )[0],
    )
    return {
        m: [float(v) if math.isfinite(float(v)) else float("nan") for v in vals]
        for m, vals in zip(METRICS, values, strict=True)
    }


def evaluate_segmentation(
    model: BundleModel,
    *,
    split: str = "test",
    output: str | Path | None = None,
    nsd_tolerance_mm: float = 1.0,
    show_paths: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score segmentation ``model`` on ``split``; see the module docstring. Returns summary.json."""
    man = load_manifest(model.get("manifest"))
    entries = man.split(split, required_keys=("image", "label"))
    num_classes = int(model.get("num_classes"))
    names = class_names(man.content, num_classes)
    check_labelled_cases(entries, num_classes, split=split)
    out_dir = Path(output) if output else model.layout.root / "eval" / split
    echo(f"evaluating {model.layout.root.name} on split '{split}' ({len(entries)} cases) on {model.device}")
    echo(f"weights {model.describe_weights()}")
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for entry in tqdm(entries, desc=f"evaluate {split}", unit="case", leave=False):
        case = case_id(entry)
        label_image = nib.load(entry["label"])
        label = np.asanyarray(label_image.dataobj).astype(np.int64)
        pred = model.segment(read_image(entry["image"]), name=case)
        if pred.shape != label.shape[:3]:
            raise Code.BUNDLE_GRID_MISMATCH(
                f"{case}: the prediction is {pred.shape}, the label {label.shape}"
            )
        spacing = [float(s) for s in np.linalg.norm(np.asarray(label_image.affine)[:3, :3], axis=0)]
        scores = score_case(pred, label.reshape(pred.shape), spacing, num_classes, nsd_tolerance_mm)
        row: dict[str, Any] = {"case": case, "image": shown_path(entry["image"], show_paths)}
        for metric, vals in scores.items():
            row.update({f"{metric}_{n}": v for n, v in zip(names, vals, strict=True)})
            row[f"{metric}_mean"] = (
                float(np.nanmean(vals)) if any(math.isfinite(v) for v in vals) else float("nan")
            )
        rows.append(row)
    seconds = time.perf_counter() - start
    columns = [f"{m}_{n}" for m in METRICS for n in [*names, "mean"]]
    summary = {
        "bundle": model.layout.root.name,
        "bundle_version": model.version,
        "weights_sha256": model.weights.sha256,
        "split": split,
        "manifest": str(man.path) if show_paths else man.path.name,
        "cases": len(rows),
        "classes": names,
        "nsd_tolerance_mm": nsd_tolerance_mm,
        "seconds": round(seconds, 1),
        "metrics": summarise(rows, columns),
    }
    write_csv(out_dir / "metrics.csv", rows, ["case", *columns] + (["image"] if show_paths else []))
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
    _print_table(summary, names, nsd_tolerance_mm, echo)
    echo(f"{len(rows)} cases in {seconds:.0f} s; metrics.csv and summary.json in {out_dir}")
    return summary


def _print_table(summary: dict[str, Any], names: list[str], nsd_tolerance_mm: float, echo: Callable) -> None:
    def fmt(value: Any) -> str:
        return "nan" if value is None else f"{value:.4f}"

    echo(
        f"{'class':<12} {'Dice mean':>10} {'median':>8} {'std':>7} {'HD95 mm':>8} {'NSD@' + str(nsd_tolerance_mm):>8}"
    )
    m = summary["metrics"]
    for name in [*names, "mean"]:
        d, h, s = m[f"dice_{name}"], m[f"hd95_{name}"], m[f"nsd_{name}"]
        echo(
            f"{name:<12} {fmt(d['mean']):>10} {fmt(d['median']):>8} {fmt(d['std']):>7} "
            f"{fmt(h['mean']):>8} {fmt(s['mean']):>8}"
        )
