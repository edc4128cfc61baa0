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
from medpipe.data.nifti import open_nifti, read_voxels
from medpipe.errors import Code
from medpipe.evaluate.detection import (
    Candidate,
    Target,
    choose_operating_point,
    froc,
    match_case,
    summary_at,
    write_report,
)
from medpipe.evaluate.metrics import summarise
from medpipe.evaluate.readers import READER_FIELDS, reader_rows
from medpipe.infer.classifier import CropClassifier
from medpipe.infer.lesions import mask_of, measure_lesions
from medpipe.operating_point import at_operating_point, read_operating_point, write_operating_point
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
    min_readers: int = 2,
    choose_fp_per_scan: float | None = None,
    classifier: str | Path | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score segmentation ``model`` on ``split``; see the module docstring. Returns summary.json.

    A lesion bundle (:attr:`~medpipe.bundle.model.BundleModel.finds_lesions`) is also scored as a
    detector (:mod:`medpipe.evaluate.detection`; targets: nodules of ``min_readers`` readers or more);
    ``choose_fp_per_scan`` then chooses its operating point on this split and stores it beside the weights
    (a training run's, never the shipped ones: ``medpipe promote`` ships it).
    """
    detect = model.finds_lesions
    lesion_options = [o for o, v in (("--choose-operating-point", choose_fp_per_scan), ("--classifier", classifier))
                      if v is not None]  # fmt: skip
    if lesion_options and not detect:
        raise Code.BUNDLE_NOT_LESION(
            f"{' and '.join(lesion_options)}: bundle {model.layout.root.name} does not segment lesions "
            "(it has no operating point and no lesions to classify)"
        )
    if choose_fp_per_scan is not None and model.weights.shipped:
        raise Code.BUNDLE_NOT_A_RUN(
            "an operating point is chosen for a lesion bundle's training run (--weights RUN_DIR) and shipped "
            "with medpipe promote; these are the bundle's shipped weights"
        )
    clf = CropClassifier.open(classifier, model.device) if classifier is not None else None
    threshold = read_operating_point(model.weights.path) if detect else 0.0
    beside_readers: list[dict[str, Any]] = []
    candidates: list[Candidate] = []
    targets: list[Target] = []
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
        label_image = open_nifti(entry["label"])  # through the size guard, as every NIfTI from elsewhere
        label = read_voxels(label_image, case).astype(np.int64)
        image = read_image(entry["image"])
        pred, scores = model.segment_with_scores(image, name=case, scores=detect)
        if detect:
            record = json.loads(Path(entry["nodules"]).read_text()) if entry.get("nodules") else None
            truth = read_voxels(open_nifti(entry["instances"]), case) if entry.get("instances") else label
            found, kept = match_case(case, pred, scores, truth.reshape(pred.shape), image.affine_lps, record,
                                     min_readers=min_readers)  # fmt: skip
            candidates += found
            targets += kept
            lesions = measure_lesions(pred, image.affine_lps, names=model.class_names, scores=scores)
            reported = at_operating_point(lesions, threshold)[0]
            beside_readers += reader_rows(case, kept, reported, truth.reshape(pred.shape), image, record, threshold,
                                          clf)  # fmt: skip
            if threshold > 0:  # scored as infer ships it: the lesions at the operating point only
                pred = mask_of(reported, pred.shape)
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
        "backend": {k: model.backend[k] for k in ("backend", "precision")},
        "split": split,
        "manifest": str(man.path) if show_paths else man.path.name,
        "cases": len(rows),
        "classes": names,
        "nsd_tolerance_mm": nsd_tolerance_mm,
        "seconds": round(seconds, 1),
        "metrics": summarise(rows, columns),
    }
    if detect:
        summary["detection"] = detection_summary(candidates, targets, len(rows), threshold, min_readers)
        if choose_fp_per_scan is not None:
            chosen = choose_operating_point(summary["detection"]["froc"]["curve"], choose_fp_per_scan)
            path = write_operating_point(model.weights.path, chosen, criterion=f"fp_per_scan<={choose_fp_per_scan:g}",
                                         split=split, luna16_score=summary["detection"]["luna16_score"])  # fmt: skip
            summary["detection"]["chosen"] = summary_at(candidates, targets, len(rows), chosen)
            echo(
                f"operating point: score >= {chosen:.3f} ({choose_fp_per_scan:g} false positives per scan on {split}) -> {path}"
            )
        write_report(
            out_dir, candidates, targets, summary["detection"], f"{model.layout.root.name} on {split}"
        )
        write_csv(out_dir / "lesions_vs_readers.csv", beside_readers, READER_FIELDS)
    write_csv(out_dir / "metrics.csv", rows, ["case", *columns] + (["image"] if show_paths else []))
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
    _print_table(summary, names, nsd_tolerance_mm, echo)
    if detect:
        _print_detection(summary["detection"], echo)
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


def detection_summary(
    candidates: list[Candidate], targets: list[Target], n_cases: int, threshold: float, min_readers: int
) -> dict[str, Any]:
    curve = froc(candidates, targets, n_cases)
    return {
        "min_readers": min_readers,
        "operating_point": summary_at(candidates, targets, n_cases, threshold),
        "luna16_score": curve["luna16_score"],
        "sensitivity_at_fp_per_scan": {f"{k:g}": v for k, v in curve["sensitivity_at"].items()},
        "froc": curve,
    }


def _print_detection(result: dict[str, Any], echo: Callable) -> None:
    op = result["operating_point"]
    echo(
        f"detection (targets: nodules of >= {result['min_readers']} readers): {op['found']}/{op['targets']} found, "
        f"{op['fp_per_scan']:.2f} false positives per scan at score >= {op['threshold']:.3f}; Dice of the found "
        f"{op['dice_found_mean']:.3f}; LUNA16 score {result['luna16_score']:.3f}"
    )
