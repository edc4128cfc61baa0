"""Property tests of slice-stack geometry (``stack_geometry``) and of the header fields it is built from.

The contract checked here: for any input, :func:`medpipe.dicom.geometry.stack_geometry` either returns a
geometry that is self-consistent -- ``order`` is a permutation that sorts the slices by their projection
on the normal, the frame is orthonormal, the third affine column is parallel to the normal, the affine is
finite, and for a regular stack ``affine_lps() @ (0, 0, k, 1)`` is slice k's ImagePositionPatient -- or
raises a :class:`~medpipe.errors.MedpipeError` with a code. Never any other exception, never a NaN
geometry. Stacks are generated from random rotations (oblique included), pixel and slice spacings, slice
counts and shuffled orders, then damaged with gaps, duplicates, jitter and gantry tilt.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import generate_uid

from medpipe.dicom.geometry import AssemblyOptions, StackGeometry, stack_geometry
from medpipe.dicom.headers import read_file
from medpipe.dicom.scan import scan
from medpipe.dicom.writer import write_ct_series
from medpipe.errors import DicomError, MedpipeError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LENIENT = AssemblyOptions(min_slices=1)
REPAIR = AssemblyOptions(min_slices=1, resample_gaps=True, correct_tilt=True)
GEOMETRY_CODES = {
    "DICOM_TOO_FEW_SLICES", "DICOM_NO_GEOMETRY", "DICOM_INVALID_ORIENTATION", "DICOM_MIXED_ORIENTATION",
    "DICOM_INCONSISTENT_SLICES", "DICOM_DUPLICATE_POSITION", "DICOM_GANTRY_TILT", "DICOM_MISSING_SLICES",
    "DICOM_INCONSISTENT_SPACING", "DICOM_INVALID_POSITION", "DICOM_INVALID_SPACING",
}  # fmt: skip


# ----------------------------------------------------------------------------------------------- strategies
def _quaternion_matrix(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


@st.composite
def frames(draw) -> np.ndarray:
    """A 3x3 rotation whose first two columns are the row and column cosines (axis-aligned or oblique)."""
    if draw(st.booleans()):
        perm = draw(st.permutations([0, 1, 2]))
        signs = draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=3, max_size=3))
        rot = np.zeros((3, 3))
        for col, (axis, sign) in enumerate(zip(perm, signs, strict=True)):
            rot[axis, col] = sign
        return rot
    q = np.array(draw(st.lists(st.floats(-1, 1), min_size=4, max_size=4)))
    assume(np.linalg.norm(q) > 0.2)
    return _quaternion_matrix(q)


@st.composite
def regular_stacks(draw, min_n: int = 1, max_n: int = 40) -> dict:
    """A regular stack: positions origin + k * step * normal, in a random order, with DICOM-like rounding."""
    rot = draw(frames())
    row, col = rot[:, 0], rot[:, 1]
    normal = np.cross(row, col)
    n = draw(st.integers(min_n, max_n))
    pixel = (draw(st.floats(0.2, 5.0)), draw(st.floats(0.2, 5.0)))  # (between rows, between columns)
    step = draw(st.floats(0.3, 10.0))
    origin = np.array(draw(st.lists(st.floats(-400, 400), min_size=3, max_size=3)))
    # Scanners write cosines with ~6 decimals: the stack must still be recognised as regular and untilted.
    decimals = draw(st.sampled_from([None, 6]))
    orientation = np.concatenate([row, col])
    if decimals is not None:
        orientation = np.round(orientation, decimals)
    shuffle = np.array(draw(st.permutations(range(n))), dtype=int)
    return {
        "rot": rot,
        "normal": normal,
        "n": n,
        "pixel": pixel,
        "step": step,
        "origin": origin,
        "orientation": orientation,
        "shuffle": shuffle,
    }


def _arrays(stack: dict, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(positions)
    return positions, np.tile(stack["orientation"], (n, 1)), np.tile(stack["pixel"], (n, 1))


def _positions(stack: dict, indices: np.ndarray | None = None) -> np.ndarray:
    k = np.arange(stack["n"]) if indices is None else np.asarray(indices)
    return stack["origin"] + np.outer(k * stack["step"], stack["normal"])


# --------------------------------------------------------------------------------------------- invariants
def assert_consistent(geo: StackGeometry, positions: np.ndarray, orientations: np.ndarray) -> None:
    """What every returned geometry must satisfy, whatever the input."""
    n = len(positions)
    assert sorted(geo.order.tolist()) == list(range(n)), "order is not a permutation"
    np.testing.assert_array_equal(geo.positions, positions[geo.order])
    frame = np.stack([geo.row_cosine, geo.column_cosine, geo.normal], axis=1)
    assert np.isfinite(frame).all()
    np.testing.assert_allclose(frame.T @ frame, np.eye(3), atol=1e-9)
    np.testing.assert_allclose(np.cross(geo.row_cosine, geo.column_cosine), geo.normal, atol=1e-9)
    # order sorts by projection on the normal: offsets are those projections, non-decreasing.
    np.testing.assert_allclose(geo.offsets, geo.positions @ geo.normal, rtol=1e-12, atol=1e-9)
    assert (np.diff(geo.offsets) >= 0).all()
    affine = geo.affine_lps()
    assert np.isfinite(affine).all(), f"non-finite affine {affine}"
    assert geo.slice_spacing > 0 and math.isfinite(geo.slice_spacing)
    # third column parallel (not anti-parallel) to the normal, length = slice spacing
    np.testing.assert_allclose(affine[:3, 2], geo.normal * geo.slice_spacing, rtol=1e-12, atol=1e-12)
    assert np.linalg.norm(np.cross(affine[:3, 2], geo.normal)) <= 1e-9 * max(1.0, geo.slice_spacing)
    # input cosines and returned frame agree in direction (normalisation only)
    ori = orientations.mean(axis=0)
    assert float(ori[:3] @ geo.row_cosine) > 0 and float(ori[3:] @ geo.column_cosine) > 0
    assert 0.0 <= geo.tilt_degrees < 90.0


def assert_maps_positions(geo: StackGeometry, sorted_positions: np.ndarray, atol: float) -> None:
    """affine_lps() maps slice k's (0, 0) voxel onto its ImagePositionPatient."""
    n = len(sorted_positions)
    voxels = np.stack([np.zeros(n), np.zeros(n), np.arange(n), np.ones(n)])
    mapped = (geo.affine_lps() @ voxels)[:3].T
    np.testing.assert_allclose(mapped, sorted_positions, atol=atol)


