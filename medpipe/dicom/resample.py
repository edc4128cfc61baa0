"""Put a DICOM slice stack with gantry tilt and/or uneven slice spacing onto a regular grid, as dcm2niix does.

A CT series is a stack of parallel 2-D slices, each placed by its own ImagePositionPatient. Two irregularities
keep such a stack from being described by one orthogonal affine:

* **Gantry tilt.** The table moves along the scanner axis while the slice planes are tilted, so successive
  slice origins drift *inside* the slice plane (along the columns for a tilted axial scan): stacking the
  slices as they are gives a sheared volume.
* **Uneven spacing.** A missing slice, or a scan made of blocks with different increments, leaves gaps of
  different sizes along the slice normal.

dcm2niix fixes both in two separable linear steps (``nii_saveNII3Dtilt`` then ``nii_saveNII3Deq`` in
``nii_dicom_batch.cpp``, output ``*_Tilt_Eq``); this module applies the same rules, checked voxel for voxel
against the dcm2niix v1.0.20260724 binary:

1. **Tilt correction.** Each slice is shifted in-plane by the in-plane offset of its origin from the first
   slice's origin, with linear interpolation, so that all slices share one in-plane grid: the first slice's
   grid grown by whole pixels (``ceil`` of the largest drift on one side, ``floor`` on the other) so that no
   input pixel is cut off; the origin moves by the pixels added before the first row/column. dcm2niix derives
   the offset from the tilt angle (``tan(tilt) * distance along the normal``); we read it from the positions,
   which is the same for a true tilt and also handles a drift along the rows. Where a sample falls next to
   PixelPaddingValue pixels dcm2niix takes the nearest pixel (its issue 262); ``padding_value`` does so.
2. **Equidistant slices.** Along the normal, the shifted slices are interpolated linearly onto equally spaced
   slices from the first slice to the last. dcm2niix's count and spacing: with ``gap`` the smallest distance
   between neighbouring slices and ``L`` the stack's extent along the normal, ``count = ceil(L / gap) + 1``,
   at most twice the input count, and spacing ``L / (count - 1)`` (``gap`` stretched until the last output
   slice lands on the last input slice). Voxels beyond a shifted slice's edge hold the fill value and are
   blended like any other value, as dcm2niix does.

Interpolating between the two neighbouring slices *along the normal*, each sampled at the tilt-corrected
in-plane position, reproduces a function that is linear in world space exactly at every output voxel.

Differences from dcm2niix: the result is float32 and not rounded (dcm2niix rounds integer data after each
step, so rounded outputs differ by at most 1 where its intermediate rounding matters); noise tolerances (a
drift within 1 % of a pixel of a whole number is that number; ``ceil`` ignores an excess under 1 % of a gap; a
stack whose slices lie within 1 % of a gap of regular positions is regular, where dcm2niix calls spacing
uneven only when a gap differs from the first one by more than 0.2 mm); and dcm2niix corrects tilt only for CT
(or a GantryDetectorTilt tag) and never equalises spacing of 4-D or resampled series, while here the caller
decides.
"""

from __future__ import annotations

import math

import numpy as np

from medpipe.errors import Code, DicomError

__all__ = ["resample_to_regular_grid"]

#: Deviations under this fraction of a pixel (in-plane) or of a slice gap (along the normal) are noise.
_NOISE = 0.01
#: dcm2niix never makes more than this many times the input slice count when equalising slice distances.
_MAX_SLICE_FACTOR = 2


def _invalid(message: str) -> DicomError:
    return Code.DICOM_RESAMPLE_INVALID_INPUT(message)


def _unit(vector: np.ndarray, name: str) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float64).reshape(-1)
    if v.shape != (3,) or not np.isfinite(v).all() or abs(np.linalg.norm(v) - 1.0) > 1e-3:
        raise _invalid(f"{name}={vector!r} must be a unit 3-vector (ImageOrientationPatient)")
    return v / np.linalg.norm(v)


def _snap(values: np.ndarray) -> np.ndarray:
    """Round offsets (in pixels) that are within noise of a whole number, so noise neither blurs nor grows."""
    nearest = np.round(values)
    return np.where(np.abs(values - nearest) < _NOISE, nearest, values)


def _shift_axis(
    image: np.ndarray, shift: float, axis: int, padding_value: float | None
) -> tuple[np.ndarray, int]:
    """Linearly resample ``image`` so that input index ``i`` lands on output index ``i + shift`` on ``axis``.

    Returns ``(block, first)``: the output samples that lie on the image, at output indices ``first,
    first + 1, ...``. As in dcm2niix, a sample lies on the image if its source position ``p`` is in
    ``(-1, n - 1]``, and for ``-1 < p < 0`` it takes pixel 0 (dcm2niix flips the rows before shifting and
    accepts flipped rows ``[0, n)``; keeping its rule makes the outputs agree voxel for voxel). Where one of
    the two source pixels equals ``padding_value`` the nearer one is taken (ties to the lower index). A
    whole-number shift returns ``image`` itself.
    """
    whole = math.floor(shift)
    frac = shift - whole
    if frac == 0.0:
        return image, whole
    n = image.shape[axis]
    below = np.take(image, np.arange(0, n - 1), axis=axis)
    above = np.take(image, np.arange(1, n), axis=axis)
    # Output whole + 1 + i samples source position i + t, between input pixels i and i + 1.
    t = 1.0 - frac
    blend = below + np.float32(t) * (above - below)
    if padding_value is not None:
        padded = (below == padding_value) | (above == padding_value)
        blend[padded] = (above if t > 0.5 else below)[padded]
    # Output ``whole`` samples source position t - 1, less than a pixel before pixel 0.
    return np.concatenate((np.take(image, [0], axis=axis), blend), axis=axis), whole


