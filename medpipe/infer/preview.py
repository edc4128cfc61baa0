"""A PNG preview of one series: axial slices through its largest lesions with the mask outlined.

Up to ``max_slices`` panels: the slice through the centroid of each of the largest lesions (distinct
slices only), or the middle slice when nothing was found. Slices are shown in radiological convention
(patient left on the right of the image, anterior at the top) for the usual axial DICOM orientation;
CT is windowed to ``window`` HU, other modalities to their 1st-99th percentile.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medpipe.atomic import atomic_path
from medpipe.infer.lesions import Lesion

COLOURS = ("#ff3030", "#30c0ff", "#ffd030", "#60ff60", "#ff60ff")


def preview_slices(mask: np.ndarray, lesions: Sequence[Lesion], max_slices: int = 3) -> list[int]:
    """k indices to show: through the largest lesions' centres, else the middle slice."""
    ks: list[int] = []
    for lesion in sorted(lesions, key=lambda les: -les.voxels):
        k = (lesion.bbox_min[2] + lesion.bbox_max[2]) // 2
        if k not in ks:
            ks.append(k)
        if len(ks) == max_slices:
            break
    return ks or [mask.shape[2] // 2]


def write_preview(
    path: str | Path,
    image: np.ndarray,
    mask: np.ndarray,
    lesions: Sequence[Lesion],
    *,
    title: str,
    modality: str | None = None,
    window: tuple[float, float] = (-1000.0, 400.0),
    max_slices: int = 3,
) -> Path:
    """Write the PNG (atomically) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = preview_slices(mask, lesions, max_slices)
    if modality == "CT":
        lo, hi = window
    else:
        sample = np.asarray(image)[:, :, ks].astype(np.float32)
        lo, hi = (float(v) for v in np.percentile(sample, [1, 99]))
        hi = hi if hi > lo else lo + 1
    fig, axes = plt.subplots(1, len(ks), figsize=(4 * len(ks), 4.3), squeeze=False)
    labels = [int(v) for v in np.unique(mask) if v != 0]
    for ax, k in zip(axes[0], ks, strict=True):
        ax.imshow(np.asarray(image)[:, :, k].T, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        sl = np.asarray(mask)[:, :, k].T
        for n, value in enumerate(labels):
            if (sl == value).any():
                ax.contour(sl == value, levels=[0.5], colors=COLOURS[n % len(COLOURS)], linewidths=1.0)
        ax.set_title(f"slice {k + 1}/{mask.shape[2]}", fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return Path(path)