def _scale_tol(stack: dict) -> float:
    """Rounded cosines (1e-6) tilt the estimated normal by ~1e-6 rad: error grows with the stack extent."""
    extent = stack["step"] * max(stack["n"] - 1, 1) + np.abs(stack["origin"]).max()
    return 1e-6 + 2e-6 * extent


# ---------------------------------------------------------------------------------------- regular stacks
@FAST
@given(regular_stacks())
def test_regular_stack_any_orientation_and_order(stack: dict) -> None:
    truth = _positions(stack)
    positions, orientations, spacings = _arrays(stack, truth[stack["shuffle"]])
    geo = stack_geometry(positions, orientations, spacings, LENIENT)
    assert_consistent(geo, positions, orientations)
    # sorted along +normal: the shuffle undone (up to the direction in which the slices were numbered)
    inverse = np.argsort(stack["shuffle"])
    if stack["n"] > 1:
        np.testing.assert_array_equal(geo.order, inverse)
        np.testing.assert_allclose(geo.slice_spacing, stack["step"], rtol=1e-5)
    np.testing.assert_allclose(geo.normal, stack["normal"], atol=3e-6)
    assert geo.tilt_degrees == 0.0 and not geo.irregular_spacing and not geo.needs_resampling
    assert geo.notes == ()
    assert geo.pixel_spacing == pytest.approx(stack["pixel"])
    assert_maps_positions(geo, truth, atol=_scale_tol(stack))
    # in-plane axes: column index along the row cosine scaled by the column spacing, and vice versa
    affine = geo.affine_lps()
    np.testing.assert_allclose(affine[:3, 0], stack["rot"][:, 0] * stack["pixel"][1], atol=3e-6 * 5)
    np.testing.assert_allclose(affine[:3, 1], stack["rot"][:, 1] * stack["pixel"][0], atol=3e-6 * 5)
    # the input order never changes the result
    ordered = stack_geometry(*_arrays(stack, truth), LENIENT)
    np.testing.assert_allclose(ordered.affine_lps(), affine, rtol=1e-12, atol=1e-9)