def _place_shifted(
    canvas: np.ndarray, image: np.ndarray, shift_rows: float, shift_cols: float, padding_value: float | None
) -> None:
    """Write ``image`` shifted by (rows, columns) into ``canvas``; pixels it does not reach are unchanged."""
    block, first_row = _shift_axis(image, shift_rows, 0, padding_value)
    block, first_col = _shift_axis(block, shift_cols, 1, padding_value)
    canvas[first_row : first_row + block.shape[0], first_col : first_col + block.shape[1]] = block


def _equidistant_targets(distances: np.ndarray, slice_spacing: float | None) -> tuple[np.ndarray, float]:
    """Distances along the normal (from the first slice) of the output slices, and their spacing."""
    n = len(distances)
    extent = float(distances[-1])
    gaps = np.diff(distances)
    mean_gap = extent / (n - 1)
    if slice_spacing is None:
        regular = np.abs(distances - mean_gap * np.arange(n)).max() <= _NOISE * mean_gap
        if regular:
            return distances, mean_gap
        # dcm2niix: smallest gap, enough slices to cover the extent, at most twice the input count; then the
        # spacing is stretched so that the last output slice lands on the last input slice.
        count = math.ceil(extent / float(gaps.min()) - _NOISE) + 1
        count = min(count, _MAX_SLICE_FACTOR * n)
        spacing = extent / (count - 1)
    else:
        spacing = float(slice_spacing)
        count = math.floor(extent / spacing + _NOISE) + 1
    return spacing * np.arange(count), spacing


