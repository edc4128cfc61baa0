"""Per-lesion measurements of a label mask: connected components of each foreground class.

For every component (26-connectivity, i.e. voxels touching by a face, edge or corner): its volume
(voxel count x voxel volume, mm³), its longest 3-D diameter (the largest distance between two surface
voxel centres, in mm), its centroid in patient coordinates and the mean image intensity inside it
(HU for CT). Patient coordinates are reported in DICOM's LPS convention (``centroid_lps_*``), so they
read directly against ImagePositionPatient; RAS = LPS with x and y negated.

The diameter is exact for voxel centres and cheap: only surface voxels can be the ends of the
longest chord, and of those only the vertices of their convex hull (scipy's Qhull), so a 10,000-voxel
nodule costs a few hundred pairwise distances instead of 10⁸.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
from scipy import ndimage

from medpipe.operating_point import labels_present

#: 26-connectivity: diagonal neighbours belong to the same lesion (as radiologists outline them).
STRUCTURE = np.ones((3, 3, 3), dtype=bool)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Lesion:
    """One connected component of one class, measured in millimetres."""

    label: int
    label_name: str
    lesion: int  # 1-based, largest first within the series
    voxels: int
    volume_mm3: float
    diameter_mm: float
    centroid_lps_x: float
    centroid_lps_y: float
    centroid_lps_z: float
    mean_intensity: float
    bbox_min: tuple[int, int, int]  # voxel index [i, j, k] of the component's bounding box (inclusive)
    bbox_max: tuple[int, int, int]
    #: the highest foreground probability in the component (NaN without a score map)
    score: float = float("nan")
    #: (bounding box slices, component mask on the box): where the lesion is, to keep or drop it
    region: tuple[tuple[slice, ...], np.ndarray] | None = field(default=None, repr=False, compare=False)

    def row(self) -> dict[str, object]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("bbox_min", "bbox_max", "region")}
        out["score"] = round(self.score, 4) if np.isfinite(self.score) else float("nan")
        return out

    @property
    def centroid_lps(self) -> np.ndarray:
        return np.array([self.centroid_lps_x, self.centroid_lps_y, self.centroid_lps_z])


def longest_diameter(points_mm: np.ndarray) -> float:
    """Largest distance between any two of ``points_mm`` (n, 3); 0 for fewer than 2 points."""
    pts = np.unique(np.asarray(points_mm, dtype=np.float64), axis=0)
    if len(pts) < 2:
        return 0.0
    if len(pts) > 64:
        from scipy.spatial import ConvexHull, QhullError

        try:
            pts = pts[ConvexHull(pts).vertices]
        except QhullError:  # coplanar or collinear points: no 3-D hull, every point is a candidate
            pass
    best = 0.0
    for start in range(0, len(pts), 512):  # blocks keep the distance matrix small
        block = pts[start : start + 512]
        d2 = ((block[:, None, :] - pts[None, :, :]) ** 2).sum(-1)
        best = max(best, float(d2.max()))
    return float(np.sqrt(best))


def measure_lesions(
    mask: np.ndarray,
    affine_lps: np.ndarray,
    image: np.ndarray | None = None,
    names: dict[int, str] | None = None,
    scores: np.ndarray | None = None,
) -> list[Lesion]:
    """Components of every nonzero label of ``mask`` ([i, j, k]) with ``affine_lps`` (voxel -> LPS mm).

    ``image`` (same grid) gives the mean intensity; ``names`` maps label values to names; ``scores``
    (uint8, 1/255 steps: :meth:`medpipe.bundle.model.BundleModel.segment_with_scores`) each lesion's
    score, its highest foreground probability. Lesions are listed by label, then largest first.
    """
    mask = np.asarray(mask)
    affine = np.asarray(affine_lps, dtype=np.float64)
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    names = names or {}
    out: list[Lesion] = []
    for value in labels_present(mask):
        components, n = ndimage.label(mask == value, structure=STRUCTURE)
        found = []
        for idx, box in enumerate(ndimage.find_objects(components), start=1):
            if box is None:
                continue
            comp = components[box] == idx  # a crop: cheap even on a 512x512x400 volume
            offset = np.array([s.start for s in box])
            vox = np.argwhere(comp)
            surface = comp & ~ndimage.binary_erosion(comp, structure=STRUCTURE, border_value=0)
            surf_idx = np.argwhere(surface) + offset
            surf_mm = surf_idx @ affine[:3, :3].T + affine[:3, 3]
            centroid_idx = vox.mean(axis=0) + offset
            centroid = affine[:3, :3] @ centroid_idx + affine[:3, 3]
            mean = float(np.asarray(image)[box][comp].mean()) if image is not None else float("nan")
            score = float(np.asarray(scores)[box][comp].max()) / 255.0 if scores is not None else float("nan")
            found.append((len(vox), surf_mm, centroid, mean, box, score, comp))
        found.sort(key=lambda f: -f[0])
        for rank, (count, surf_mm, centroid, mean, box, score, comp) in enumerate(found, start=1):
            out.append(
                Lesion(
                    label=value,
                    label_name=names.get(value, f"class{value}"),
                    lesion=rank,
                    voxels=int(count),
                    volume_mm3=count * voxel_mm3,
                    diameter_mm=longest_diameter(surf_mm),
                    centroid_lps_x=float(centroid[0]),
                    centroid_lps_y=float(centroid[1]),
                    centroid_lps_z=float(centroid[2]),
                    mean_intensity=mean,
                    bbox_min=tuple(int(s.start) for s in box),  # type: ignore[arg-type]
                    bbox_max=tuple(int(s.stop) - 1 for s in box),  # type: ignore[arg-type]
                    score=score,
                    region=(box, comp),
                )
            )
    return out


def mask_of(lesions: list[Lesion], shape: tuple[int, ...]) -> np.ndarray:
    """The label mask holding exactly ``lesions`` (uint8): what is written when only some are reported."""
    mask = np.zeros(shape, dtype=np.uint8)
    for lesion in lesions:
        box, comp = lesion.region  # type: ignore[misc]
        mask[box][comp] = lesion.label
    return mask