@FAST
@given(regular_stacks(min_n=3), st.data())
def test_small_jitter_is_tolerated(stack: dict, data: st.DataObject) -> None:
    """IPP rounding noise (here up to 1 % of a slice step / of a pixel) must not break a regular stack."""
    truth = _positions(stack)
    along = data.draw(st.lists(st.floats(-0.01, 0.01), min_size=stack["n"], max_size=stack["n"]))
    inplane = data.draw(st.lists(st.floats(-0.01, 0.01), min_size=stack["n"], max_size=stack["n"]))
    noise = np.outer(np.array(along) * stack["step"], stack["normal"])
    noise += np.outer(np.array(inplane) * min(stack["pixel"]), stack["rot"][:, 1])
    positions, orientations, spacings = _arrays(stack, (truth + noise)[stack["shuffle"]])
    geo = stack_geometry(positions, orientations, spacings, AssemblyOptions())
    assert_consistent(geo, positions, orientations)
    assert not geo.needs_resampling
    np.testing.assert_array_equal(geo.order, np.argsort(stack["shuffle"]))
    bound = 0.03 * stack["step"] + 0.02 * min(stack["pixel"]) + _scale_tol(stack)
    assert_maps_positions(geo, truth + noise, atol=bound)


# ------------------------------------------------------------------------------------- damaged stacks
@FAST
@given(regular_stacks(min_n=5), st.data())
def test_missing_slices(stack: dict, data: st.DataObject) -> None:
    n = stack["n"]
    interior = list(range(1, n - 1))
    removed = data.draw(st.sets(st.sampled_from(interior), min_size=1, max_size=max(1, len(interior) - 2)))
    kept = np.array([k for k in range(n) if k not in removed])
    assume(len(kept) >= 3)
    perm = np.array(data.draw(st.permutations(range(len(kept)))), dtype=int)
    positions, orientations, spacings = _arrays(stack, _positions(stack, kept)[perm])
    one_step_left = bool((np.diff(kept) == 1).any())
    # Some subsets are (nearly) regular themselves, e.g. slices 0, 4, 8, 12 of 13: within the documented
    # tolerance (a slice within spacing_tolerance of a step from the regular grid) they must load as is.
    regular = kept[0] + (kept[-1] - kept[0]) / (len(kept) - 1) * np.arange(len(kept))
    mean_step = (kept[-1] - kept[0]) / (len(kept) - 1)
    if np.abs(kept - regular).max() <= AssemblyOptions().spacing_tolerance * mean_step:
        geo = stack_geometry(positions, orientations, spacings, AssemblyOptions())
        assert not geo.needs_resampling
        return

    with pytest.raises(DicomError) as info:
        stack_geometry(positions, orientations, spacings, AssemblyOptions())
    if one_step_left:  # the smallest gap is the true step: every gap is a whole number of steps
        assert info.value.code == "DICOM_MISSING_SLICES"
    else:
        assert info.value.code in {"DICOM_MISSING_SLICES", "DICOM_INCONSISTENT_SPACING"}

    geo = stack_geometry(positions, orientations, spacings, AssemblyOptions(resample_gaps=True))
    assert_consistent(geo, positions, orientations)
    assert geo.irregular_spacing and geo.needs_resampling and geo.tilt_degrees == 0.0
    assert len(geo.notes) == 1 and geo.notes[0].startswith(info.value.code)
    np.testing.assert_array_equal(geo.order, np.argsort(perm))
    np.testing.assert_allclose(geo.positions, _positions(stack, kept), atol=1e-9)


@FAST
@given(regular_stacks(min_n=2), st.data())
def test_duplicate_positions(stack: dict, data: st.DataObject) -> None:
    truth = _positions(stack)
    k = data.draw(st.integers(0, stack["n"] - 1))
    # a second image at the same place, off by far less than the duplicate tolerance (1e-3 mm)
    dup = truth[k] + data.draw(st.floats(-1e-4, 1e-4)) * stack["normal"]
    positions, orientations, spacings = _arrays(stack, np.vstack([truth, dup])[::-1])
    for options in (LENIENT, REPAIR):
        with pytest.raises(DicomError) as info:
            stack_geometry(positions, orientations, spacings, options)
        assert info.value.code == "DICOM_DUPLICATE_POSITION"