def _neighbours(distances: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per target distance: lower and upper input slice and the weight of the upper one (0: copy lower)."""
    n = len(distances)
    upper = np.clip(np.searchsorted(distances, targets), 1, n - 1)
    lower = upper - 1
    weight = np.clip((targets - distances[lower]) / (distances[upper] - distances[lower]), 0.0, 1.0)
    tiny = 1e-6
    on_upper = weight > 1.0 - tiny
    lower = np.where(on_upper, upper, lower)
    weight = np.where(on_upper | (weight < tiny), 0.0, weight)
    return lower, upper, weight


def resample_to_regular_grid(
    slices: np.ndarray,
    positions: np.ndarray,
    row_cosine: np.ndarray,
    column_cosine: np.ndarray,
    pixel_spacing: tuple[float, float],
    *,
    correct_tilt: bool,
    equidistant: bool,
    slice_spacing: float | None = None,
    fill_value: float = 0.0,
    padding_value: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(volume, affine_lps)``: the stack on a regular grid, as dcm2niix's ``*_Tilt_Eq`` output.

    ``slices`` is ``(n, rows, cols)``: rescaled pixel values of ``n`` slices sorted by increasing projection
    of their ImagePositionPatient ``positions`` (``(n, 3)``, LPS mm) on the normal ``cross(row_cosine,
    column_cosine)``. ``row_cosine``/``column_cosine`` are ImageOrientationPatient[0:3]/[3:6] (directions of
    increasing column/row index) and ``pixel_spacing`` is PixelSpacing (between rows, between columns):
    input voxel (x, y) of slice k sits at ``positions[k] + x * pixel_spacing[1] * row_cosine
    + y * pixel_spacing[0] * column_cosine``.

    * ``correct_tilt``: shift every slice in-plane by the drift of its origin from the first slice's origin
      (gantry tilt) onto the first slice's pixel grid, grown by whole pixels so that nothing is cut off.
      Output voxels a shifted slice does not reach hold ``fill_value`` (dcm2niix uses PixelPaddingValue,
      else the darkest voxel). Without it slices keep their own grid, and a drifting stack gets a sheared
      affine whose third axis includes the mean drift per slice (exact for a true, linear tilt).
    * ``equidistant``: interpolate linearly along the normal onto equally spaced slices starting at the
      first slice. ``slice_spacing=None`` follows dcm2niix: smallest gap, ``ceil(extent / gap) + 1`` slices
      (at most ``2 n``), spacing ``extent / (count - 1)``; a stack that is already regular comes back as it
      is. An explicit ``slice_spacing`` is kept exactly, with as many slices as fit within the stack.
      Without ``equidistant`` the slices are kept and the affine uses the mean gap (exact when regular).
    * ``padding_value``: the series' PixelPaddingValue, if any. In the in-plane shift, a sample with a
      padding pixel among its two source pixels takes the nearer pixel instead of a blend, as dcm2niix
      does, so padding is not smeared into fake intermediate values. It does not set the fill value.

    ``volume`` is float32 indexed ``[x, y, z]`` = [column, row, slice]. ``affine_lps`` (4x4) maps
    ``(x, y, z, 1)`` to LPS mm with axes ``pixel_spacing[1] * row_cosine``, ``pixel_spacing[0] *
    column_cosine`` and ``spacing * normal`` (orthogonal unless a drifting stack is left uncorrected, see
    above) and its origin at the first output voxel. A regular untilted stack comes back unchanged (exact
    values) whatever the options; a single slice gets a slice spacing of ``slice_spacing`` or 1 mm.

    Raises :class:`~medpipe.errors.DicomError` (code ``DICOM_RESAMPLE_INVALID_INPUT``) for inconsistent
    shapes, cosines that are not orthogonal unit vectors, non-positive spacings, positions not strictly
    increasing along the normal, or ``slice_spacing`` without ``equidistant``.
    """
    stack = np.asarray(slices)
    if stack.ndim != 3 or 0 in stack.shape or stack.dtype.kind not in "biuf":
        raise _invalid(
            f"slices must be a non-empty real (n, rows, cols) array, got {stack.dtype} {stack.shape}"
        )
    stack = stack.astype(np.float32, copy=False)
    n, rows, cols = stack.shape
    pos = np.asarray(positions, dtype=np.float64)
    if pos.shape != (n, 3) or not np.isfinite(pos).all():
        raise _invalid(f"positions must be finite with shape ({n}, 3), got {pos.shape}")
    row_dir = _unit(row_cosine, "row_cosine")
    col_dir = _unit(column_cosine, "column_cosine")
    if abs(float(row_dir @ col_dir)) > 1e-3:
        raise _invalid("row_cosine and column_cosine are not orthogonal")
    normal = np.cross(row_dir, col_dir)
    spacing_rows, spacing_cols = (float(s) for s in pixel_spacing)
    if not (spacing_rows > 0 and spacing_cols > 0 and math.isfinite(spacing_rows + spacing_cols)):
        raise _invalid(f"pixel_spacing={pixel_spacing!r} must be two positive numbers (mm)")
    if slice_spacing is not None and not equidistant:
        raise _invalid("slice_spacing is only used with equidistant=True")
    if slice_spacing is not None and not (slice_spacing > 0 and math.isfinite(slice_spacing)):
        raise _invalid(f"slice_spacing={slice_spacing!r} must be a positive number (mm)")

    relative = pos - pos[0]
    distances = relative @ normal
    if n > 1 and not (np.diff(distances) > 1e-6).all():
        raise _invalid(
            "positions must be strictly increasing along the slice normal (sort them; no duplicates)"
        )
    # In-plane drift of each slice origin from the first one, in pixels (columns, rows).
    drift_cols = _snap(relative @ row_dir / spacing_cols)
    drift_rows = _snap(relative @ col_dir / spacing_rows)
    has_drift = bool(np.any(drift_cols != 0) or np.any(drift_rows != 0))

    origin = pos[0].copy()
    if correct_tilt and has_drift:
        first_col = math.floor(min(0.0, float(drift_cols.min())))
        first_row = math.floor(min(0.0, float(drift_rows.min())))
        out_cols = math.ceil(max(0.0, float(drift_cols.max()))) - first_col + cols
        out_rows = math.ceil(max(0.0, float(drift_rows.max()))) - first_row + rows
        origin += first_col * spacing_cols * row_dir + first_row * spacing_rows * col_dir
        aligned = np.full((n, out_rows, out_cols), fill_value, dtype=np.float32)
        for k in range(n):
            shift_rows, shift_cols = drift_rows[k] - first_row, drift_cols[k] - first_col
            _place_shifted(aligned[k], stack[k], shift_rows, shift_cols, padding_value)
        in_plane_drift = np.zeros(3)
    else:
        aligned = stack
        in_plane_drift = (relative[-1] - distances[-1] * normal) if has_drift else np.zeros(3)

    extent = float(distances[-1])
    if n == 1:
        targets, spacing = distances, float(slice_spacing or 1.0)
    elif equidistant:
        targets, spacing = _equidistant_targets(distances, slice_spacing)
    else:
        targets, spacing = distances, extent / (n - 1)

    if targets is distances:
        out = aligned.copy() if aligned is stack else aligned
    else:
        lower, upper, weight = _neighbours(distances, targets)
        out = np.empty((len(targets),) + aligned.shape[1:], dtype=np.float32)
        for s, (lo, hi, w) in enumerate(zip(lower, upper, weight, strict=True)):
            if w == 0.0:
                out[s] = aligned[lo]
            else:
                np.subtract(aligned[hi], aligned[lo], out=out[s])
                out[s] *= np.float32(w)
                out[s] += aligned[lo]

    affine = np.eye(4)
    affine[:3, 0] = spacing_cols * row_dir
    affine[:3, 1] = spacing_rows * col_dir
    affine[:3, 2] = spacing * (normal + (in_plane_drift / extent if extent > 0 else 0.0))
    affine[:3, 3] = origin
    return out.transpose(2, 1, 0), affine
