"""Deterministic synthetic chest-CT phantoms with labelled lung nodules.

The embedded demo data of the lung-nodule bundle: every case is generated from an integer seed, so a
datalist can name cases instead of shipping volumes. A case looks like a chest CT in a lung window:
body with skin, subcutaneous fat and muscle, two lungs (the left one smaller, because of the heart)
tapering to the apex, diaphragm domes at the bottom, mediastinum with heart, aorta, pulmonary arteries
and veins, trachea splitting into bronchi, branching pulmonary vessels (the confounders a model must
learn to ignore), ribs, sternum, spine and a patient table. Nodules are solid, part-solid or
ground-glass, smooth or lobulated, with partial-volume edges; the label holds exactly the voxels whose
centre lies inside a nodule surface.

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

from medpipe.errors import Code, DataGenerationError

__all__ = ["NODULE_KINDS", "NODULE_SHAPES", "Nodule", "PhantomCase", "PhantomSpec", "generate_phantom"]

NODULE_KINDS = ("solid", "part-solid", "ground-glass")
NODULE_SHAPES = ("smooth", "lobulated")
HU_MIN, HU_MAX = -1024, 3071

# Tissue classes of the noiseless phantom and their HU (mean, texture amplitude).
(AIR, SKIN, FAT, MUSCLE, MED_FAT, LUNG, HEART, BLOOD, LUMEN, WALL, LIVER, SPLEEN, CORTEX, MARROW,
 DISC, CANAL, CARTILAGE, TABLE_SHELL, TABLE_CORE, ESOPHAGUS) = range(20)
_HU = np.array([-1000, 30, -100, 45, -90, -850, 40, 40, -990, 40, 55, 45, 850, 260, 80, 20, 120, 250, -850,
                35], np.float32)
_TEXTURE = np.array([0, 4, 10, 8, 10, 18, 5, 4, 0, 6, 6, 6, 60, 45, 6, 4, 12, 10, 10, 6], np.float32)


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
    drawn (uniformly); ``table`` adds a patient table under the back.
    """

    shape: tuple[int, int, int] = (384, 320, 56)
    spacing: tuple[float, float, float] = (0.8, 0.8, 2.5)
    n_nodules: tuple[int, int] = (1, 4)
    nodule_diameter_mm: tuple[float, float] = (4.0, 30.0)
    noise_hu: float = 20.0
    kinds: tuple[str, ...] = NODULE_KINDS
    shapes: tuple[str, ...] = NODULE_SHAPES
    table: bool = True

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
        affine = np.diag([*self.spacing, 1.0])
        affine[:3, 3] = self.origin_lps
        return affine

    def affine_ras(self) -> np.ndarray:
        """4x4 matrix mapping voxel indices to RAS millimetres (NIfTI convention)."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine_lps()


class _Grid:
    """Voxel-centre coordinates (LPS mm) of a volume centred on the origin."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> None:
        self.shape, self.spacing = shape, spacing
        self.origin = tuple(-(n - 1) / 2 * s for n, s in zip(shape, spacing, strict=True))
        self.x, self.y, self.z = (o + s * np.arange(n)
                                  for o, s, n in zip(self.origin, spacing, shape, strict=True))
        self.fov = tuple(n * s for n, s in zip(shape, spacing, strict=True))
        self.zbot, self.height = float(self.z[0]), float(self.z[-1] - self.z[0])
        self.t = (self.z - self.zbot) / self.height  # 0 at the bottom slice, 1 at the top
        self.diag = math.dist(spacing, (0, 0, 0))

    def bbox(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index slices of the voxels whose centres lie in the box ``[lo, hi]`` (mm), or None."""
        out = []
        for ax in range(3):
            i0 = max(0, math.ceil((lo[ax] - self.origin[ax]) / self.spacing[ax]))
            i1 = min(self.shape[ax], math.floor((hi[ax] - self.origin[ax]) / self.spacing[ax]) + 1)
            if i0 >= i1:
                return None
            out.append(slice(i0, i1))
        return tuple(out)  # type: ignore[return-value]

    def local(self, sl: tuple[slice, slice, slice], center: np.ndarray) -> list[np.ndarray]:
        """Broadcastable float32 coordinates of a box relative to ``center``."""
        axes = (self.x, self.y, self.z)
        shapes = [[-1 if b == a else 1 for b in range(3)] for a in range(3)]
        return [(axes[a][sl[a]] - center[a]).astype(np.float32).reshape(shapes[a]) for a in range(3)]


def _capsule_sd(g: _Grid, a: np.ndarray, b: np.ndarray, r0: float, r1: float, pad: float = 0.0):
    """Signed distance (mm, <0 inside) to a tapered capsule from ``a`` (radius r0) to ``b`` (r1), on the
    bounding box of the capsule grown by ``pad``. Returns ``(slices, sd)`` or None outside the volume."""
    rmax = max(r0, r1) + pad
    sl = g.bbox(np.minimum(a, b) - rmax, np.maximum(a, b) + rmax)
    if sl is None:
        return None
    px, py, pz = g.local(sl, a)
    d = (b - a).astype(np.float32)
    length2 = float(d @ d)
    if length2 < 1e-9:
        return sl, np.sqrt(px * px + py * py + pz * pz) - np.float32(r0)
    t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / np.float32(length2), 0.0, 1.0)
    dist = np.sqrt((px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (pz - t * d[2]) ** 2)
    return sl, dist - (np.float32(r0) + t * np.float32(r1 - r0))


def _paint_polyline(cls: np.ndarray, g: _Grid, points: np.ndarray, radii: np.ndarray, value: int,
                    allowed: np.ndarray) -> None:
    """Set ``cls`` to ``value`` inside a tube along ``points`` where the current class is ``allowed``."""
    for p, q, r0, r1 in zip(points[:-1], points[1:], radii[:-1], radii[1:], strict=True):
        hit = _capsule_sd(g, p, q, float(r0), float(r1))
        if hit is not None:
            sl, sd = hit
            view = cls[sl]
            view[(sd <= 0) & allowed[view]] = value


def _smooth_field(rng: np.random.Generator, g: _Grid, corr_mm: float) -> np.ndarray:
    """Zero-mean low-frequency random field (~unit std, float32): smoothed knots every ``corr_mm``,
    linearly interpolated axis by axis (pure numpy, bit-reproducible)."""
    axes = (g.x, g.y, g.z)
    nknots = [max(3, math.ceil((c[-1] - c[0]) / corr_mm) + 3) for c in axes]
    field = ndi.gaussian_filter(rng.standard_normal(nknots), 0.7, mode="wrap")
    field = (field / field.std()).astype(np.float32)
    for ax in (2, 1, 0):  # the largest expansion last, along the contiguous axis
        c = axes[ax]
        knots = np.linspace(c[0] - corr_mm, c[-1] + corr_mm, nknots[ax])
        pos = (c - knots[0]) / (knots[1] - knots[0])
        idx = np.clip(np.floor(pos).astype(np.intp), 0, nknots[ax] - 2)
        shape = [-1 if b == ax else 1 for b in range(3)]
        w = (pos - idx).astype(np.float32).reshape(shape)
        field = np.take(field, idx, axis=ax) * (1 - w) + np.take(field, idx + 1, axis=ax) * w
    return field


def _ray_radius(dx: np.ndarray, dy: np.ndarray, a: np.ndarray, b: np.ndarray, px: float,
                py: np.ndarray) -> np.ndarray:
    """Distance from the centre to a superellipse ``|x/a|^px + |y/b|^py = 1`` along unit directions."""
    lo, hi = np.zeros_like(dx), np.maximum(a, b) * 1.01
    for _ in range(40):
        mid = (lo + hi) / 2
        inside = np.abs(mid * dx / a) ** px + np.abs(mid * dy / b) ** py <= 1
        lo, hi = np.where(inside, mid, lo), np.where(inside, hi, mid)
    return lo


class _Thorax:
    """Per-case anatomical parameters; body and cavity sizes are functions of ``t`` (0 bottom, 1 top)."""

    def __init__(self, rng: np.random.Generator, g: _Grid) -> None:
        fov_x, fov_y, _ = g.fov
        u = rng.uniform
        self.a0 = 0.44 * fov_x * u(0.92, 1.02)
        self.b0 = min(0.39 * fov_y, 0.76 * self.a0 * u(0.94, 1.04))
        self.s = self.a0 / 140.0  # anatomical scale relative to an adult chest (~280 mm wide)
        self.yb = -0.03 * fov_y
        self.phase = u(0, 2 * np.pi, 4)
        self.fat0 = u(5.0, 18.0) * self.s
        self.wall = (11 * self.s, 13 * self.s, 28 * self.s)  # lateral, anterior, posterior muscle (mm)
        self.t_apex = u(1.0, 1.08)
        self.dome = (u(0.14, 0.24), u(0.08, 0.16))  # right/left dome height (fraction of z extent)
        self.carina = u(0.55, 0.62)
        self.rib_phase = u(0, 1)
        self.heart = (u(0.10, 0.18), u(-0.28, -0.16), u(0.12, 0.24), u(0.9, 1.1), np.deg2rad(u(-50, -30)))

    def body(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Body semi-axes (a, b) and subcutaneous fat thickness at heights ``t``."""
        p = self.phase
        a = self.a0 * (1 - 0.08 * t**2 + 0.012 * np.sin(2 * np.pi * 1.3 * t + p[0]))
        b = self.b0 * (1 - 0.04 * t**2 + 0.012 * np.sin(2 * np.pi * 1.1 * t + p[1]))
        fat = self.fat0 * (1 + 0.12 * np.sin(2 * np.pi * 0.8 * t + p[2]))
        return a, b, fat

    def cavity(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Thoracic cavity half-width, half-depth and centre y at heights ``t``."""
        a, b, fat = self.body(t)
        lat, ant, post = self.wall
        y_ant = self.yb - b + 1.5 + fat + ant
        y_post = self.yb + b - 1.5 - fat - post
        return a - 1.5 - fat - lat, (y_post - y_ant) / 2, (y_post + y_ant) / 2


def _superellipse(g: _Grid, cy: np.ndarray, ax: np.ndarray, ay: np.ndarray, px: float, py_ant: float,
                  py_post: float) -> np.ndarray:
    """3-D mask of per-slice superellipses centred on (0, cy) with semi-axes (ax, ay)."""
    fx = (np.abs(g.x[:, None]) / ax) ** px
    dy = g.y[:, None] - cy
    fy = np.abs(dy / ay) ** np.where(dy < 0, py_ant, py_post)
    return (fx[:, None, :] + fy[None, :, :]) <= 1.0


def _build_anatomy(g: _Grid, th: _Thorax, table: bool):
    """Tissue-class volume (uint8) and the hilar roots of the pulmonary vessel trees."""
    t = g.t
    s = th.s
    a, b, fat = th.body(t)
    ac, bc, cyc = th.cavity(t)
    cls = np.zeros(g.shape, np.uint8)
    cls[_superellipse(g, th.yb, a, b, 2.2, 2.0, 3.2)] = SKIN
    cls[_superellipse(g, th.yb, a - 1.5, b - 1.5, 2.2, 2.0, 3.2)] = FAT
    cls[_superellipse(g, th.yb, a - 1.5 - fat, b - 1.5 - fat, 2.2, 2.0, 3.2)] = MUSCLE
    cavity = _superellipse(g, cyc, ac, bc, 2.3, 2.2, 2.8)
    cls[cavity] = MED_FAT

    acm, bcm, cycm = (float(v) for v in th.cavity(np.array(0.5)))

    def pt(uu: float, vv: float, tz: float) -> np.ndarray:
        return np.array([uu * acm, cycm + vv * bcm, g.zbot + tz * g.height])

    # Spine geometry (used to carve the lungs and painted last).
    rvx, rvy = 19 * s, 15 * s
    yv = cycm + bcm - rvy - 2 * s
    X2, Y2 = g.x[:, None], g.y[None, :]
    spine_excl = (((X2 / (rvx + 4 * s)) ** 2 + ((Y2 - yv) / (rvy + 4 * s)) ** 2 <= 1)
                  | ((np.abs(X2) < rvx + 4 * s) & (Y2 > yv)))

    # Lungs: cavity minus mediastinum, spine, diaphragm domes; tapering to the apex.
    xm = 0.02 * acm
    depth = np.clip((g.y[:, None] - (cyc - bc)) / (2 * bc), 0, 1)  # (ny, nz) 0 anterior .. 1 posterior
    top = np.clip((t - 0.6) / 0.25, 0, 1)
    bulge = 0.05 * np.exp(-(((depth - 0.4) / 0.18) ** 2))  # great vessels in front of the trachea
    hw = ac * (0.04 + 0.14 * depth**0.7 + bulge + 0.07 * top * top * (3 - 2 * top))
    band = np.abs(g.x - xm)[:, None, None] < hw[None, :, :]
    lung = cavity & ~band & ~spine_excl[:, :, None]
    for side in (-1, 1):
        sx = g.x[:, None] * side > 0  # this side
        r = 1.6 * np.sqrt(np.clip((th.t_apex - t) / (th.t_apex - 0.5), 0, 1))
        fx = ((g.x[:, None] - side * 0.40 * ac) / (0.60 * ac * r + 1e-6)) ** 2
        fy = ((g.y[:, None] - cyc - 0.25 * bc) / (0.80 * bc * r + 1e-6)) ** 2
        apex = (fx[:, None, :] + fy[None, :, :]) <= 1
        lung &= apex | ~sx[:, :, None]
    xd = g.x[:, None]
    right = xd < xm
    h = np.where(right, th.dome[0], th.dome[1])
    dome_z = g.zbot + g.height * (h - 0.6 * ((np.abs(xd) - 0.45 * acm) / acm) ** 2
                                  - 0.25 * ((g.y[None, :] - cycm + 0.1 * bcm) / bcm) ** 2)
    below = g.z[None, None, :] < dome_z[:, :, None]
    lung &= ~below
    cls[lung] = LUNG
    abdomen = below & cavity & ~band & ~spine_excl[:, :, None]
    cls[abdomen & right[:, :, None]] = LIVER
    cls[abdomen & ~right[:, :, None]] = SPLEEN

    # Heart: a tilted ellipsoid, wrapped in pericardial fat, sitting left of the midline.
    uh, vh, tzh, size, ang = th.heart
    centre = pt(uh, vh, tzh)
    semi = np.array([0.42 * acm, 0.32 * acm, 0.34 * g.height]) * size
    for grow, value in ((4 * s, MED_FAT), (0.0, HEART)):
        sl = g.bbox(centre - semi.max() - grow, centre + semi.max() + grow)
        if sl is None:
            continue
        px, py, pz = g.local(sl, centre)
        c, sn = np.float32(np.cos(ang)), np.float32(np.sin(ang))
        q1, q2 = px * c + py * sn, -px * sn + py * c
        inside = ((q1 / (semi[0] + grow)) ** 2 + (q2 / (semi[1] + grow)) ** 2
                  + (pz / (semi[2] + grow)) ** 2) <= 1
        view = cls[sl]
        view[inside & (view != AIR) & cavity[sl]] = value

    # Great vessels, oesophagus and airways (tubes), carving the lungs.
    soft = np.zeros(32, bool)
    soft[[MED_FAT, LUNG, HEART, LIVER, SPLEEN]] = True
    rtr = 8 * s
    vtr = (yv - rvy - 10 * s - rtr - cycm) / bcm
    tc = th.carina
    tubes = [  # (points in cavity units (u, v, t), radii in mm)
        ([(0.05, -0.25, 0.25), (-0.05, -0.40, 0.62), (0.04, -0.15, 0.80), (0.24, 0.28, 0.78),
          (0.24, 0.48, 0.62), (0.24, 0.50, -0.2)], [13, 13, 12, 11, 10.5, 10.5]),  # aorta
        ([(0.15, -0.30, 0.30), (0.12, -0.28, 0.50), (0.08, -0.05, tc - 0.04)], [12, 12, 11]),  # PA trunk
        ([(0.08, -0.05, tc - 0.04), (-0.10, 0.02, tc - 0.07), (-0.30, 0.05, tc - 0.10)], [9, 9, 7]),
        ([(0.08, -0.05, tc - 0.04), (0.25, 0.05, tc - 0.02), (0.33, 0.22, tc - 0.08)], [9, 8.5, 7]),
        ([(0.02, 0.05, 0.30), (-0.30, -0.05, tc - 0.25)], [8, 6.5]),  # right pulmonary veins
        ([(0.10, 0.05, 0.30), (0.34, 0.05, tc - 0.28)], [8, 6.5]),  # left pulmonary veins
        ([(-0.22, -0.25, 1.2), (-0.18, -0.20, 0.45)], [9, 9]),  # superior vena cava
    ]
    for pts, radii in tubes:
        _paint_polyline(cls, g, np.array([pt(*p) for p in pts]), np.array(radii) * s, BLOOD, soft)
    oes = np.array([pt(0.04, vtr + (rtr + 7 * s) / bcm, 1.2), pt(0.08, vtr + (rtr + 5 * s) / bcm, -0.2)])
    _paint_polyline(cls, g, oes, np.array([6.0, 6.0]) * s, ESOPHAGUS, soft)
    carina = pt(0, vtr, tc)
    rmain, lmain = pt(-0.24, vtr + 0.05, tc - 0.08), pt(0.28, vtr + 0.10, tc - 0.14)
    inter = pt(-0.27, vtr + 0.08, tc - 0.18)
    airways = [  # (from, to, radius mm)
        (pt(0, vtr, 1.2), carina, 8.0), (carina, rmain, 6.0), (carina, lmain, 5.5),
        (rmain, pt(-0.45, vtr, tc - 0.02), 3.8), (rmain, inter, 5.0),
        (inter, pt(-0.45, vtr - 0.35, tc - 0.26), 3.2),
        (inter, pt(-0.40, vtr + 0.25, tc - 0.42), 4.0), (lmain, pt(0.45, vtr - 0.2, tc - 0.06), 4.0),
        (lmain, pt(0.45, vtr + 0.3, tc - 0.40), 4.0),
    ]
    soft[[BLOOD, ESOPHAGUS]] = True
    wall_mm = max(2.0 * s, 0.6 * min(g.spacing[:2]))
    for extra, value in ((wall_mm, WALL), (0.0, LUMEN)):
        allowed = soft.copy()
        allowed[WALL] = value == LUMEN
        for p, q, r in airways:
            _paint_polyline(cls, g, np.array([p, q]), np.array([r, r]) * s + extra, value, allowed)

    _paint_bones(cls, g, th, yv, rvx, rvy)
    if table:
        _paint_table(cls, g, th)
    roots = {"artery": (pt(-0.30, 0.05, tc - 0.10), pt(0.33, 0.22, tc - 0.08)),
             "vein": (pt(-0.30, -0.05, tc - 0.25), pt(0.34, 0.05, tc - 0.28))}
    return cls, roots


def _paint_bones(cls: np.ndarray, g: _Grid, th: _Thorax, yv: float, rvx: float, rvy: float) -> None:
    """Spine (vertebral bodies, discs, canal, posterior elements), sternum and ribs."""
    s, t = th.s, g.t
    cortex = max(1.2 * s, 0.5 * min(g.spacing[:2]))
    pitch = 0.13 * g.height
    phase = ((g.z - g.zbot) / pitch + th.rib_phase) % 1.0
    X2, Y2 = g.x[:, None], g.y[None, :]
    yc = yv + rvy + 1.5 * s + 7 * s  # spinal canal centre
    ell = lambda cx, cy, rx, ry: ((X2 - cx) / rx) ** 2 + ((Y2 - cy) / ry) ** 2 <= 1  # noqa: E731
    body_o, body_i = ell(0, yv, rvx, rvy), ell(0, yv, rvx - cortex, rvy - cortex)
    canal = ell(0, yc, 7 * s, 7 * s)
    arch_o = ell(0, yc, 11.5 * s, 11.5 * s) | ell(0, yc + 15 * s, 3.5 * s, 7 * s)
    arch_o |= ell(-20 * s, yc - 2 * s, 13 * s, 4 * s) | ell(20 * s, yc - 2 * s, 13 * s, 4 * s)
    arch_i = ndi.binary_erosion(arch_o, iterations=max(1, round(cortex / g.spacing[0]))) & ~canal
    for k in range(g.shape[2]):
        sl = cls[:, :, k]
        if phase[k] < 0.16:
            sl[body_o] = DISC
        else:
            sl[body_o] = CORTEX
            sl[body_i] = MARROW
        if 0.3 < phase[k] < 0.85:
            sl[arch_o & ~canal] = CORTEX
            sl[arch_i] = MARROW
        sl[canal] = CANAL
        # Sternum in the anterior chest wall.
        ac, bc, cyc = th.cavity(t[k])
        ys = cyc - bc - 6 * s
        sl[ell(0, ys, 14 * s, 5.5 * s)] = CORTEX
        sl[ell(0, ys, 14 * s - cortex, 5.5 * s - cortex)] = MARROW
        # Scapulae: thin curved blades behind the ribs in the upper chest.
        if t[k] > 0.45:
            dy = Y2 - cyc
            angle = np.abs(np.arctan2(X2, dy))  # 0 posterior midline .. pi anterior
            blade = (angle > 0.14 * np.pi) & (angle < (0.30 + 0.08 * min(1.0, (t[k] - 0.45) * 4)) * np.pi)
            level = [np.abs(X2 / (ac + d)) ** 2.3 + np.abs(dy / (bc + d)) ** np.where(dy < 0, 2.2, 2.8)
                     for d in (12 * s, 12 * s + max(3.5 * s, g.spacing[0]))]
            sl[blade & (level[0] > 1) & (level[1] <= 1) & (dy > 0)] = CORTEX
    # Ribs: tubes around the chest wall, descending from the spine towards the sternum.
    theta = np.linspace(0.10 * np.pi, 0.90 * np.pi, 17)
    frac = (theta - theta[0]) / (theta[-1] - theta[0])
    r_rib = 3.6 * s
    drop = 4.0 * pitch
    heads = g.zbot + pitch * (np.arange(-1, math.ceil((g.height + drop) / pitch) + 2) - th.rib_phase)
    cort_tubes, marrow_tubes, cart_tubes = [], [], []
    for zh in heads:
        z = zh - drop * frac**1.1
        tz = np.clip((z - g.zbot) / g.height, 0, 1)
        ac, bc, cyc = th.cavity(tz)
        for side in (-1.0, 1.0):
            dx, dy = side * np.sin(theta), np.cos(theta)
            rho = _ray_radius(dx, dy, ac, bc, 2.3, np.where(dy < 0, 2.2, 2.8)) + r_rib + 1.5 * s
            pts = np.stack([rho * dx, cyc + rho * dy, z], axis=1)
            bone = frac <= 0.72
            cort_tubes.append(pts[bone])
            marrow_tubes.append(pts[bone])
            cart_tubes.append(pts[frac >= 0.70])
    anything = np.ones(32, bool)
    for tubes, radius, value in ((cart_tubes, r_rib * 0.9, CARTILAGE), (cort_tubes, r_rib, CORTEX),
                                 (marrow_tubes, r_rib - cortex, MARROW)):
        for pts in tubes:
            _paint_polyline(cls, g, pts, np.full(len(pts), radius), value, anything)


def _paint_table(cls: np.ndarray, g: _Grid, th: _Thorax) -> None:
    """Curved carbon-fibre table (two shells around a foam core) under the patient's back."""
    y_top = th.yb + float(np.min(th.body(g.t)[1])) + 3.0
    x = g.x[:, None]
    lift = 14 * th.s * (x / (0.45 * g.fov[0])) ** 2
    depth = g.y[None, :] - (y_top - lift)
    width = np.abs(x) < 0.42 * g.fov[0]
    sh = max(1.5, g.spacing[1])  # shells at least one row thick
    thick = max(9 * th.s, 3 * sh + 1)
    shell = width & (((depth >= 0) & (depth < sh)) | ((depth >= thick - sh) & (depth < thick)))
    core = width & (depth >= sh) & (depth < thick - sh)
    for mask, value in ((shell, TABLE_SHELL), (core, TABLE_CORE)):
        cls[mask[:, :, None] & (cls == AIR)] = value


def _vessel_tree(rng: np.random.Generator, root: np.ndarray, targets: np.ndarray, r_leaf: float):
    """Space-filling branching tree from ``root`` to ``targets``: each branch heads part-way to the
    centroid of the targets it serves, then splits them in two across its direction. Radius follows
    Murray's law, ``r = r_leaf * n ** (1/3)`` for a branch serving ``n`` targets."""
    segments = []
    stack = [(root, np.arange(len(targets)))]
    while stack:
        p, idx = stack.pop()
        pts = targets[idx]
        r = r_leaf * len(idx) ** (1 / 3)
        if len(idx) == 1:
            segments.append((p, pts[0], r_leaf, 0.8 * r_leaf))
            continue
        c = pts.mean(axis=0)
        e = p + rng.uniform(0.3, 0.5) * (c - p)
        segments.append((p, e, r, r))
        d = c - p
        d = d / (np.linalg.norm(d) + 1e-9)
        rel = pts - c
        rel = rel - np.outer(rel @ d, d)
        cov = rel.T @ rel
        axis = np.linalg.eigh(cov)[1][:, -1]
        axis = axis if axis[np.argmax(np.abs(axis))] > 0 else -axis  # eigenvector sign is arbitrary
        proj = rel @ axis
        order = np.argsort(proj, kind="stable")
        cut = min(len(idx) - 1, max(1, round(len(idx) * rng.uniform(0.3, 0.7))))
        stack.append((e, idx[order[cut:]]))
        stack.append((e, idx[order[:cut]]))
    return segments


def _paint_vessels(rng: np.random.Generator, g: _Grid, lung: np.ndarray, roots: dict, ramp: float
                   ) -> np.ndarray:
    """Partial-volume fraction (float32) of the pulmonary vessels, restricted to the lungs."""
    frac = np.zeros(g.shape, np.float32)
    sub = lung[::2, ::2, :]
    for side, lung_side in ((0, g.x[::2] < 0), (1, g.x[::2] > 0)):
        flat = np.flatnonzero(sub & lung_side[:, None, None])
        if flat.size == 0:
            continue
        for kind in ("artery", "vein"):
            n = int(rng.integers(180, 240))
            pick = np.sort(rng.choice(flat.size, size=min(n, flat.size), replace=False))
            i, j, k = np.unravel_index(flat[pick], sub.shape)
            targets = np.stack([g.x[::2][i], g.y[::2][j], g.z[k]], axis=1)
            targets += rng.uniform(-0.5, 0.5, targets.shape) * np.array(g.spacing) * (2, 2, 1)
            for p, q, r0, r1 in _vessel_tree(rng, roots[kind][side], targets, 0.85):
                hit = _capsule_sd(g, p, q, r0, r1, pad=ramp)
                if hit is not None:
                    sl, sd = hit
                    np.maximum(frac[sl], np.clip(0.5 - sd / np.float32(ramp), 0, 1), out=frac[sl])
    frac *= lung
    return frac


class _NoduleShape:
    """A star-shaped nodule surface ``radius(direction)`` in a randomly rotated local frame."""

    def __init__(self, rng: np.random.Generator, center: np.ndarray, diameter: float, shape: str) -> None:
        self.center, self.shape, self.r = center, shape, diameter / 2
        q = rng.standard_normal(4)
        w, x, y, z = q / np.linalg.norm(q)
        self.rot = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                             [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                             [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
        if shape == "smooth":
            f = rng.uniform(0.8, 1.2, 3)
            self.axes = self.r * f / np.cbrt(np.prod(f))  # same volume as the nominal sphere
            self.rmin, self.rmax = float(self.axes.min()), float(self.axes.max())
        else:
            self.coef = rng.standard_normal(16)
            self.amp = rng.uniform(0.10, 0.25)
            n = np.arange(2000) + 0.5
            phi, cos_t = np.pi * (1 + 5**0.5) * n, 1 - 2 * n / 2000
            sin_t = np.sqrt(1 - cos_t**2)
            probe = self._harmonics(sin_t * np.cos(phi), sin_t * np.sin(phi), cos_t)
            self.norm = float(np.abs(probe).max())
            self.rmin, self.rmax = self.r * (1 - self.amp), self.r * (1 + self.amp)

    def _harmonics(self, x, y, z):
        """Random combination of the real spherical harmonics of degrees 3 and 4 (3-4 lobes around)."""
        x2, y2, z2 = x * x, y * y, z * z
        basis = (x * (x2 - 3 * y2), y * (3 * x2 - y2), z * (x2 - y2), x * y * z, x * (5 * z2 - 1),
                 y * (5 * z2 - 1), z * (5 * z2 - 3), x * y * (x2 - y2), x2 * x2 - 6 * x2 * y2 + y2 * y2,
                 y * z * (3 * x2 - y2), x * z * (x2 - 3 * y2), x * y * (7 * z2 - 1), (x2 - y2) * (7 * z2 - 1),
                 y * z * (7 * z2 - 3), x * z * (7 * z2 - 3), 35 * z2 * z2 - 30 * z2 + 3)
        return sum(np.float32(c) * f for c, f in zip(self.coef, basis, strict=True))

    def signed_distance(self, g: _Grid, sl: tuple[slice, slice, slice], scale: float = 1.0) -> np.ndarray:
        """Radial signed distance (mm, <0 inside) to the surface scaled by ``scale``, on box ``sl``."""
        p = g.local(sl, self.center)
        rot = self.rot.astype(np.float32)
        q = [p[0] * rot[0, a] + p[1] * rot[1, a] + p[2] * rot[2, a] for a in range(3)]
        rho = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2)
        inv = 1 / np.maximum(rho, np.float32(1e-6))
        n = [qa * inv for qa in q]
        if self.shape == "smooth":
            ax = self.axes.astype(np.float32)
            inv_r2 = (n[0] / ax[0]) ** 2 + (n[1] / ax[1]) ** 2 + (n[2] / ax[2]) ** 2
            surf = 1 / np.sqrt(np.maximum(inv_r2, np.float32(1e-12)))  # n = 0 at the very centre
        else:
            surf = np.float32(self.r) * (1 + np.float32(self.amp / self.norm) * self._harmonics(*n))
        return rho - np.float32(scale) * surf


def _place_nodules(rng: np.random.Generator, g: _Grid, spec: PhantomSpec, lung: np.ndarray):
    """Sample nodule kinds, shapes and sizes and place them inside the lungs without overlap."""
    n = int(rng.integers(spec.n_nodules[0], spec.n_nodules[1] + 1))
    d_lo, d_hi = spec.effective_diameter_mm
    margin = max(2.0, float(np.cbrt(np.prod(g.spacing))))
    gap = g.diag + 1.0
    # Coarse distance-to-pleura map: 2x2 in-plane blocks that are entirely lung (conservative).
    f = max(1, int(2.0 // g.spacing[0]))
    nx, ny = (g.shape[0] // f) * f, (g.shape[1] // f) * f
    coarse = lung[:nx, :ny].reshape(nx // f, f, ny // f, f, -1).all(axis=(1, 3))
    sampling = (g.spacing[0] * f, g.spacing[1] * f, g.spacing[2])
    block = np.array(sampling)
    offset = np.array([g.x[0], g.y[0], g.z[0]]) + (block - np.array(g.spacing)) / 2
    # Crop to the lungs' bounding box (one empty voxel around) before the distance transform.
    dist = np.zeros(coarse.shape)
    if coarse.any():
        box = ndi.find_objects(coarse.astype(np.uint8))[0]
        box = tuple(slice(max(0, b.start - 1), b.stop + 1) for b in box)
        dist[box] = ndi.distance_transform_edt(np.pad(coarse[box], 1), sampling=sampling)[1:-1, 1:-1, 1:-1]
    placed: list[tuple[_NoduleShape, str]] = []
    for _ in range(n):
        kind = spec.kinds[int(rng.integers(len(spec.kinds)))]
        shape = spec.shapes[int(rng.integers(len(spec.shapes)))]
        diameter = float(rng.uniform(d_lo, d_hi))
        nod = None
        while nod is None:
            nod = _try_place(rng, g, lung, dist, offset, block, diameter, shape, margin, gap, placed)
            if nod is None:
                if diameter <= d_lo + 1e-9:
                    raise Code.PHANTOM_NODULE_PLACEMENT(
                        f"cannot fit {n} nodules of {spec.nodule_diameter_mm} mm in the lungs of a "
                        f"{spec.shape} grid at {spec.spacing} mm; use fewer or smaller nodules or a larger "
                        "field of view")
                diameter = max(d_lo, diameter * 0.85)
        placed.append((nod, kind))
    return placed


def _try_place(rng, g, lung, dist, offset, block, diameter, shape, margin, gap, placed):
    """Up to 30 attempts to place one nodule; None when it does not fit."""
    probe = _NoduleShape(rng, np.zeros(3), diameter, shape)
    need = probe.rmax + margin  # candidates only: the exact check below decides
    cand = np.flatnonzero(dist >= need)
    for _ in range(30 if cand.size else 0):
        i, j, k = np.unravel_index(cand[int(rng.integers(cand.size))], dist.shape)
        center = offset + block * (i, j, k) + rng.uniform(-0.5, 0.5, 3) * block
        if diameter < g.diag / 0.75:  # too small to be sure to cover a voxel centre: centre on one
            center = np.round((center - g.origin) / g.spacing) * g.spacing + g.origin
        if any(np.linalg.norm(center - o.center) < probe.rmax + o.rmax + gap for o, _ in placed):
            continue
        probe.center = center
        reach = probe.rmax + margin
        lo, hi = center - reach, center + reach
        if (lo < g.origin).any() or (hi > (g.x[-1], g.y[-1], g.z[-1])).any():
            continue
        sl = g.bbox(lo, hi)
        if lung[sl][probe.signed_distance(g, sl) <= margin].all():
            return probe
    return None


def _render_nodules(rng, g, img, label, placed, ramp):
    """Blend nodules into ``img`` with partial-volume edges; return each nodule's (slices, mask)."""
    out = []
    for nod, kind in placed:
        sl = g.bbox(nod.center - nod.rmax - ramp, nod.center + nod.rmax + ramp)
        sd = nod.signed_distance(g, sl)
        tex = ndi.gaussian_filter(rng.standard_normal(sd.shape).astype(np.float32), (1.5, 1.5, 0.7))
        tex /= max(float(tex.std()), 1e-6)
        w = np.clip(0.5 - sd / np.float32(ramp), 0, 1)
        bg = img[sl]
        solid = np.float32(rng.uniform(20, 60)) + 8 * tex
        glass = np.float32(rng.uniform(-680, -520)) + 30 * tex
        if kind == "solid":
            img[sl] = bg + w * (solid - bg)
        else:
            value = glass
            if kind == "part-solid":
                core = nod.signed_distance(g, sl, scale=float(rng.uniform(0.3, 0.6)))
                value = glass + np.clip(0.5 - core / np.float32(ramp), 0, 1) * (solid - glass)
            img[sl] = bg + w * np.maximum(value - bg, 0)  # vessels stay visible through ground glass
        mask = sd <= 0
        label[sl] |= mask
        out.append((sl, mask))
    return out


def _correlated_noise(rng: np.random.Generator, shape: tuple[int, int, int], sigma_hu: float) -> np.ndarray:
    """Gaussian noise of std ``sigma_hu``, correlated in-plane like reconstructed CT noise."""
    sigma = (0.7, 0.7, 0.0)
    noise = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    delta = np.zeros((15, 15, 1), np.float32)
    delta[7, 7, 0] = 1
    gain = float(np.sqrt(np.sum(ndi.gaussian_filter(delta, sigma) ** 2)))
    noise *= np.float32(sigma_hu / gain)
    return noise


def generate_phantom(seed: int, spec: PhantomSpec | None = None) -> PhantomCase:
    """Generate one synthetic chest-CT case; the same ``seed`` and ``spec`` give identical arrays.

    Raises :class:`~medpipe.errors.DataGenerationError` (``PHANTOM_INVALID_SEED``) for a seed that is not
    a non-negative integer and (``PHANTOM_NODULE_PLACEMENT``) when the nodules cannot fit in the lungs.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise Code.PHANTOM_INVALID_SEED(f"seed={seed!r} must be a non-negative integer")
    spec = PhantomSpec() if spec is None else spec
    g = _Grid(spec.shape, spec.spacing)
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(5)]
    anatomy_rng, texture_rng, vessel_rng, nodule_rng, noise_rng = streams
    th = _Thorax(anatomy_rng, g)
    cls, roots = _build_anatomy(g, th, spec.table)
    lung = cls == LUNG

    img = _HU[cls]
    img += _TEXTURE[cls] * _smooth_field(texture_rng, g, 6.0)
    dependent = 25 * np.clip((g.y - th.yb) / th.b0, -1, 1).astype(np.float32)  # denser posteriorly
    img += np.where(lung, dependent[None, :, None], np.float32(0))
    ramp = float(np.cbrt(np.prod(g.spacing)))
    frac = _paint_vessels(vessel_rng, g, lung, roots, ramp)
    img += frac * (np.float32(40) - img)
    vessel_mask = frac >= 0.5

    label = np.zeros(g.shape, bool)
    placed = _place_nodules(nodule_rng, g, spec, lung)
    regions = _render_nodules(nodule_rng, g, img, label, placed, ramp)
    if spec.noise_hu > 0:
        img += _correlated_noise(noise_rng, g.shape, spec.noise_hu)
    image = np.clip(np.rint(img), HU_MIN, HU_MAX).astype(np.int16)

    nodules = []
    for (nod, kind), (sl, mask) in zip(placed, regions, strict=True):
        if not mask.any():  # guaranteed by the diameter clamp / centring; a bug if it happens
            raise AssertionError(f"nodule at {nod.center} has no labelled voxel")
        nodules.append(Nodule(tuple(round(float(c), 3) for c in nod.center), round(2 * nod.r, 3), kind,
                              nod.shape, round(float(image[sl][mask].mean()), 1)))
    return PhantomCase(image=image, label=label.astype(np.uint8), spacing=tuple(map(float, g.spacing)),
                       origin_lps=tuple(float(o) for o in g.origin), nodules=nodules, seed=int(seed),
                       lung_mask=lung, vessel_mask=vessel_mask)