@FAST
@given(regular_stacks(min_n=2, max_n=20))
def test_all_positions_equal(stack: dict) -> None:
    positions = np.tile(stack["origin"], (stack["n"], 1))
    for options in (LENIENT, REPAIR):
        with pytest.raises(DicomError) as info:
            stack_geometry(*_arrays(stack, positions), options)
        assert info.value.code == "DICOM_DUPLICATE_POSITION"


@FAST
@given(regular_stacks(min_n=3), st.floats(2.0, 30.0), st.sampled_from([-1.0, 1.0]))
def test_gantry_tilt(stack: dict, degrees: float, sign: float) -> None:
    """Slice origins drifting along the column direction (a tilted gantry): refused, or measured exactly."""
    k = np.arange(stack["n"])
    drift = np.outer(sign * k * stack["step"] * math.tan(math.radians(degrees)), stack["rot"][:, 1])
    truth = _positions(stack) + drift
    positions, orientations, spacings = _arrays(stack, truth[stack["shuffle"]])
    max_drift = (stack["n"] - 1) * stack["step"] * math.tan(math.radians(degrees))
    tolerance = AssemblyOptions().tilt_tolerance * min(stack["pixel"])
    assume(max_drift > 2 * tolerance)

    with pytest.raises(DicomError) as info:
        stack_geometry(positions, orientations, spacings, AssemblyOptions(min_slices=1))
    assert info.value.code == "DICOM_GANTRY_TILT"

    geo = stack_geometry(positions, orientations, spacings, AssemblyOptions(min_slices=1, correct_tilt=True))
    assert_consistent(geo, positions, orientations)
    assert geo.tilt_degrees == pytest.approx(degrees, abs=0.01)
    assert geo.needs_resampling and not geo.irregular_spacing
    assert any(note.startswith("DICOM_GANTRY_TILT") for note in geo.notes)
    # the step is measured along the normal, not along the (longer) oblique line through the origins
    np.testing.assert_allclose(geo.slice_spacing, stack["step"], rtol=1e-5)
    np.testing.assert_array_equal(geo.order, np.argsort(stack["shuffle"]))


@FAST
@given(
    regular_stacks(min_n=3, max_n=12),
    st.lists(st.floats(-3.0, 3.0), min_size=36, max_size=36),
    st.booleans(),
    st.booleans(),
)
def test_large_jitter_either_consistent_or_coded(stack: dict, noise: list, gaps: bool, tilt: bool) -> None:
    """Heavy damage (jitter of up to 3 steps/pixels in every direction): a coded refusal or a valid geometry."""
    n = stack["n"]
    unit = np.array([stack["step"], max(stack["pixel"]), max(stack["pixel"])])
    jitter = (np.array(noise[: 3 * n]).reshape(n, 3) * unit) @ np.stack(
        [stack["normal"], stack["rot"][:, 0], stack["rot"][:, 1]]
    )
    positions, orientations, spacings = _arrays(stack, _positions(stack) + jitter)
    options = AssemblyOptions(min_slices=1, resample_gaps=gaps, correct_tilt=tilt)
    try:
        geo = stack_geometry(positions, orientations, spacings, options)
    except MedpipeError as e:
        assert e.code in GEOMETRY_CODES
        return
    assert_consistent(geo, positions, orientations)
    if geo.tilt_degrees > 0:
        assert tilt
    if geo.irregular_spacing:
        assert gaps


# --------------------------------------------------------------------------- arbitrary / degenerate input
any_float = st.floats(allow_nan=True, allow_infinity=True)
wild_float = st.one_of(any_float, st.floats(-10, 10), st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e-300, 1e300]))


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 5).flatmap(
        lambda n: st.tuples(
            st.lists(wild_float, min_size=3 * n, max_size=3 * n),
            st.lists(wild_float, min_size=6 * n, max_size=6 * n),
            st.lists(wild_float, min_size=2 * n, max_size=2 * n),
        )
    ),
    st.integers(1, 3),
    st.booleans(),
    st.booleans(),
)
def test_arbitrary_numbers_never_crash(arrays, min_slices: int, gaps: bool, tilt: bool) -> None:
    """NaN, inf, zero, huge and tiny numbers anywhere: a coded DicomError or a consistent geometry."""
    pos, ori, spc = (np.array(a, dtype=float) for a in arrays)
    options = AssemblyOptions(min_slices=min_slices, resample_gaps=gaps, correct_tilt=tilt)
    with np.errstate(all="ignore"):
        try:
            geo = stack_geometry(pos, ori, spc, options)
        except MedpipeError as e:
            assert e.code in GEOMETRY_CODES
            return
    assert_consistent(geo, pos.reshape(-1, 3), ori.reshape(-1, 6))


