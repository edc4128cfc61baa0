"""Shape primitives of the synthetic CT generators, in millimetres on a voxel grid.

Shared by the chest phantoms (:mod:`.phantom`, :mod:`.anatomy`) and the nodule crops
(:mod:`.nodule_crops`): the voxel centres of a volume (:class:`Grid`), tapered capsules as signed
distances (:func:`capsule_sdf`: vessels, airways, spicules, calcifications), partial-volume edges
(:func:`partial_volume`), low-frequency tissue texture (:func:`smooth_field`), CT-like correlated noise
(:func:`correlated_noise`) and lung nodules: a star-shaped surface (:class:`NoduleShape`) and the one
renderer of its density (:func:`nodule_density` gives the blend weight and HU value of a solid,
part-solid or ground-glass nodule on a box; :func:`blend_nodule` puts it into the image).

Conventions: coordinates are LPS millimetres, axes ``(i, j, k)`` = (+x left, +y posterior, +z head);
signed distances are in mm and negative inside; fields are float32. Every random number comes from the
``numpy.random.Generator`` passed in, and the order of the draws is part of the recipe: changing it
changes every generated case, so bump the generators' versions (:mod:`.lung_ct`, :mod:`.nodule_crops`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "HU_MAX",
    "HU_MIN",
    "NODULE_KINDS",
    "Box",
    "Grid",
    "NoduleShape",
    "blend_nodule",
    "capsule_sdf",
    "correlated_noise",
    "nodule_density",
    "partial_volume",
    "paint_capsule_fraction",
    "lps_affine",
    "ras_affine",
    "relative_box",
    "smooth_field",
    "to_hu_int16",
]

#: Density kinds of a nodule, as :func:`nodule_density` renders them.
NODULE_KINDS = ("solid", "part-solid", "ground-glass")
#: The int16 HU range a generated image is clipped to.
HU_MIN, HU_MAX = -1024, 3071
#: Index slices of a box of voxels.
Box = tuple[slice, slice, slice]


def lps_affine(spacing: tuple[float, ...], origin: tuple[float, ...]) -> np.ndarray:
    """4x4 matrix mapping voxel indices ``(i, j, k, 1)`` to LPS mm; ``origin`` is voxel ``(0, 0, 0)``."""
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def ras_affine(spacing: tuple[float, ...], origin: tuple[float, ...]) -> np.ndarray:
    """4x4 matrix mapping voxel indices to RAS mm (what NIfTI stores), for an LPS ``origin``."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps_affine(spacing, origin)


def to_hu_int16(image: np.ndarray) -> np.ndarray:
    """Round a float HU image and clip it to the int16 range of CT (``HU_MIN``..``HU_MAX``)."""
    return np.clip(np.rint(image), HU_MIN, HU_MAX).astype(np.int16)


class Grid:
    """Voxel-centre coordinates (LPS mm) of a volume centred on the origin.

    ``x``, ``y``, ``z`` are the coordinates along each axis, ``fov`` the field of view (mm),
    ``z_bottom``/``height`` the z of the bottom slice and the z extent, ``z_fraction`` the height of each
    slice from 0 (bottom) to 1 (top), ``voxel_diagonal`` the voxel's diagonal and ``edge_mm`` the width of
    partial-volume edges (cube root of the voxel volume).
    """

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> None:
        self.shape, self.spacing = shape, spacing
        self.origin = tuple(-(n - 1) / 2 * s for n, s in zip(shape, spacing, strict=True))
        self.x, self.y, self.z = (o + s * np.arange(n)
                                  for o, s, n in zip(self.origin, spacing, shape, strict=True))
        self.fov = tuple(n * s for n, s in zip(shape, spacing, strict=True))
        self.z_bottom, self.height = float(self.z[0]), float(self.z[-1] - self.z[0])
        self.z_fraction = (self.z - self.z_bottom) / self.height
        self.voxel_diagonal = math.dist(spacing, (0, 0, 0))
        self.edge_mm = float(np.cbrt(np.prod(spacing)))

    def box(self, lo: np.ndarray, hi: np.ndarray) -> Box | None:
        """Index slices of the voxels whose centres lie in the box ``[lo, hi]`` (mm), or None."""
        out = []
        for ax in range(3):
            i0 = max(0, math.ceil((lo[ax] - self.origin[ax]) / self.spacing[ax]))
            i1 = min(self.shape[ax], math.floor((hi[ax] - self.origin[ax]) / self.spacing[ax]) + 1)
            if i0 >= i1:
                return None
            out.append(slice(i0, i1))
        return tuple(out)  # type: ignore[return-value]

    def local(self, box: Box, center: np.ndarray) -> list[np.ndarray]:
        """Broadcastable float32 coordinates of a box relative to ``center``."""
        axes = (self.x, self.y, self.z)
        shapes = [[-1 if b == a else 1 for b in range(3)] for a in range(3)]
        return [(axes[a][box[a]] - center[a]).astype(np.float32).reshape(shapes[a]) for a in range(3)]

    def affine_ras(self) -> np.ndarray:
        """4x4 voxel-to-RAS matrix of the grid (what NIfTI stores)."""
        return ras_affine(self.spacing, self.origin)


