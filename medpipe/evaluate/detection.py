"""Lesion detection: per-nodule sensitivity, false positives per scan, FROC and the LUNA16 score.

A lesion bundle's prediction is a set of **candidates**, the connected components of its mask, each
with a score (its highest foreground probability). Per case they are matched to the **targets**, the
nodules of the case's record (``nodules`` of a ``medpipe manifest lidc`` entry: readers' consensus in
the instance map, ``n_readers``) or, without a record, the connected components of the label:

* a candidate that overlaps a target finds it (a true positive);
* LUNA16's ignore rule: a candidate overlapping a nodule marked by fewer than ``min_readers`` readers,
  or within ``ignore_radius_mm`` of a reader's mark of a nodule under 3 mm or of a non-nodule, counts as
  neither a true nor a false positive;
* any other candidate is a false positive.

At a score threshold ``t``, sensitivity is the share of targets found by a candidate scoring ``t`` or
more, and false positives per scan the number of false-positive candidates scoring ``t`` or more over
the number of cases. Sweeping ``t`` over every score gives the **FROC** curve; the **LUNA16 score** is the
mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false positives per scan (the highest sensitivity
whose false-positive rate stays at or below each). For each target found at the operating point the
Dice between its consensus and the candidates that found it is reported too.

The **operating point** of a bundle's weights, ``operating_point.json`` beside them (the score threshold
below which candidates are not reported as lesions), is chosen on a validation split
(:func:`choose_operating_point`); :mod:`medpipe.operating_point` reads it and applies it, in ``medpipe
infer`` and in the bundle's own post-processing alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from medpipe.atomic import atomic_path
from medpipe.tables import write_csv

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
STRUCTURE = np.ones((3, 3, 3), dtype=bool)


@dataclass
class Candidate:
    case: str
    score: float
    voxels: int
    #: "tp", "fp" or "ignored"
    status: str
    #: target numbers it overlaps
    hits: list[int] = field(default_factory=list)


@dataclass
class Target:
    case: str
    nodule: int
    n_readers: int | None
    voxels: int
    #: the best score among the candidates that overlap it (-1: none does)
    best_score: float = -1.0
    #: per candidate that overlaps it: (score, overlap voxels, candidate voxels)
    overlaps: list[tuple[float, int, int]] = field(default_factory=list)

    def dice_at(self, threshold: float) -> float | None:
        """Dice of the target and the candidates scoring ``threshold`` or more that overlap it."""
        kept = [(o, v) for s, o, v in self.overlaps if s >= threshold]
        if not kept:
            return None
        return 2.0 * sum(o for o, _ in kept) / (self.voxels + sum(v for _, v in kept))


def _near(
    points_ijk: Sequence[Sequence[float]], comp_idx: np.ndarray, affine: np.ndarray, radius_mm: float
) -> bool:
    """Whether any voxel of a component lies within ``radius_mm`` of any of the point marks."""
    if not len(points_ijk):
        return False
    vox = comp_idx.astype(np.float64) @ affine[:3, :3].T
    for point in np.asarray(points_ijk, dtype=np.float64) @ affine[:3, :3].T:
        if np.min(np.linalg.norm(vox - point, axis=1)) <= radius_mm:
            return True
    return False


def target_map(truth: np.ndarray, record: Mapping[str, Any] | None) -> np.ndarray:
    """The map of target numbers: the record's instance map as it is, or the label's connected components."""
    if record is None:
        return ndimage.label(np.asarray(truth) > 0, structure=STRUCTURE)[0]
    return np.asarray(truth)


def match_case(
    case: str,
    mask: np.ndarray,
    scores: np.ndarray | None,
    truth: np.ndarray,
    affine: np.ndarray,
    record: Mapping[str, Any] | None = None,
    *,
    min_readers: int = 2,
    ignore_radius_mm: float = 5.0,
) -> tuple[list[Candidate], list[Target]]:
    """Candidates of one case's prediction matched to its targets (see the module docstring).

    ``truth`` is the record's instance map (nodule ``n`` where its consensus is) or, without a record,
    the label, whose connected components become the targets.
    """
    truth = target_map(truth, record)
    if record is None:
        readers = {i: None for i in range(1, int(truth.max()) + 1)}
        points: list[list[float]] = []
    else:
        readers = {int(r["nodule"]): int(r["n_readers"]) for r in record.get("nodules", [])}
        points = [p["ijk"] for key in ("small_nodules", "non_nodules") for p in record.get(key, [])]
    counts = np.bincount(np.asarray(truth, dtype=np.int64).ravel(), minlength=max(readers, default=0) + 1)
    targets = {
        n: Target(case, n, r, int(counts[n])) for n, r in readers.items() if r is None or r >= min_readers
    }
    ignored = {n for n in readers if n not in targets}
    components, _ = ndimage.label(np.asarray(mask) > 0, structure=STRUCTURE)
    candidates = []
    for idx, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        comp = components[box] == idx
        score = float(np.asarray(scores)[box][comp].max()) / 255.0 if scores is not None else 1.0
        inside = np.asarray(truth)[box][comp]
        hit_ids, overlap = np.unique(inside[inside > 0], return_counts=True)
        hits = [int(n) for n in hit_ids if int(n) in targets]
        for n, o in zip(hit_ids, overlap, strict=True):
            if int(n) in targets:
                t = targets[int(n)]
                t.overlaps.append((score, int(o), int(comp.sum())))
                t.best_score = max(t.best_score, score)
        if hits:
            status = "tp"
        elif any(int(n) in ignored for n in hit_ids) or _near(
            points, np.argwhere(comp) + [s.start for s in box], affine, ignore_radius_mm
        ):
            status = "ignored"
        else:
            status = "fp"
        candidates.append(Candidate(case, score, int(comp.sum()), status, hits))
    return candidates, list(targets.values())


def froc(candidates: Sequence[Candidate], targets: Sequence[Target], n_cases: int) -> dict[str, Any]:
    """The FROC curve (threshold, sensitivity, false positives per scan) and the LUNA16 score."""
    fp_scores = np.sort([c.score for c in candidates if c.status == "fp"])[::-1]
    best = np.array([t.best_score for t in targets])
    thresholds = np.unique(np.concatenate([fp_scores, best[best >= 0], [np.inf]]))[::-1]
    curve = []
    for t in thresholds:
        sens = float((best >= t).mean()) if len(best) else float("nan")
        curve.append((float(t), sens, float((fp_scores >= t).sum()) / max(1, n_cases)))
    at = {}
    for rate in FP_RATES:
        reachable = [s for _, s, f in curve if f <= rate]
        at[rate] = max(reachable) if reachable else 0.0
    return {"curve": curve, "sensitivity_at": at, "luna16_score": float(np.mean(list(at.values())))}


def summary_at(
    candidates: Sequence[Candidate], targets: Sequence[Target], n_cases: int, threshold: float
) -> dict[str, Any]:
    """Sensitivity, false positives per scan and Dice of the found targets at score ``threshold``."""
    found = [t for t in targets if t.best_score >= threshold]
    dice = [d for t in found if (d := t.dice_at(threshold)) is not None]
    fps = sum(1 for c in candidates if c.status == "fp" and c.score >= threshold)
    return {
        "threshold": threshold,
        "targets": len(targets),
        "found": len(found),
        "sensitivity": len(found) / len(targets) if targets else float("nan"),
        "false_positives": fps,
        "fp_per_scan": fps / max(1, n_cases),
        "dice_found_mean": float(np.mean(dice)) if dice else float("nan"),
        "dice_found_min": float(np.min(dice)) if dice else float("nan"),
    }


def choose_operating_point(curve: Sequence[tuple[float, float, float]], max_fp_per_scan: float) -> float:
    """The threshold of highest sensitivity at or below ``max_fp_per_scan`` false positives per scan; of
    equally sensitive thresholds, the highest (no false positive is bought for nothing)."""
    allowed = [(s, t) for t, s, f in curve if f <= max_fp_per_scan and np.isfinite(t)]
    if not allowed:  # even the top score is a false positive too many: report nothing, just above it
        return float(np.nextafter(max((t for t, _, _ in curve if np.isfinite(t)), default=1.0), np.inf))
    best = max(s for s, _ in allowed)
    return float(max(t for s, t in allowed if s == best))


CANDIDATE_FIELDS = ("case", "score", "voxels", "status", "hits")
TARGET_FIELDS = ("case", "nodule", "n_readers", "voxels", "best_score", "found", "dice")
FROC_FIELDS = ("threshold", "sensitivity", "fp_per_scan")


def write_report(
    out_dir: Path,
    candidates: Sequence[Candidate],
    targets: Sequence[Target],
    result: Mapping[str, Any],
    title: str,
) -> None:
    """candidates.csv, detection.csv (one row per target), froc.csv and froc.png in ``out_dir``."""
    threshold = result["operating_point"]["threshold"]
    write_csv(out_dir / "candidates.csv", [{**c.__dict__, "hits": " ".join(map(str, c.hits))} for c in candidates],
              CANDIDATE_FIELDS)  # fmt: skip
    rows = [{**t.__dict__, "found": t.best_score >= threshold, "dice": t.dice_at(threshold)} for t in targets]
    write_csv(out_dir / "detection.csv", rows, TARGET_FIELDS)
    curve = result["froc"]["curve"]
    write_csv(out_dir / "froc.csv", [dict(zip(FROC_FIELDS, c, strict=True)) for c in curve], FROC_FIELDS)
    plot_froc(curve, result["froc"]["sensitivity_at"], out_dir / "froc.png", f"{title}: LUNA16 score {result['luna16_score']:.3f}")


def plot_froc(
    curve: Sequence[tuple[float, float, float]], at: Mapping[float, float], path: Path, title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=100)
    fps = [max(f, 1 / 16) for _, _, f in curve]
    ax.step(fps, [s for _, s, _ in curve], where="post", color="tab:blue", label="FROC")
    ax.plot(list(at), list(at.values()), "o", color="tab:orange", label="LUNA16 points")
    ax.set_xscale("log", base=2)
    ax.set_xlim(1 / 16, max(32.0, 2 * max(fps, default=1.0)))
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