@FAST
@given(regular_stacks(min_n=2, max_n=6), st.data())
def test_arbitrary_cosines_never_crash(stack: dict, data: st.DataObject) -> None:
    """Random (non-unit, non-orthogonal, huge, zero) cosines on an otherwise sane stack."""
    cos = np.array(data.draw(st.lists(wild_float, min_size=6, max_size=6)))
    n = stack["n"]
    positions = _positions(stack)
    with np.errstate(all="ignore"):
        try:
            geo = stack_geometry(positions, np.tile(cos, (n, 1)), np.tile(stack["pixel"], (n, 1)), REPAIR)
        except MedpipeError as e:
            assert e.code in GEOMETRY_CODES
            return
    assert_consistent(geo, positions, np.tile(cos, (n, 1)))


AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
LINE = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.0, 0.0, 4.0], [0.0, 0.0, 6.0]])


def _call(positions, orientation, spacing=(0.5, 0.5), options=LENIENT, orientations=None):
    positions = np.asarray(positions, dtype=float).reshape(-1, 3)
    n = len(positions)
    ori = np.tile(orientation, (n, 1)) if orientations is None else np.asarray(orientations, dtype=float)
    return stack_geometry(positions, ori, np.tile(spacing, (n, 1)), options)


@pytest.mark.parametrize(
    ("positions", "orientation", "spacing", "code"),
    [
        (LINE, [0, 0, 0, 0, 1, 0], (0.5, 0.5), "DICOM_INVALID_ORIENTATION"),  # zero-length row cosine
        (LINE, [0, 0, 0, 0, 0, 0], (0.5, 0.5), "DICOM_INVALID_ORIENTATION"),  # both zero
        (LINE, [1, 0, 0, 1, 0, 0], (0.5, 0.5), "DICOM_INVALID_ORIENTATION"),  # parallel cosines
        (LINE, [1, 0, 0, -1, 0, 0], (0.5, 0.5), "DICOM_INVALID_ORIENTATION"),  # anti-parallel
        (LINE, [1, 0, 0, 0.5, 0.866, 0], (0.5, 0.5), "DICOM_INVALID_ORIENTATION"),  # 60 degrees apart
        (LINE, [float("nan"), 0, 0, 0, 1, 0], (0.5, 0.5), "DICOM_INVALID_ORIENTATION"),
        (LINE, [float("inf"), 0, 0, 0, 1, 0], (0.5, 0.5), "DICOM_INVALID_ORIENTATION"),
        (np.where(LINE == 2.0, np.nan, LINE), AXIAL, (0.5, 0.5), "DICOM_INVALID_POSITION"),
        (LINE, AXIAL, (float("nan"), 0.5), "DICOM_INVALID_SPACING"),
        (LINE, AXIAL, (0.0, 0.5), "DICOM_INVALID_SPACING"),
        (LINE, AXIAL, (0.5, -0.5), "DICOM_INVALID_SPACING"),
        (np.zeros((4, 3)), AXIAL, (0.5, 0.5), "DICOM_DUPLICATE_POSITION"),  # all positions equal
        (np.zeros((0, 3)), AXIAL, (0.5, 0.5), "DICOM_TOO_FEW_SLICES"),  # no slice at all
        # positions along the row direction: every slice lies in the same plane
        ([[0, 0, 0], [1, 0, 0], [2, 0, 0]], AXIAL, (0.5, 0.5), "DICOM_DUPLICATE_POSITION"),
    ],
)
def test_degenerate_input_is_refused_with_its_code(positions, orientation, spacing, code) -> None:
    for options in (LENIENT, REPAIR):
        with pytest.raises(DicomError) as info:
            _call(positions, orientation, spacing, options)
        assert info.value.code == code, str(info.value)