def relative_box(inner: Box, outer: Box) -> Box:
    """``inner`` (slices of the volume) as slices of the array of box ``outer`` that contains it."""
    pairs = zip(inner, outer, strict=True)
    return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in pairs)  # type: ignore[return-value]


def capsule_sdf(grid: Grid, a: np.ndarray, b: np.ndarray, r0: float, r1: float, pad: float = 0.0
                ) -> tuple[Box, np.ndarray] | None:
    """Signed distance (mm, <0 inside) to a tapered capsule from ``a`` (radius r0) to ``b`` (r1), on the
    bounding box of the capsule grown by ``pad``. Returns ``(box, sd)`` or None outside the volume."""
    rmax = max(r0, r1) + pad
    box = grid.box(np.minimum(a, b) - rmax, np.maximum(a, b) + rmax)
    if box is None:
        return None
    px, py, pz = grid.local(box, a)
    d = (b - a).astype(np.float32)
    length2 = float(d @ d)
    if length2 < 1e-9:
        return box, np.sqrt(px * px + py * py + pz * pz) - np.float32(r0)
    t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / np.float32(length2), 0.0, 1.0)
    dist = np.sqrt((px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (pz - t * d[2]) ** 2)
    return box, dist - (np.float32(r0) + t * np.float32(r1 - r0))


def partial_volume(sd: np.ndarray, edge_mm: float) -> np.ndarray:
    """Fraction of each voxel inside a surface (signed distance ``sd``): 1 inside, 0.5 on it, 0 outside,
    linear over ``edge_mm`` across it."""
    return np.clip(0.5 - sd / np.float32(edge_mm), 0, 1)


def paint_capsule_fraction(fraction: np.ndarray, grid: Grid, a: np.ndarray, b: np.ndarray, r0: float,
                           r1: float, edge_mm: float) -> None:
    """Raise ``fraction`` (in place) to the partial-volume fraction of a tapered capsule (a vessel)."""
    hit = capsule_sdf(grid, a, b, r0, r1, pad=edge_mm)
    if hit is not None:
        box, sd = hit
        np.maximum(fraction[box], partial_volume(sd, edge_mm), out=fraction[box])


def smooth_field(rng: np.random.Generator, grid: Grid, corr_mm: float) -> np.ndarray:
    """Zero-mean low-frequency random field (~unit std, float32): smoothed knots every ``corr_mm``,
    linearly interpolated axis by axis (pure numpy, bit-reproducible)."""
    axes = (grid.x, grid.y, grid.z)
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


def correlated_noise(rng: np.random.Generator, shape: tuple[int, int, int], sigma_hu: float) -> np.ndarray:
    """Gaussian noise of std ``sigma_hu``, correlated in-plane like reconstructed CT noise."""
    sigma = (0.7, 0.7, 0.0)
    noise = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    delta = np.zeros((15, 15, 1), np.float32)
    delta[7, 7, 0] = 1
    gain = float(np.sqrt(np.sum(ndi.gaussian_filter(delta, sigma) ** 2)))
    noise *= np.float32(sigma_hu / gain)
    return noise


class NoduleShape:
    """A star-shaped nodule surface ``radius(direction)`` in a randomly rotated local frame.

    ``shape`` is ``"smooth"`` (an ellipsoid of the nominal sphere's volume) or ``"lobulated"`` (a sphere
    modulated by spherical harmonics of degrees 3-4); ``radius`` is the nominal radius and
    ``min_radius``/``max_radius`` bound the surface's distance from ``center``.
    """

    def __init__(self, rng: np.random.Generator, center: np.ndarray, diameter: float, shape: str) -> None:
        self.center, self.shape, self.radius = center, shape, diameter / 2
        q = rng.standard_normal(4)
        w, x, y, z = q / np.linalg.norm(q)
        self.rotation = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                                  [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                                  [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
        if shape == "smooth":
            f = rng.uniform(0.8, 1.2, 3)
            self.axes = self.radius * f / np.cbrt(np.prod(f))  # same volume as the nominal sphere
            self.min_radius, self.max_radius = float(self.axes.min()), float(self.axes.max())
        else:
            self.coefficients = rng.standard_normal(16)
            self.amplitude = rng.uniform(0.10, 0.25)
            n = np.arange(2000) + 0.5
            phi, cos_t = np.pi * (1 + 5**0.5) * n, 1 - 2 * n / 2000
            sin_t = np.sqrt(1 - cos_t**2)
            probe = self._harmonics(sin_t * np.cos(phi), sin_t * np.sin(phi), cos_t)
            self.norm = float(np.abs(probe).max())
            self.min_radius = self.radius * (1 - self.amplitude)
            self.max_radius = self.radius * (1 + self.amplitude)

    def _harmonics(self, x, y, z):
        """Random combination of the real spherical harmonics of degrees 3 and 4 (3-4 lobes around)."""
        x2, y2, z2 = x * x, y * y, z * z
        basis = (x * (x2 - 3 * y2), y * (3 * x2 - y2), z * (x2 - y2), x * y * z, x * (5 * z2 - 1),
                 y * (5 * z2 - 1), z * (5 * z2 - 3), x * y * (x2 - y2), x2 * x2 - 6 * x2 * y2 + y2 * y2,
                 y * z * (3 * x2 - y2), x * z * (x2 - 3 * y2), x * y * (7 * z2 - 1), (x2 - y2) * (7 * z2 - 1),
                 y * z * (7 * z2 - 3), x * z * (7 * z2 - 3), 35 * z2 * z2 - 30 * z2 + 3)
        return sum(np.float32(c) * f for c, f in zip(self.coefficients, basis, strict=True))

    def signed_distance(self, grid: Grid, box: Box, scale: float = 1.0) -> np.ndarray:
        """Radial signed distance (mm, <0 inside) to the surface scaled by ``scale``, on ``box``."""
        p = grid.local(box, self.center)
        rot = self.rotation.astype(np.float32)
        q = [p[0] * rot[0, a] + p[1] * rot[1, a] + p[2] * rot[2, a] for a in range(3)]
        rho = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2)
        inv = 1 / np.maximum(rho, np.float32(1e-6))
        n = [qa * inv for qa in q]
        if self.shape == "smooth":
            ax = self.axes.astype(np.float32)
            inv_r2 = (n[0] / ax[0]) ** 2 + (n[1] / ax[1]) ** 2 + (n[2] / ax[2]) ** 2
            surf = 1 / np.sqrt(np.maximum(inv_r2, np.float32(1e-12)))  # n = 0 at the very centre
        else:
            relief = np.float32(self.amplitude / self.norm) * self._harmonics(*n)
            surf = np.float32(self.radius) * (1 + relief)
        return rho - np.float32(scale) * surf


def nodule_density(rng: np.random.Generator, grid: Grid, nodule: NoduleShape, box: Box, sd: np.ndarray,
                   kind: str, edge_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Blend weight and HU value of a nodule of density ``kind`` (one of ``NODULE_KINDS``) on ``box``.

    ``sd`` is the signed distance of the nodule's outline on the box (its surface, possibly with
    spicules); the weight is its partial-volume fraction. The value is a textured solid (20-60 HU) or
    ground-glass (-680..-520 HU) density; a part-solid nodule has a solid core of 30-60 % of its size
    (the shape scaled, without spicules) in ground glass. Callers may layer more (calcification) on the
    value before :func:`blend_nodule`.
    """
    texture = ndi.gaussian_filter(rng.standard_normal(sd.shape).astype(np.float32), (1.5, 1.5, 0.7))
    texture /= max(float(texture.std()), 1e-6)
    weight = partial_volume(sd, edge_mm)
    solid = np.float32(rng.uniform(20, 60)) + 8 * texture
    glass = np.float32(rng.uniform(-680, -520)) + 30 * texture
    if kind == "solid":
        return weight, solid
    if kind == "part-solid":
        core = nodule.signed_distance(grid, box, scale=float(rng.uniform(0.3, 0.6)))
        return weight, glass + partial_volume(core, edge_mm) * (solid - glass)
    return weight, glass


def blend_nodule(image: np.ndarray, box: Box, weight: np.ndarray, value: np.ndarray, kind: str) -> None:
    """Blend a nodule's ``value`` into ``image[box]`` (in place) with ``weight``. A solid nodule replaces
    what is there; a (part-)ground-glass one only adds density, so vessels stay visible through it."""
    background = image[box]
    if kind == "solid":
        image[box] = background + weight * (value - background)
    else:
        image[box] = background + weight * np.maximum(value - background, 0)
