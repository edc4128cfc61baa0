"""LIDC readers' marks on the grid of their series: rasterised, grouped into nodules, and agreed on.

* :class:`SeriesGrid` -- the series' voxel grid from its headers (``medpipe.dicom``): the volume's LPS
  affine, its shape, and which slice index ``k`` each SOP Instance UID is (contours are matched to
  slices by UID; by ``imageZposition`` within half a slice when the UID is not in the series).
* :func:`rasterise` -- one reader's outline of a nodule as a voxel mask: the polygon of each contour
  filled (voxel centres inside it, matplotlib's ``Path.contains_points``) plus the contour pixels
  themselves; ``inclusion=FALSE`` contours (holes) are subtracted.
* :func:`group_marks` -- which readers' marks are one physical nodule, the way pylidc does it: two
  marks belong together when their contour points come within ``tol`` mm (default: the slice
  thickness), the groups are the connected components, and ``tol`` shrinks by ``factor`` (0.9)
  while a group holds more marks than there are readers. Groups are ordered by ascending z.
* :class:`Nodule` -- a group: its readers, the consensus mask at an agreement level (a voxel is in
  it when at least that fraction of the group's readers marked it; default 50 %), the readers'
  median of each rating (malignancy included).

A contour whose slice is not in the series is dropped with a warning (the nodule keeps its other
contours); a mark left without any contour on the series is dropped with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.path import Path as PolygonPath
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import cdist

from medpipe.data.lidc.xml import RATINGS, Mark
from medpipe.dicom.scan import Stack


@dataclass
class SeriesGrid:
    """Voxel grid ``[i, j, k]`` (column, row, slice) of a validated DICOM stack, from headers only."""

    affine_lps: np.ndarray
    shape: tuple[int, int, int]
    slice_of_uid: dict[str, int]
    z_of_slice: np.ndarray
    slice_thickness: float

    @classmethod
    def of_stack(cls, stack: Stack) -> SeriesGrid:
        geometry = stack.geometry
        if geometry is None:  # the stack's own coded error says why
            raise stack.error or RuntimeError(f"stack {stack.id} is not validated")
        ordered = [stack.slices[i] for i in geometry.order]
        first = ordered[0]
        thickness = first.slice_thickness or geometry.slice_spacing
        return cls(
            affine_lps=geometry.affine_lps(),
            shape=(int(first.columns), int(first.rows), len(ordered)),
            slice_of_uid={s.sop_instance_uid: k for k, s in enumerate(ordered)},
            z_of_slice=np.asarray(geometry.positions)[:, 2],
            slice_thickness=float(thickness),
        )

    def slice_index(self, sop_uid: str, z: float) -> int | None:
        """``k`` of the slice a contour is on: by SOP Instance UID, else by z within half a slice."""
        if sop_uid in self.slice_of_uid:
            return self.slice_of_uid[sop_uid]
        if np.isfinite(z) and len(self.z_of_slice):
            k = int(np.argmin(np.abs(self.z_of_slice - z)))
            step = abs(float(self.affine_lps[2, 2])) or 1.0
            if abs(self.z_of_slice[k] - z) <= step / 2:
                return k
        return None

    def to_mm(self, ijk: np.ndarray) -> np.ndarray:
        """LPS millimetres of voxel indices (n, 3)."""
        return np.asarray(ijk, dtype=np.float64) @ self.affine_lps[:3, :3].T + self.affine_lps[:3, 3]


@dataclass
class Placed:
    """A reader's mark placed on the grid: its contours as (k, points, inclusion), and what was dropped."""

    mark: Mark
    contours: list[tuple[int, np.ndarray, bool]]
    warnings: list[str] = field(default_factory=list)

    def points_mm(self, grid: SeriesGrid) -> np.ndarray:
        pts = [np.c_[p, np.full(len(p), k)] for k, p, inclusion in self.contours if inclusion]
        return grid.to_mm(np.concatenate(pts)) if pts else np.zeros((0, 3))


def place(mark: Mark, grid: SeriesGrid) -> Placed:
    """``mark``'s contours on the grid; contours on slices the series lacks are dropped with a warning."""
    placed = Placed(mark, [])
    for contour in mark.contours:
        k = grid.slice_index(contour.sop_uid, contour.z)
        if k is None:
            placed.warnings.append(
                f"reader {mark.reader} mark {mark.mark_id!r}: a contour at z {contour.z:g} mm is on no slice of "
                "the series; dropped"
            )
            continue
        placed.contours.append((k, contour.points, contour.inclusion))
    return placed