def test_counts_must_agree() -> None:
    with pytest.raises(DicomError) as info:
        stack_geometry(LINE, np.tile(AXIAL, (3, 1)), np.tile((0.5, 0.5), (4, 1)))
    assert info.value.code == "DICOM_NO_GEOMETRY"


def test_mixed_orientations_and_pixel_spacings() -> None:
    oris = np.array([AXIAL, AXIAL, [1, 0, 0, 0, 0, -1], AXIAL], dtype=float)
    with pytest.raises(DicomError) as info:
        _call(LINE, AXIAL, orientations=oris, options=REPAIR)
    assert info.value.code == "DICOM_MIXED_ORIENTATION"
    spacings = np.array([(0.5, 0.5), (0.5, 0.5), (0.7, 0.5), (0.5, 0.5)])
    with pytest.raises(DicomError) as info:
        stack_geometry(LINE, np.tile(AXIAL, (4, 1)), spacings, REPAIR)
    assert info.value.code == "DICOM_INCONSISTENT_SLICES"


@pytest.mark.parametrize("n", [1, 2])
def test_too_few_slices_by_default(n: int) -> None:
    with pytest.raises(DicomError) as info:
        _call(LINE[:n], AXIAL, options=AssemblyOptions())
    assert info.value.code == "DICOM_TOO_FEW_SLICES"
    geo = _call(LINE[:n], AXIAL, options=AssemblyOptions(min_slices=n))
    assert_consistent(geo, LINE[:n], np.tile(AXIAL, (n, 1)))
    assert geo.slice_spacing == (1.0 if n == 1 else 2.0)


def test_single_slice_spacing_from_header() -> None:
    pos, ori, spc = LINE[:1], np.array([AXIAL]), np.array([(0.5, 0.5)])
    geo = stack_geometry(pos, ori, spc, LENIENT, single_slice_spacing=3.0)
    assert geo.slice_spacing == 3.0
    assert_maps_positions(geo, pos, atol=0)
    for bad in (0.0, -2.0, None):
        assert stack_geometry(pos, ori, spc, LENIENT, single_slice_spacing=bad).slice_spacing == 1.0


@pytest.mark.parametrize("scale", [1e-3, 2.0, 1e10, 1e200, 1e308])
def test_non_unit_cosines_never_give_a_nan_geometry(scale: float) -> None:
    """Cosines that are not unit vectors are either normalised (a finite, consistent geometry) or refused."""
    orientation = [scale, 0, 0, 0, scale, 0]
    with np.errstate(all="ignore"):
        try:
            geo = _call(LINE, orientation, options=REPAIR)
        except DicomError as e:
            assert e.code == "DICOM_INVALID_ORIENTATION"
            return
    assert_consistent(geo, LINE, np.tile(orientation, (4, 1)))


# ------------------------------------------------------------------------------------ header fields
DS_TAGS = {
    "ImagePositionPatient": (0x00200032, 3),
    "ImageOrientationPatient": (0x00200037, 6),
    "PixelSpacing": (0x00280030, 2),
    "RescaleSlope": (0x00281053, 1),
    "RescaleIntercept": (0x00281052, 1),
}
number_text = st.one_of(
    st.floats(-1e4, 1e4, allow_nan=False).map(lambda v: f"{v:.6g}"),
    st.integers(-5000, 5000).map(str),
    st.sampled_from(
        ["nan", "NaN", "inf", "-inf", "1e400", "", " ", "abc", "1,5", "0x10", "--1", "1.2.3", "0"]
    ),
)


@st.composite
def field_values(draw, count: int) -> str:
    n = draw(st.sampled_from([count, count, count, 0, 1, count + 1]))
    return "\\".join(draw(number_text) for _ in range(n))


def _expected(text: str, count: int) -> tuple[float, ...] | None:
    """None when blank (absent); else the numbers, or ``count`` NaNs when not ``count`` numbers."""
    parts = text.split("\\") if text.strip() else []
    if not parts:
        return None
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        return (math.nan,) * count
    return values if len(values) == count else (math.nan,) * count


def _same(a: tuple[float, ...] | float | None, b: tuple[float, ...] | float | None) -> bool:
    if a is None or b is None:
        return a is b
    return bool(np.array_equal(np.asarray(a, float), np.asarray(b, float), equal_nan=True))


