"""``medpipe evaluate --robustness``: does a classifier hold up when its input is not quite what it saw?

The test split is scored again after each preprocessed image is perturbed with MONAI transforms at
graded strengths -- Gaussian noise (std, in units of the network's input range), an intensity shift
(offset), an intensity scale (factor 1 +/- s) and a rotation (degrees, about a random axis) -- once
with the plain network and once with test-time augmentation (the cube symmetries of
:mod:`medpipe.tta`). Every random choice is seeded per case, so a rerun gives the same table. The
decision threshold is the bundle's stored one (chosen on validation with its own inferer).

Writes ``robustness.csv`` (perturbation, strength, tta, auc, accuracy, f1, precision, recall) and
``robustness.png`` (AUC and accuracy against strength, one panel per perturbation).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.transforms import RandGaussianNoise, Rotate, ScaleIntensity, ShiftIntensity

from medpipe.atomic import atomic_path, atomic_write_text
from medpipe.bundle.model import BundleModel
from medpipe.errors import Code, look_up
from medpipe.evaluate.classification import labelled_entries
from medpipe.evaluate.metrics import classification_figures
from medpipe.evaluate.threshold import threshold_beside
from medpipe.tables import write_csv
from medpipe.tta import CubeSymmetryInferer

#: Default strengths per perturbation; 0 (the clean input) is always scored once.
STRENGTHS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.1, 0.2, 0.3),
    "intensity_shift": (0.1, 0.3, 0.5),
    "intensity_scale": (0.1, 0.3, 0.5),
    "rotation_deg": (5.0, 10.0, 20.0),
}
COLUMNS = ("perturbation", "strength", "tta", "auc", "accuracy", "f1", "precision", "recall")


def perturbation(kind: str, strength: float, seed: int = 0) -> Callable[[Any, int], Any]:
    """``f(image, case_index)`` applying ``kind`` at ``strength`` with a per-case seeded MONAI transform."""

    def rng(i: int) -> np.random.RandomState:
        return np.random.RandomState(seed * 100_003 + i)

    if kind == "gaussian_noise":

        def f(image: Any, i: int) -> Any:
            t = RandGaussianNoise(prob=1.0, mean=0.0, std=strength, sample_std=False)
            t.set_random_state(state=rng(i))
            return t(image)

    elif kind == "intensity_shift":

        def f(image: Any, i: int) -> Any:
            return ShiftIntensity(offset=strength * (1 if rng(i).rand() < 0.5 else -1))(image)

    elif kind == "intensity_scale":

        def f(image: Any, i: int) -> Any:
            return ScaleIntensity(minv=None, maxv=None, factor=strength * (1 if rng(i).rand() < 0.5 else -1))(
                image
            )

    elif kind == "rotation_deg":

        def f(image: Any, i: int) -> Any:
            r = rng(i)
            angle = [0.0, 0.0, 0.0]
            angle[r.randint(3)] = math.radians(strength) * (1 if r.rand() < 0.5 else -1)
            return Rotate(angle=angle, keep_size=True, mode="bilinear", padding_mode="zeros")(image)

    else:
        look_up(kind, STRENGTHS, what="perturbation")
    return f


def robustness(
    bundle: str | Path,
    *,
    manifest: str | Path | None = None,
    split: str = "test",
    output: str | Path | None = None,
    device: str | None = None,
    weights: str | Path | None = None,
    strengths: Mapping[str, Sequence[float]] | None = None,
    tta: int = 8,
    max_cases: int | None = None,
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Score ``bundle`` on ``split`` under each perturbation and strength, without and with TTA."""
    model = BundleModel.open(bundle, weights=weights, manifest=manifest, device=device)
    if model.kind != "classification":
        raise Code.ROBUSTNESS_UNSUPPORTED(
            f"--robustness is implemented for classifier bundles; {model.layout.root.name} is a segmentation bundle"
        )
    entries, label = labelled_entries(model, split)
    if max_cases is not None:
        entries, label = entries[:max_cases], label[:max_cases]
    record = threshold_beside(model.weights.path)
    threshold = None if record is None else record.threshold
    strengths = dict(STRENGTHS if strengths is None else strengths)
    inferers = {"none": CubeSymmetryInferer(1), f"cube{tta}": CubeSymmetryInferer(tta)}
    name = model.layout.root.name
    out_dir = Path(output) if output else model.layout.root / "eval" / f"{split}_robustness"
    conditions = [("none", 0.0)] + [(k, float(s)) for k, values in strengths.items() for s in values]
    echo(
        f"robustness of {name} on split '{split}' ({len(entries)} cases): "
        f"{len(conditions)} conditions x {len(inferers)} inferers; weights {model.describe_weights()}"
    )
    echo(f"{'perturbation':<16} {'strength':>8} {'tta':>7} {'AUC':>7} {'acc':>7} {'F1':>7}")
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for kind, strength in conditions:
        perturb = None if kind == "none" else perturbation(kind, strength)
        for tta_name, inferer in inferers.items():
            prob = model.probabilities(entries, inferer=inferer, perturb=perturb)
            result = classification_figures(prob, label, threshold)
            row = {"perturbation": kind, "strength": strength, "tta": tta_name}
            row.update({k: result[k] for k in COLUMNS[3:]})
            rows.append(row)
            echo(
                f"{kind:<16} {strength:>8g} {tta_name:>7} {row['auc']:7.4f} {row['accuracy']:7.4f} {row['f1']:7.4f}"
            )
    write_csv(out_dir / "robustness.csv", rows, COLUMNS)
    meta = {
        "bundle": name,
        "bundle_version": model.version,
        "weights_sha256": model.weights.sha256,
        "split": split,
        "cases": len(entries),
        "threshold": threshold,
        "seconds": round(time.perf_counter() - start, 1),
        "rows": rows,
    }
    atomic_write_text(out_dir / "robustness.json", json.dumps(meta, indent=1) + "\n")
    _plot(rows, strengths, out_dir / "robustness.png", name)
    echo(f"{len(rows)} rows in {meta['seconds']:.0f} s; robustness.csv, .json and .png in {out_dir}")
    return rows


def _plot(
    rows: list[dict[str, Any]], strengths: Mapping[str, Sequence[float]], path: Path, title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    kinds = list(strengths)
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.6 * len(kinds), 3.4), dpi=100, squeeze=False)
    clean = [r for r in rows if r["perturbation"] == "none"]
    for ax, kind in zip(axes[0], kinds, strict=True):
        for tta in dict.fromkeys(r["tta"] for r in rows):
            pts = [r for r in clean if r["tta"] == tta] + [
                r for r in rows if r["perturbation"] == kind and r["tta"] == tta
            ]
            pts.sort(key=lambda r: r["strength"])
            style = "-" if tta != "none" else "--"
            xs = [r["strength"] for r in pts]
            ax.plot(xs, [r["auc"] for r in pts], "o" + style, color="tab:blue", label=f"AUC (tta {tta})")
            ax.plot(
                xs,
                [r["accuracy"] for r in pts],
                "s" + style,
                color="tab:orange",
                label=f"accuracy (tta {tta})",
            )
        ax.set_title(kind.replace("_", " "))
        ax.set_xlabel("strength")
        ax.set_ylim(0.4, 1.0)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("metric")
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{title}: metric against perturbation strength")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