def rasterise(placed: Placed, shape: tuple[int, int, int]) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """The mark as a boolean mask on its bounding box: ``(slices into the volume, mask)``."""
    pts = np.concatenate([p for _, p, _ in placed.contours])
    ks = [k for k, _, _ in placed.contours]
    lo = np.maximum(np.floor(pts.min(axis=0)).astype(int), 0)
    hi = np.minimum(np.ceil(pts.max(axis=0)).astype(int) + 1, [shape[0], shape[1]])
    box = (slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1])), slice(min(ks), max(ks) + 1))
    mask = np.zeros((hi[0] - lo[0], hi[1] - lo[1], max(ks) - min(ks) + 1), dtype=bool)
    ii, jj = np.meshgrid(np.arange(lo[0], hi[0]), np.arange(lo[1], hi[1]), indexing="ij")
    centres = np.c_[ii.ravel(), jj.ravel()]
    for inclusion in (True, False):  # outlines first, then the holes cut out of them
        for k, points, inc in placed.contours:
            if inc != inclusion:
                continue
            inside = np.zeros(ii.shape, dtype=bool)
            if len(points) >= 3:
                inside = PolygonPath(points).contains_points(centres).reshape(ii.shape)
            edge = np.zeros(ii.shape, dtype=bool)
            cols, rows = np.rint(points[:, 0]).astype(int) - lo[0], np.rint(points[:, 1]).astype(int) - lo[1]
            ok = (cols >= 0) & (cols < ii.shape[0]) & (rows >= 0) & (rows < ii.shape[1])
            edge[cols[ok], rows[ok]] = True
            plane = mask[:, :, k - min(ks)]
            if inclusion:
                plane |= inside | edge
            else:
                plane &= ~(inside & ~edge)
    return box, mask


def mark_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest distance (mm) between the contour points of two marks."""
    return float(cdist(a, b).min()) if len(a) and len(b) else float("inf")


def group_marks(
    placed: list[Placed], grid: SeriesGrid, n_readers: int, tol: float | None = None, factor: float = 0.9
) -> list[list[Placed]]:
    """Readers' marks grouped into physical nodules (see the module docstring), ordered by ascending z."""
    if not placed:
        return []
    pts = [p.points_mm(grid) for p in placed]
    n = len(placed)
    distance = np.zeros((n, n))
    for a in range(n):
        for b in range(a + 1, n):
            distance[a, b] = distance[b, a] = mark_distance(pts[a], pts[b])
    tol = grid.slice_thickness if tol is None else float(tol)
    limit = max(1, n_readers)
    while True:
        _, labels = connected_components(distance <= tol, directed=False)
        sizes = np.bincount(labels)
        if sizes.max() <= limit or tol < 0.1:
            break
        tol *= factor
    groups = [[placed[i] for i in np.flatnonzero(labels == g)] for g in range(labels.max() + 1)]
    return sorted(groups, key=lambda g: float(np.mean([pts[placed.index(p)][:, 2].mean() for p in g])))


@dataclass
class Nodule:
    """One physical nodule: the marks of the readers who outlined it."""

    marks: list[Placed]

    @property
    def readers(self) -> list[str]:
        return sorted({p.mark.reader for p in self.marks})

    def ratings(self) -> dict[str, float]:
        """The readers' median of each rating (``malignancy`` 1-5 among them)."""
        out = {}
        for name in RATINGS:
            values = [p.mark.ratings[name] for p in self.marks if name in p.mark.ratings]
            if values:
                out[name] = float(np.median(values))
        return out

    def consensus(
        self, shape: tuple[int, int, int], level: float = 0.5
    ) -> tuple[tuple[slice, ...], np.ndarray]:
        """Voxels at least ``level`` of the marks include, on the union bounding box of the marks."""
        boxes = [rasterise(p, shape) for p in self.marks]
        lo = [min(b[0][a].start for b in boxes) for a in range(3)]
        hi = [max(b[0][a].stop for b in boxes) for a in range(3)]
        votes = np.zeros([b - a for a, b in zip(lo, hi, strict=True)], dtype=np.int32)
        for box, mask in boxes:
            local = tuple(slice(box[a].start - lo[a], box[a].stop - lo[a]) for a in range(3))
            votes[local] += mask
        union = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        return union, votes >= max(1, int(np.ceil(level * len(boxes) - 1e-9)))

    def record(self, index: int, grid: SeriesGrid, level: float) -> dict[str, Any]:
        """A JSON-ready description: index, readers, consensus size, centroid (LPS mm), median ratings."""
        box, mask = self.consensus(grid.shape, level)
        vox = np.argwhere(mask) + [s.start for s in box]
        centroid = grid.to_mm(vox.mean(axis=0, keepdims=True))[0] if len(vox) else np.full(3, np.nan)
        voxel_mm3 = float(abs(np.linalg.det(grid.affine_lps[:3, :3])))
        ratings = self.ratings()
        return {
            "nodule": index,
            "n_readers": len(self.readers),
            "readers": self.readers,
            "consensus_voxels": int(len(vox)),
            "volume_mm3": round(len(vox) * voxel_mm3, 2),
            "centroid_lps": [round(float(c), 2) for c in centroid],
            "malignancy_median": ratings.get("malignancy"),
            "ratings_median": ratings,
            "reader_voxels": [int(rasterise(p, grid.shape)[1].sum()) for p in self.marks],
        }