def _usable(values: tuple[float, ...] | None, positive: bool = False, nonzero: bool = False) -> bool:
    if values is None:
        return True  # absent: a default or DICOM_NO_GEOMETRY, not a damaged value
    v = np.asarray(values, float)
    return bool(np.isfinite(v).all() and (not positive or (v > 0).all()) and (not nonzero or (v != 0).all()))


VALUE_CODES = {
    "DICOM_INVALID_RESCALE",
    "DICOM_INVALID_SPACING",
    "DICOM_INVALID_POSITION",
    "DICOM_INVALID_ORIENTATION",
}


def _set_raw(ds: pydicom.Dataset, tag: int, vr: str, text: str) -> None:
    raw = text.encode()
    if len(raw) % 2:
        raw += b" "
    ds._dict[Tag(tag)] = RawDataElement(Tag(tag), vr, len(raw), raw, 0, False, True)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    image = np.arange(4 * 3 * 1, dtype=np.int16).reshape(4, 3, 1)
    folder = tmp_path_factory.mktemp("template")
    return write_ct_series(image, folder, spacing=(0.5, 0.6, 2.0), origin_lps=(1, 2, 3), series_seed="tpl")[0]


@pytest.mark.filterwarnings(
    "ignore::UserWarning"
)  # pydicom warns about the invalid values written on purpose
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_header_fields_parse_or_become_unknown(template: Path, tmp_path_factory, data: st.DataObject) -> None:
    """Any text in the geometry/rescale fields: read_file never raises; blank is absent (None/default), a
    number parses, anything else is kept as NaN -- and the scan refuses every damaged value with its code."""
    ds = pydicom.dcmread(template)
    texts = {kw: data.draw(field_values(count), label=kw) for kw, (_, count) in DS_TAGS.items()}
    instance = data.draw(st.sampled_from(["7", " 12 ", "", "x1", "1.5", "-3"]), label="InstanceNumber")
    for kw, (tag, _) in DS_TAGS.items():
        _set_raw(ds, tag, "DS", texts[kw])
    _set_raw(ds, 0x00200013, "IS", instance)
    path = tmp_path_factory.mktemp("hdr") / "slice.dcm"
    ds.save_as(path)

    result = read_file(str(path))
    assert result.problem is None and result.skipped is None
    (header,) = result.slices
    expected = {kw: _expected(texts[kw], count) for kw, (_, count) in DS_TAGS.items()}
    assert _same(header.position, expected["ImagePositionPatient"])
    assert _same(header.orientation, expected["ImageOrientationPatient"])
    assert _same(header.pixel_spacing, expected["PixelSpacing"])
    # absent: the DICOM defaults; present: the number as written (NaN, 0 ... are refused, never defaulted)
    slope, intercept = expected["RescaleSlope"], expected["RescaleIntercept"]
    assert _same(header.slope, 1.0 if slope is None else slope[0])
    assert _same(header.intercept, 0.0 if intercept is None else intercept[0])
    # an invalid IS becomes None; "1.5" (not an integer string) may be truncated: order never uses it
    allowed = {"7": {7}, " 12 ": {12}, "-3": {-3}, "1.5": {None, 1}}.get(instance, {None})
    assert header.instance_number in allowed

    # A series of such slices scans without raising: a coded error, or a valid geometry.
    folder = path.parent
    for k in range(2):
        ds.SOPInstanceUID = generate_uid()
        ds.save_as(folder / f"more{k}.dcm")
    scanned = scan(str(folder), LENIENT)
    assert len(scanned.stacks) == 1
    (stack,) = scanned.stacks
    damaged = not (
        _usable(expected["ImagePositionPatient"])
        and _usable(expected["ImageOrientationPatient"])
        and _usable(expected["PixelSpacing"], positive=True)
        and _usable(slope, nonzero=True)
        and _usable(intercept)
    )
    if damaged:  # a damaged number is refused with its own code before it is used
        assert stack.error is not None and stack.error.code in VALUE_CODES, (texts, stack.error)
    elif stack.error is not None:
        assert stack.error.code in GEOMETRY_CODES
    else:
        assert stack.geometry is not None
        assert np.isfinite(stack.geometry.affine_lps()).all()
