"""Slice geometry: order, spacing and affine of a stack, validated from headers alone.

The rules (PS3.3 C.7.6.2): ImageOrientationPatient gives the row and column direction cosines, their
cross product is the slice normal; slices are ordered by ImagePositionPatient projected on that normal,
and the slice spacing is the distance between those projections -- never SliceThickness, which says how
thick a slice is, not where the next one is. A stack is *regular* when every slice shares one
orientation, one in-plane grid, distinct positions on one line along the normal, and equal steps;
anything else raises a :class:`~medpipe.errors.DicomError` with a stable code, unless an option asks to
resample (gaps, gantry tilt).

Voxel convention (the same as NIfTI and MONAI): the volume is indexed ``[x, y, z]`` = ``[column, row,
slice]`` and ``affine_lps @ (x, y, z, 1)`` is the voxel centre in LPS millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medpipe.errors import Code


@dataclass(frozen=True)
class AssemblyOptions:
    """How strict assembly is, and which irregularities it may repair by resampling."""

    #: Fewer slices are refused (DICOM_TOO_FEW_SLICES): with two slices a missing one cannot be detected.
    min_slices: int = 3
    #: Interpolate onto equidistant slices across missing slices or uneven spacing instead of refusing.
    resample_gaps: bool = False
    #: Resample a gantry-tilted stack onto a rectilinear grid (as dcm2niix) instead of refusing.
    correct_tilt: bool = False
    #: A slice may sit this fraction of the slice spacing away from the regular grid (IPP rounding; real
    #: series in shared/data deviate by at most 2e-4 of a slice).
    spacing_tolerance: float = 0.05
    #: Slice origins may drift in-plane by this fraction of the pixel spacing before it counts as tilt.
    tilt_tolerance: float = 0.1


#: The strict defaults (frozen, so safe to share as a default argument).
DEFAULT_OPTIONS = AssemblyOptions()


@dataclass(frozen=True)
class StackGeometry:
    """Where every slice of a stack is, after validation."""

    order: np.ndarray  # indices of the input slices sorted along the normal
    positions: np.ndarray  # (n, 3) ImagePositionPatient in that order (LPS mm)
    offsets: np.ndarray  # (n,) projections on the normal, increasing
    row_cosine: np.ndarray
    column_cosine: np.ndarray
    normal: np.ndarray
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    slice_spacing: float  # mean step along the normal
    tilt_degrees: float = 0.0
    irregular_spacing: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def needs_resampling(self) -> bool:
        return self.irregular_spacing or self.tilt_degrees > 0

    def affine_lps(self) -> np.ndarray:
        """Affine of the stacked slices; exact for a regular stack."""
        affine = np.eye(4)
        affine[:3, 0] = self.row_cosine * self.pixel_spacing[1]
        affine[:3, 1] = self.column_cosine * self.pixel_spacing[0]
        affine[:3, 2] = self.normal * self.slice_spacing
        affine[:3, 3] = self.positions[0]
        return affine


def orientation_label(orientation: np.ndarray | tuple[float, ...]) -> str:
    """'axial', 'coronal', 'sagittal', or e.g. 'axial-oblique 10.8deg' from the six cosines."""
    ori = np.asarray(orientation, dtype=float)
    normal = np.cross(ori[:3], ori[3:])
    norm = np.linalg.norm(normal)
    if norm == 0:
        return "invalid"
    normal = normal / norm
    axis = int(np.argmax(np.abs(normal)))
    name = ("sagittal", "coronal", "axial")[axis]
    angle = float(np.degrees(np.arccos(min(1.0, abs(normal[axis])))))
    return name if angle < 0.5 else f"{name}-oblique {angle:.1f}deg"


def _unit_cosines(orientation: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    row, col = orientation[:3], orientation[3:]
    with np.errstate(over="ignore", invalid="ignore"):
        row_n, col_n = np.linalg.norm(row), np.linalg.norm(col)
        # Unit length within 1 % (DICOM writes rounded cosines), orthogonal within ~0.6 degrees.
        valid = abs(row_n - 1) < 0.01 and abs(col_n - 1) < 0.01 and abs(np.dot(row, col)) < 1e-2
    if not valid:
        raise Code.DICOM_INVALID_ORIENTATION(
            f"ImageOrientationPatient {np.round(orientation, 4).tolist()} is not two orthogonal unit vectors",
        )
    row, col = row / row_n, col / col_n
    col = col - np.dot(col, row) * row  # remove the few-1e-4 non-orthogonality of rounded cosines
    col = col / np.linalg.norm(col)
    return row, col, np.cross(row, col)


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"


def stack_geometry(
    positions: np.ndarray,
    orientations: np.ndarray,
    pixel_spacings: np.ndarray,
    options: AssemblyOptions = DEFAULT_OPTIONS,
    *,
    single_slice_spacing: float | None = None,
) -> StackGeometry:
    """Validate and describe a stack from per-slice ``positions`` (n,3), ``orientations`` (n,6) and
    ``pixel_spacings`` (n,2). Raises :class:`DicomError` with a stable code when the stack is not
    regular and ``options`` do not allow the repair; never raises anything else for finite input.
    """
    positions = np.asarray(positions, dtype=float).reshape(-1, 3)
    orientations = np.asarray(orientations, dtype=float).reshape(-1, 6)
    pixel_spacings = np.asarray(pixel_spacings, dtype=float).reshape(-1, 2)
    n = len(positions)
    if not (len(orientations) == len(pixel_spacings) == n):
        raise Code.DICOM_NO_GEOMETRY(
            "positions, orientations and pixel spacings differ in count"
        )
    if n == 0:
        raise Code.DICOM_TOO_FEW_SLICES("no slices")
    # The same codes as medpipe.dicom.values, for callers that come here without SliceHeaders.
    if not np.isfinite(positions).all():
        raise Code.DICOM_INVALID_POSITION("ImagePositionPatient holds a non-finite number (NaN or inf)")
    if not np.isfinite(orientations).all():
        raise Code.DICOM_INVALID_ORIENTATION("ImageOrientationPatient holds a non-finite number (NaN or inf)")
    if not (np.isfinite(pixel_spacings).all() and (pixel_spacings > 0).all()):
        bad = pixel_spacings[~(np.isfinite(pixel_spacings) & (pixel_spacings > 0))][0]
        raise Code.DICOM_INVALID_SPACING(f"PixelSpacing must be finite and positive, found {bad:g}")

    spread = np.abs(orientations - orientations[0]).max()
    if spread > 1e-3:
        labels = sorted({orientation_label(o) for o in np.round(orientations, 3)})
        raise Code.DICOM_MIXED_ORIENTATION(
            f"the slices have {len({tuple(o) for o in np.round(orientations, 3)})} different orientations "
            f"({', '.join(labels)}); `medpipe dicom ls` splits such a series into one stack per orientation: "
            "load one stack by its id",
        )
    if np.abs(pixel_spacings - pixel_spacings[0]).max() > 1e-4 * pixel_spacings[0].max():
        raise Code.DICOM_INCONSISTENT_SLICES(
            "the slices have different PixelSpacing "
            f"({np.unique(np.round(pixel_spacings, 4), axis=0).tolist()}); they cannot share one grid",
        )
    row, col, normal = _unit_cosines(orientations.mean(axis=0))
    spacing_rc = (float(pixel_spacings[0, 0]), float(pixel_spacings[0, 1]))

    if n < options.min_slices:
        raise Code.DICOM_TOO_FEW_SLICES(
            f"{n} slice{'s' if n != 1 else ''}, fewer than min_slices={options.min_slices} (with so few a "
            "missing slice cannot be detected); pass --min-slices (min_slices=) to accept it",
        )
    proj = positions @ normal
    order = np.argsort(proj, kind="stable")
    positions, proj = positions[order], proj[order]
    if n == 1:
        step = single_slice_spacing if single_slice_spacing and single_slice_spacing > 0 else 1.0
        return StackGeometry(order, positions, proj, row, col, normal, spacing_rc, float(step))

    steps = np.diff(proj)
    extent = float(proj[-1] - proj[0])
    dup_tol = max(1e-3, 0.01 * extent / (n - 1))
    dup = np.flatnonzero(steps < dup_tol)
    if dup.size:
        raise Code.DICOM_DUPLICATE_POSITION(
            f"{dup.size + 1} or more slices share a position (e.g. {_fmt(proj[dup[0]])} mm along the normal, "
            f"{n} slices in all): the series holds several images per location (echoes, phases or repeated "
            "acquisitions); select one set of images per location before loading",
        )
    mean_step = extent / (n - 1)

    # In-plane drift of the slice origins = gantry tilt (the slices are stacked obliquely to their normal).
    rel = positions - positions[0]
    in_plane = rel - np.outer(rel @ normal, normal)
    drift = float(np.linalg.norm(in_plane, axis=1).max())
    tilt = 0.0
    if drift > options.tilt_tolerance * min(spacing_rc):
        tilt = float(np.degrees(np.arctan2(np.linalg.norm(in_plane[-1]), proj[-1] - proj[0])))
        if not options.correct_tilt:
            raise Code.DICOM_GANTRY_TILT(
                f"slice origins drift {_fmt(drift)} mm within the slice plane over {_fmt(extent)} mm: gantry tilt "
                f"of {tilt:.1f} degrees; pass --correct-tilt (correct_tilt=True) to resample onto a rectilinear "
                "grid as dcm2niix does",
            )

    # Regular spacing: every slice within tolerance of the line proj[0] + k * mean_step.
    regular = proj[0] + mean_step * np.arange(n)
    irregular = bool(np.abs(proj - regular).max() > options.spacing_tolerance * mean_step)
    notes: list[str] = []
    if irregular:
        small = float(steps.min())
        ratios = steps / small
        is_gap = np.abs(ratios - np.round(ratios)) <= options.spacing_tolerance
        if is_gap.all() and (np.round(ratios) >= 2).any():
            missing = int(np.round(ratios).sum() - len(ratios))
            msg = (
                f"{missing} slice{'s are' if missing > 1 else ' is'} missing: {n} slices {_fmt(small)} mm apart "
                f"with {int((np.round(ratios) >= 2).sum())} gap(s) of up to {_fmt(steps.max())} mm"
            )
            code = Code.DICOM_MISSING_SLICES
        else:
            msg = (
                f"slice spacing varies from {_fmt(small)} to {_fmt(steps.max())} mm (median {_fmt(np.median(steps))} mm, "
                f"tolerance {options.spacing_tolerance:.0%} of a slice)"
            )
            code = Code.DICOM_INCONSISTENT_SPACING
        if not options.resample_gaps:
            raise code(
                f"{msg}; re-export the complete series, or pass --resample-gaps (resample_gaps=True) to "
                "interpolate onto equidistant slices"
            )
        notes.append(f"{code}: {msg}; resampled")
    if tilt:
        notes.append(f"DICOM_GANTRY_TILT: gantry tilt {tilt:.1f} degrees corrected by resampling")
    return StackGeometry(
        order, positions, proj, row, col, normal, spacing_rc, float(mean_step), tilt, irregular, tuple(notes)
    )
