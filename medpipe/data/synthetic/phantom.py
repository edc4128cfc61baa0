"""Deterministic synthetic chest-CT phantoms with labelled lung nodules.

The embedded demo data of the lung-nodule bundle: every case is generated from an integer seed, so a
datalist can name cases instead of shipping volumes. A case looks like a chest CT in a lung window:
body with skin, subcutaneous fat and muscle, two lungs (the left one smaller, because of the heart)
tapering to the apex, diaphragm domes at the bottom, mediastinum with heart, aorta, pulmonary arteries
and veins, trachea splitting into bronchi, branching pulmonary vessels (the confounders a model must
learn to ignore), ribs, sternum, spine and a patient table, with -2048 HU outside the reconstruction
circle as scanners pad it. Nodules are solid, part-solid or
ground-glass, smooth or lobulated, with partial-volume edges; the label holds exactly the voxels whose
centre lies inside a nodule surface.

The anatomy (tissue classes) is :mod:`.anatomy`, the shape primitives and the nodule renderer shared
with the nodule crops are :mod:`.shapes`; this module draws the case, places and renders the nodules
and turns classes into HU.

Conventions: ``image[i, j, k]`` with ``i`` the column (DICOM +x, towards the patient's left), ``j``
the row (+y, posterior) and ``k`` the slice (+z, towards the head); ``origin_lps`` is the centre of
voxel ``(0, 0, 0)`` in LPS millimetres and the volume is centred on ``(0, 0, 0)``. Anatomy is defined
in millimetres relative to the body size, which follows the field of view, so any grid from
``(96, 80, 24)`` at 2/2/5 mm (0.1 s) through the default ``(384, 320, 56)`` at 0.8/0.8/2.5 mm (0.7 s on 2
cores) to ``(512, 512, 120)`` at 0.7/0.7/2.5 mm (4 s) works.

Example
-------
>>> case = generate_phantom(7, PhantomSpec(shape=(96, 80, 24), spacing=(2.0, 2.0, 5.0)))
>>> str(case.image.dtype), int(case.label.max()), len(case.nodules) >= 1
('int16', 1, True)
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from medpipe.data.synthetic.anatomy import HU, LUNG, TEXTURE, Thorax, build_anatomy, paint_vessels
from medpipe.data.synthetic.shapes import (
    NODULE_KINDS,
    Box,
    Grid,
    NoduleShape,
    blend_nodule,
    correlated_noise,
    lps_affine,
    nodule_density,
    ras_affine,
    smooth_field,
    to_hu_int16,
)
from medpipe.errors import Code, DataGenerationError

__all__ = ["NODULE_KINDS", "NODULE_SHAPES", "Nodule", "PhantomCase", "PhantomSpec", "generate_phantom"]

NODULE_SHAPES = ("smooth", "lobulated")


def _spec_error(message: str) -> DataGenerationError:
    return Code.PHANTOM_INVALID_SPEC(message)


def _as_tuple(value: object, n: int, name: str, cast: Callable) -> tuple:
    try:
        items = tuple(value)  # type: ignore[arg-type]
        if len(items) != n or any(isinstance(v, bool) for v in items):
            raise TypeError
        return tuple(cast(v) for v in items)
    except (TypeError, ValueError):
        raise _spec_error(f"{name}={value!r} must be {n} numbers") from None


@dataclass(frozen=True)
class PhantomSpec:
    """What to generate; validated on construction.

    ``shape`` and ``spacing`` (mm) follow the ``(i, j, k)`` convention of the module. ``n_nodules`` and
    ``nodule_diameter_mm`` are inclusive ranges sampled uniformly. Nodules too small to surely cover a
    voxel centre at a coarse spacing are enlarged: see :attr:`effective_diameter_mm`. ``noise_hu`` is the
    standard deviation of the (slightly correlated) noise; ``kinds``/``shapes`` restrict the nodule types
    drawn (uniformly); ``table`` adds a patient table under the back. ``outside_scan_hu`` is the value of
    the voxels outside the reconstruction circle (the circle of the larger in-plane field of view, centred),
    as scanners write them (-2048 on GE, -3024 on Siemens); ``None`` leaves the anatomy's air there.
    """

    shape: tuple[int, int, int] = (384, 320, 56)
    spacing: tuple[float, float, float] = (0.8, 0.8, 2.5)
    n_nodules: tuple[int, int] = (1, 4)
    nodule_diameter_mm: tuple[float, float] = (4.0, 30.0)
    noise_hu: float = 20.0
    kinds: tuple[str, ...] = NODULE_KINDS
    shapes: tuple[str, ...] = NODULE_SHAPES
    table: bool = True
    outside_scan_hu: float | None = -2048.0

    def __post_init__(self) -> None:
        shape = _as_tuple(self.shape, 3, "shape", operator.index)
        spacing = _as_tuple(self.spacing, 3, "spacing", float)
        n_nod = _as_tuple(self.n_nodules, 2, "n_nodules", operator.index)
        diam = _as_tuple(self.nodule_diameter_mm, 2, "nodule_diameter_mm", float)
        if min(shape[:2]) < 32 or shape[2] < 8 or math.prod(shape) > 512 * 512 * 400:
            raise _spec_error(f"shape={shape} must have at least 32x32 voxels in-plane, 8 slices and at "
                              "most 512*512*400 voxels")
        positive = all(math.isfinite(s) and s > 0 for s in spacing)
        if not (positive and max(spacing[:2]) <= 5 and spacing[2] <= 10):
            raise _spec_error(f"spacing={spacing} must be positive, at most 5 mm in-plane and 10 mm along z")
        fov = [n * s for n, s in zip(shape, spacing, strict=True)]
        if not (120 <= fov[0] <= 600 and 120 <= fov[1] <= 600 and fov[2] >= 40):
            raise _spec_error(f"field of view {tuple(round(f, 1) for f in fov)} mm (shape*spacing) must be "
                              "120-600 mm in-plane and at least 40 mm along z to hold a chest")
        if not 0 <= n_nod[0] <= n_nod[1] <= 8:
            raise _spec_error(f"n_nodules={n_nod} must be a range (low, high) with 0 <= low <= high <= 8")
        if not (math.isfinite(diam[0]) and math.isfinite(diam[1]) and 0 < diam[0] <= diam[1] <= 40):
            raise _spec_error(f"nodule_diameter_mm={diam} must be a range (low, high) with "
                              "0 < low <= high <= 40 mm")
        if not (isinstance(self.noise_hu, numbers.Real) and not isinstance(self.noise_hu, bool)
                and math.isfinite(self.noise_hu)
                and 0 <= self.noise_hu <= 500):
            raise _spec_error(f"noise_hu={self.noise_hu!r} must be a number between 0 and 500")
        for name, allowed in (("kinds", NODULE_KINDS), ("shapes", NODULE_SHAPES)):
            value = getattr(self, name)
            items = (value,) if isinstance(value, str) else tuple(value)
            if not items or len(set(items)) != len(items) or not set(items) <= set(allowed):
                raise _spec_error(f"{name}={value!r} must be a non-empty subset of {allowed}")
            object.__setattr__(self, name, items)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "n_nodules", n_nod)
        object.__setattr__(self, "nodule_diameter_mm", diam)
        object.__setattr__(self, "noise_hu", float(self.noise_hu))
        object.__setattr__(self, "table", bool(self.table))
        if self.outside_scan_hu is not None:
            pad = self.outside_scan_hu
            if isinstance(pad, bool) or not isinstance(pad, numbers.Real) or not -31744 <= pad <= -1000:
                raise _spec_error(f"outside_scan_hu={pad!r} must be None or a number from -31744 to -1000 HU "
                                  "(what a CT DICOM series with RescaleIntercept -1024 can store)")
            object.__setattr__(self, "outside_scan_hu", float(pad))

    @property
    def effective_diameter_mm(self) -> tuple[float, float]:
        """Diameter range actually sampled: the minimum is raised to ``voxel diagonal / 0.75`` when it is
        smaller (coarse grids only: 7.7 mm at 2/2/5 mm, unchanged at 0.8/0.8/2.5 mm), so that even the
        thinnest direction of a nodule (0.75 x nominal radius) reaches a voxel centre and every nodule has
        a labelled voxel. Never beyond the maximum; nodules below this bound are centred on a voxel."""
        low, high = self.nodule_diameter_mm
        return min(high, max(low, math.dist(self.spacing, (0, 0, 0)) / 0.75)), high


@dataclass(frozen=True)
class Nodule:
    """One nodule: centre (LPS mm), nominal diameter (2 x base radius, mm), kind, shape and the mean HU
    of the final image over its labelled voxels."""

    center_lps: tuple[float, float, float]
    diameter_mm: float
    kind: str
    shape: str
    mean_hu: float


@dataclass(eq=False)
class PhantomCase:
    """A generated case: ``image`` (int16 HU), ``label`` (uint8 nodule mask), ``lung_mask`` (bool: lung
    parenchyma with its vessels and nodules, airways excluded), ``vessel_mask`` (bool: pulmonary vessels
    inside the lungs), geometry and the nodule list."""

    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    origin_lps: tuple[float, float, float]
    nodules: list[Nodule]
    seed: int
    lung_mask: np.ndarray
    vessel_mask: np.ndarray

    def affine_lps(self) -> np.ndarray:
        """4x4 matrix mapping voxel indices ``(i, j, k, 1)`` to LPS millimetres."""
        return lps_affine(self.spacing, self.origin_lps)

    def affine_ras(self) -> np.ndarray:
        """4x4 matrix mapping voxel indices to RAS millimetres (NIfTI convention)."""
        return ras_affine(self.spacing, self.origin_lps)


def _distance_to_pleura(grid: Grid, lung: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coarse distance-to-pleura map (mm) of 2x2 in-plane blocks that are entirely lung (conservative),
    with the LPS centre of block ``(0, 0, 0)`` and the block size (mm)."""
    factor = max(1, int(2.0 // grid.spacing[0]))
    nx, ny = (grid.shape[0] // factor) * factor, (grid.shape[1] // factor) * factor
    coarse = lung[:nx, :ny].reshape(nx // factor, factor, ny // factor, factor, -1).all(axis=(1, 3))
    sampling = (grid.spacing[0] * factor, grid.spacing[1] * factor, grid.spacing[2])
    block = np.array(sampling)
    offset = np.array([grid.x[0], grid.y[0], grid.z[0]]) + (block - np.array(grid.spacing)) / 2
    # Crop to the lungs' bounding box (one empty voxel around) before the distance transform.
    dist = np.zeros(coarse.shape)
    if coarse.any():
        box = ndi.find_objects(coarse.astype(np.uint8))[0]
        box = tuple(slice(max(0, b.start - 1), b.stop + 1) for b in box)
        dist[box] = ndi.distance_transform_edt(np.pad(coarse[box], 1), sampling=sampling)[1:-1, 1:-1, 1:-1]
    return dist, offset, block


def _place_nodules(rng: np.random.Generator, grid: Grid, spec: PhantomSpec, lung: np.ndarray
                   ) -> list[tuple[NoduleShape, str]]:
    """Sample nodule kinds, shapes and sizes and place them inside the lungs without overlap."""
    n = int(rng.integers(spec.n_nodules[0], spec.n_nodules[1] + 1))
    d_lo, d_hi = spec.effective_diameter_mm
    margin = max(2.0, grid.edge_mm)
    dist, offset, block = _distance_to_pleura(grid, lung)
    placed: list[tuple[NoduleShape, str]] = []
    for _ in range(n):
        kind = spec.kinds[int(rng.integers(len(spec.kinds)))]
        shape = spec.shapes[int(rng.integers(len(spec.shapes)))]
        diameter = float(rng.uniform(d_lo, d_hi))
        nodule = None
        while nodule is None:
            nodule = _try_place(rng, grid, lung, dist, offset, block, diameter, shape, margin, placed)
            if nodule is None:
                if diameter <= d_lo + 1e-9:
                    raise Code.PHANTOM_NODULE_PLACEMENT(
                        f"cannot fit {n} nodules of {spec.nodule_diameter_mm} mm in the lungs of a "
                        f"{spec.shape} grid at {spec.spacing} mm; use fewer or smaller nodules or a larger "
                        "field of view")
                diameter = max(d_lo, diameter * 0.85)
        placed.append((nodule, kind))
    return placed


def _try_place(rng: np.random.Generator, grid: Grid, lung: np.ndarray, dist: np.ndarray, offset: np.ndarray,
               block: np.ndarray, diameter: float, shape: str, margin: float,
               placed: list[tuple[NoduleShape, str]]) -> NoduleShape | None:
    """Up to 30 attempts to place one nodule; None when it does not fit."""
    gap = grid.voxel_diagonal + 1.0  # between two nodules, so that their labels never touch
    probe = NoduleShape(rng, np.zeros(3), diameter, shape)
    need = probe.max_radius + margin  # candidates only: the exact check below decides
    candidates = np.flatnonzero(dist >= need)
    for _ in range(30 if candidates.size else 0):
        i, j, k = np.unravel_index(candidates[int(rng.integers(candidates.size))], dist.shape)
        center = offset + block * (i, j, k) + rng.uniform(-0.5, 0.5, 3) * block
        if diameter < grid.voxel_diagonal / 0.75:  # too small to surely cover a voxel centre: centre on one
            center = np.round((center - grid.origin) / grid.spacing) * grid.spacing + grid.origin
        if any(np.linalg.norm(center - other.center) < probe.max_radius + other.max_radius + gap
               for other, _ in placed):
            continue
        probe.center = center
        reach = probe.max_radius + margin
        lo, hi = center - reach, center + reach
        if (lo < grid.origin).any() or (hi > (grid.x[-1], grid.y[-1], grid.z[-1])).any():
            continue
        box = grid.box(lo, hi)
        if lung[box][probe.signed_distance(grid, box) <= margin].all():
            return probe
    return None


def _render_nodules(rng: np.random.Generator, grid: Grid, image: np.ndarray, label: np.ndarray,
                    placed: list[tuple[NoduleShape, str]]) -> list[tuple[Box, np.ndarray]]:
    """Blend nodules into ``image`` with partial-volume edges; return each nodule's (box, mask)."""
    out = []
    for nodule, kind in placed:
        box = grid.box(nodule.center - nodule.max_radius - grid.edge_mm,
                       nodule.center + nodule.max_radius + grid.edge_mm)
        sd = nodule.signed_distance(grid, box)
        weight, value = nodule_density(rng, grid, nodule, box, sd, kind, grid.edge_mm)
        blend_nodule(image, box, weight, value, kind)
        mask = sd <= 0
        label[box] |= mask
        out.append((box, mask))
    return out


def generate_phantom(seed: int, spec: PhantomSpec | None = None) -> PhantomCase:
    """Generate one synthetic chest-CT case; the same ``seed`` and ``spec`` give identical arrays.

    Raises :class:`~medpipe.errors.DataGenerationError` (``PHANTOM_INVALID_SEED``) for a seed that is not
    a non-negative integer and (``PHANTOM_NODULE_PLACEMENT``) when the nodules cannot fit in the lungs.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise Code.PHANTOM_INVALID_SEED(f"seed={seed!r} must be a non-negative integer")
    spec = PhantomSpec() if spec is None else spec
    grid = Grid(spec.shape, spec.spacing)
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(5)]
    anatomy_rng, texture_rng, vessel_rng, nodule_rng, noise_rng = streams
    thorax = Thorax(anatomy_rng, grid)
    classes, roots = build_anatomy(grid, thorax, spec.table)
    lung = classes == LUNG

    image = HU[classes]
    image += TEXTURE[classes] * smooth_field(texture_rng, grid, 6.0)
    # denser posteriorly (gravity)
    dependent = 25 * np.clip((grid.y - thorax.center_y) / thorax.half_depth, -1, 1).astype(np.float32)
    image += np.where(lung, dependent[None, :, None], np.float32(0))
    vessel_fraction = paint_vessels(vessel_rng, grid, lung, roots, grid.edge_mm)
    image += vessel_fraction * (np.float32(40) - image)
    vessel_mask = vessel_fraction >= 0.5

    label = np.zeros(grid.shape, bool)
    placed = _place_nodules(nodule_rng, grid, spec, lung)
    regions = _render_nodules(nodule_rng, grid, image, label, placed)
    if spec.noise_hu > 0:
        image += correlated_noise(noise_rng, grid.shape, spec.noise_hu)
    image_hu = to_hu_int16(image)
    if spec.outside_scan_hu is not None:  # the reconstruction circle: the scanner's padding value outside
        radius = max(grid.fov[0], grid.fov[1]) / 2
        outside = grid.x[:, None] ** 2 + grid.y[None, :] ** 2 > radius**2
        image_hu[outside] = np.int16(spec.outside_scan_hu)

    nodules = []
    for (nodule, kind), (box, mask) in zip(placed, regions, strict=True):
        if not mask.any():  # guaranteed by the diameter clamp / centring; a bug if it happens
            raise AssertionError(f"nodule at {nodule.center} has no labelled voxel")
        nodules.append(Nodule(tuple(round(float(c), 3) for c in nodule.center), round(2 * nodule.radius, 3),
                              kind, nodule.shape, round(float(image_hu[box][mask].mean()), 1)))
    return PhantomCase(image=image_hu, label=label.astype(np.uint8), spacing=tuple(map(float, grid.spacing)),
                       origin_lps=tuple(float(o) for o in grid.origin), nodules=nodules, seed=int(seed),
                       lung_mask=lung, vessel_mask=vessel_mask)
