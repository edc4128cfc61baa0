"""The chest of a synthetic CT phantom as a volume of tissue classes, before any intensity.

:class:`Thorax` draws one patient's proportions (body and thoracic-cavity size as functions of the
height ``level``, 0 at the bottom slice and 1 at the top; heart position; dome and carina heights);
:func:`build_anatomy` paints skin, fat, muscle, lungs tapering to the apex above the diaphragm domes,
liver and spleen below them, the mediastinum with heart, great vessels, oesophagus and airways,
:func:`paint_bones` the spine, sternum, scapulae and ribs and :func:`paint_table` the patient table;
:func:`paint_vessels` grows the branching pulmonary arteries and veins from the hila.

Sizes are millimetres scaled by ``Thorax.scale`` (the body's width relative to an adult chest of
~280 mm), positions in the mediastinum by *cavity units* (``u`` across, ``v`` front to back, as
fractions of the cavity's half-width and half-depth at mid-height). The tissue classes map to HU
through ``HU`` (mean) and ``TEXTURE`` (texture amplitude), applied by :mod:`.phantom`.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from medpipe.data.synthetic.shapes import Grid, capsule_sdf, paint_capsule_fraction

# Tissue classes of the noiseless phantom and their HU (mean, texture amplitude).
(AIR, SKIN, FAT, MUSCLE, MED_FAT, LUNG, HEART, BLOOD, LUMEN, WALL, LIVER, SPLEEN, CORTEX, MARROW,
 DISC, CANAL, CARTILAGE, TABLE_SHELL, TABLE_CORE, ESOPHAGUS) = range(20)
HU = np.array([-1000, 30, -100, 45, -90, -850, 40, 40, -990, 40, 55, 45, 850, 260, 80, 20, 120, 250, -850,
               35], np.float32)
TEXTURE = np.array([0, 4, 10, 8, 10, 18, 5, 4, 0, 6, 6, 6, 60, 45, 6, 4, 12, 10, 10, 6], np.float32)


def paint_polyline(classes: np.ndarray, grid: Grid, points: np.ndarray, radii: np.ndarray, value: int,
                   allowed: np.ndarray) -> None:
    """Set ``classes`` to ``value`` inside a tube along ``points`` where the current class is ``allowed``."""
    for p, q, r0, r1 in zip(points[:-1], points[1:], radii[:-1], radii[1:], strict=True):
        hit = capsule_sdf(grid, p, q, float(r0), float(r1))
        if hit is not None:
            box, sd = hit
            view = classes[box]
            view[(sd <= 0) & allowed[view]] = value


def ray_radius(dx: np.ndarray, dy: np.ndarray, a: np.ndarray, b: np.ndarray, px: float,
               py: np.ndarray) -> np.ndarray:
    """Distance from the centre to a superellipse ``|x/a|^px + |y/b|^py = 1`` along unit directions."""
    lo, hi = np.zeros_like(dx), np.maximum(a, b) * 1.01
    for _ in range(40):
        mid = (lo + hi) / 2
        inside = np.abs(mid * dx / a) ** px + np.abs(mid * dy / b) ** py <= 1
        lo, hi = np.where(inside, mid, lo), np.where(inside, hi, mid)
    return lo


def superellipse(grid: Grid, center_y: np.ndarray, half_x: np.ndarray, half_y: np.ndarray, px: float,
                 py_anterior: float, py_posterior: float) -> np.ndarray:
    """3-D mask of per-slice superellipses centred on (0, center_y) with semi-axes (half_x, half_y)."""
    fx = (np.abs(grid.x[:, None]) / half_x) ** px
    dy = grid.y[:, None] - center_y
    fy = np.abs(dy / half_y) ** np.where(dy < 0, py_anterior, py_posterior)
    return (fx[:, None, :] + fy[None, :, :]) <= 1.0


class Thorax:
    """Per-case anatomical parameters; body and cavity sizes are functions of ``level`` (0 bottom, 1 top)."""

    def __init__(self, rng: np.random.Generator, grid: Grid) -> None:
        fov_x, fov_y, _ = grid.fov
        u = rng.uniform
        self.half_width = 0.44 * fov_x * u(0.92, 1.02)  # body semi-axes at the bottom slice
        self.half_depth = min(0.39 * fov_y, 0.76 * self.half_width * u(0.94, 1.04))
        self.scale = self.half_width / 140.0  # anatomical scale relative to an adult chest (~280 mm wide)
        self.center_y = -0.03 * fov_y
        self.phases = u(0, 2 * np.pi, 4)
        self.fat_mm = u(5.0, 18.0) * self.scale
        s = self.scale
        self.muscle_mm = (11 * s, 13 * s, 28 * s)  # lateral, anterior, posterior chest wall
        self.apex_level = u(1.0, 1.08)
        self.dome_levels = (u(0.14, 0.24), u(0.08, 0.16))  # right/left dome height (fraction of z extent)
        self.carina_level = u(0.55, 0.62)
        self.rib_phase = u(0, 1)
        # heart centre (u, v, level), size factor and in-plane tilt (radians)
        self.heart = (u(0.10, 0.18), u(-0.28, -0.16), u(0.12, 0.24), u(0.9, 1.1), np.deg2rad(u(-50, -30)))

    def body(self, level: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Body half-width, half-depth and subcutaneous fat thickness at heights ``level``."""
        p = self.phases
        half_width = self.half_width * (1 - 0.08 * level**2 + 0.012 * np.sin(2 * np.pi * 1.3 * level + p[0]))
        half_depth = self.half_depth * (1 - 0.04 * level**2 + 0.012 * np.sin(2 * np.pi * 1.1 * level + p[1]))
        fat = self.fat_mm * (1 + 0.12 * np.sin(2 * np.pi * 0.8 * level + p[2]))
        return half_width, half_depth, fat

    def cavity(self, level: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Thoracic cavity half-width, half-depth and centre y at heights ``level``."""
        half_width, half_depth, fat = self.body(level)
        lateral, anterior, posterior = self.muscle_mm
        y_anterior = self.center_y - half_depth + 1.5 + fat + anterior
        y_posterior = self.center_y + half_depth - 1.5 - fat - posterior
        return (half_width - 1.5 - fat - lateral, (y_posterior - y_anterior) / 2,
                (y_posterior + y_anterior) / 2)


def build_anatomy(grid: Grid, thorax: Thorax, table: bool) -> tuple[np.ndarray, dict]:
    """Tissue-class volume (uint8) and the hilar roots of the pulmonary vessel trees."""
    level, s = grid.z_fraction, thorax.scale
    body_half_width, body_half_depth, fat = thorax.body(level)
    cavity_half_width, cavity_half_depth, cavity_y = thorax.cavity(level)
    classes = np.zeros(grid.shape, np.uint8)
    y0 = thorax.center_y
    classes[superellipse(grid, y0, body_half_width, body_half_depth, 2.2, 2.0, 3.2)] = SKIN
    classes[superellipse(grid, y0, body_half_width - 1.5, body_half_depth - 1.5, 2.2, 2.0, 3.2)] = FAT
    classes[superellipse(grid, y0, body_half_width - 1.5 - fat, body_half_depth - 1.5 - fat, 2.2, 2.0, 3.2)
            ] = MUSCLE
    cavity = superellipse(grid, cavity_y, cavity_half_width, cavity_half_depth, 2.3, 2.2, 2.8)
    classes[cavity] = MED_FAT

    mid_half_width, mid_half_depth, mid_y = (float(v) for v in thorax.cavity(np.array(0.5)))

    def cavity_point(u: float, v: float, point_level: float) -> np.ndarray:
        return np.array([u * mid_half_width, mid_y + v * mid_half_depth,
                         grid.z_bottom + point_level * grid.height])

    # Spine geometry (used to carve the lungs and painted last).
    vertebra_half_width, vertebra_half_depth = 19 * s, 15 * s
    vertebra_y = mid_y + mid_half_depth - vertebra_half_depth - 2 * s
    x_col, y_row = grid.x[:, None], grid.y[None, :]
    spine_zone = (((x_col / (vertebra_half_width + 4 * s)) ** 2
                   + ((y_row - vertebra_y) / (vertebra_half_depth + 4 * s)) ** 2 <= 1)
                  | ((np.abs(x_col) < vertebra_half_width + 4 * s) & (y_row > vertebra_y)))

    # Lungs: cavity minus mediastinum, spine, diaphragm domes; tapering to the apex.
    midline_x = 0.02 * mid_half_width
    # (ny, nz) 0 anterior .. 1 posterior
    depth = np.clip((grid.y[:, None] - (cavity_y - cavity_half_depth)) / (2 * cavity_half_depth), 0, 1)
    top = np.clip((level - 0.6) / 0.25, 0, 1)
    bulge = 0.05 * np.exp(-(((depth - 0.4) / 0.18) ** 2))  # great vessels in front of the trachea
    mediastinum_half_width = cavity_half_width * (0.04 + 0.14 * depth**0.7 + bulge
                                                  + 0.07 * top * top * (3 - 2 * top))
    mediastinum = np.abs(grid.x - midline_x)[:, None, None] < mediastinum_half_width[None, :, :]
    lung = cavity & ~mediastinum & ~spine_zone[:, :, None]
    for side in (-1, 1):
        this_side = grid.x[:, None] * side > 0
        apex_scale = 1.6 * np.sqrt(np.clip((thorax.apex_level - level) / (thorax.apex_level - 0.5), 0, 1))
        fx = ((grid.x[:, None] - side * 0.40 * cavity_half_width)
              / (0.60 * cavity_half_width * apex_scale + 1e-6)) ** 2
        fy = ((grid.y[:, None] - cavity_y - 0.25 * cavity_half_depth)
              / (0.80 * cavity_half_depth * apex_scale + 1e-6)) ** 2
        apex = (fx[:, None, :] + fy[None, :, :]) <= 1
        lung &= apex | ~this_side[:, :, None]
    right = x_col < midline_x
    dome_height = np.where(right, thorax.dome_levels[0], thorax.dome_levels[1])
    dome_z = grid.z_bottom + grid.height * (
        dome_height - 0.6 * ((np.abs(x_col) - 0.45 * mid_half_width) / mid_half_width) ** 2
        - 0.25 * ((y_row - mid_y + 0.1 * mid_half_depth) / mid_half_depth) ** 2)
    below = grid.z[None, None, :] < dome_z[:, :, None]
    lung &= ~below
    classes[lung] = LUNG
    abdomen = below & cavity & ~mediastinum & ~spine_zone[:, :, None]
    classes[abdomen & right[:, :, None]] = LIVER
    classes[abdomen & ~right[:, :, None]] = SPLEEN

    # Heart: a tilted ellipsoid, wrapped in pericardial fat, sitting left of the midline.
    heart_u, heart_v, heart_level, heart_size, heart_angle = thorax.heart
    centre = cavity_point(heart_u, heart_v, heart_level)
    semi = np.array([0.42 * mid_half_width, 0.32 * mid_half_width, 0.34 * grid.height]) * heart_size
    for grow, value in ((4 * s, MED_FAT), (0.0, HEART)):
        box = grid.box(centre - semi.max() - grow, centre + semi.max() + grow)
        if box is None:
            continue
        px, py, pz = grid.local(box, centre)
        c, sn = np.float32(np.cos(heart_angle)), np.float32(np.sin(heart_angle))
        q1, q2 = px * c + py * sn, -px * sn + py * c
        inside = ((q1 / (semi[0] + grow)) ** 2 + (q2 / (semi[1] + grow)) ** 2
                  + (pz / (semi[2] + grow)) ** 2) <= 1
        view = classes[box]
        view[inside & (view != AIR) & cavity[box]] = value

    # Great vessels, oesophagus and airways (tubes), carving the lungs.
    soft = np.zeros(32, bool)
    soft[[MED_FAT, LUNG, HEART, LIVER, SPLEEN]] = True
    trachea_radius = 8 * s
    trachea_v = (vertebra_y - vertebra_half_depth - 10 * s - trachea_radius - mid_y) / mid_half_depth
    carina_level = thorax.carina_level
    tubes = [  # (points in cavity units (u, v, level), radii in mm)
        ([(0.05, -0.25, 0.25), (-0.05, -0.40, 0.62), (0.04, -0.15, 0.80), (0.24, 0.28, 0.78),
          (0.24, 0.48, 0.62), (0.24, 0.50, -0.2)], [13, 13, 12, 11, 10.5, 10.5]),  # aorta
        ([(0.15, -0.30, 0.30), (0.12, -0.28, 0.50), (0.08, -0.05, carina_level - 0.04)],
         [12, 12, 11]),  # pulmonary trunk
        ([(0.08, -0.05, carina_level - 0.04), (-0.10, 0.02, carina_level - 0.07),
          (-0.30, 0.05, carina_level - 0.10)], [9, 9, 7]),  # right pulmonary artery
        ([(0.08, -0.05, carina_level - 0.04), (0.25, 0.05, carina_level - 0.02),
          (0.33, 0.22, carina_level - 0.08)], [9, 8.5, 7]),  # left pulmonary artery
        ([(0.02, 0.05, 0.30), (-0.30, -0.05, carina_level - 0.25)], [8, 6.5]),  # right pulmonary veins
        ([(0.10, 0.05, 0.30), (0.34, 0.05, carina_level - 0.28)], [8, 6.5]),  # left pulmonary veins
        ([(-0.22, -0.25, 1.2), (-0.18, -0.20, 0.45)], [9, 9]),  # superior vena cava
    ]
    for points, radii in tubes:
        path = np.array([cavity_point(*p) for p in points])
        paint_polyline(classes, grid, path, np.array(radii) * s, BLOOD, soft)
    esophagus = np.array([cavity_point(0.04, trachea_v + (trachea_radius + 7 * s) / mid_half_depth, 1.2),
                          cavity_point(0.08, trachea_v + (trachea_radius + 5 * s) / mid_half_depth, -0.2)])
    paint_polyline(classes, grid, esophagus, np.array([6.0, 6.0]) * s, ESOPHAGUS, soft)
    carina = cavity_point(0, trachea_v, carina_level)
    right_main = cavity_point(-0.24, trachea_v + 0.05, carina_level - 0.08)
    left_main = cavity_point(0.28, trachea_v + 0.10, carina_level - 0.14)
    intermediate = cavity_point(-0.27, trachea_v + 0.08, carina_level - 0.18)
    airways = [  # (from, to, radius mm)
        (cavity_point(0, trachea_v, 1.2), carina, 8.0), (carina, right_main, 6.0), (carina, left_main, 5.5),
        (right_main, cavity_point(-0.45, trachea_v, carina_level - 0.02), 3.8),
        (right_main, intermediate, 5.0),
        (intermediate, cavity_point(-0.45, trachea_v - 0.35, carina_level - 0.26), 3.2),
        (intermediate, cavity_point(-0.40, trachea_v + 0.25, carina_level - 0.42), 4.0),
        (left_main, cavity_point(0.45, trachea_v - 0.2, carina_level - 0.06), 4.0),
        (left_main, cavity_point(0.45, trachea_v + 0.3, carina_level - 0.40), 4.0),
    ]
    soft[[BLOOD, ESOPHAGUS]] = True
    wall_mm = max(2.0 * s, 0.6 * min(grid.spacing[:2]))
    for extra, value in ((wall_mm, WALL), (0.0, LUMEN)):
        allowed = soft.copy()
        allowed[WALL] = value == LUMEN
        for p, q, r in airways:
            paint_polyline(classes, grid, np.array([p, q]), np.array([r, r]) * s + extra, value, allowed)

    paint_bones(classes, grid, thorax, vertebra_y, vertebra_half_width, vertebra_half_depth)
    if table:
        paint_table(classes, grid, thorax)
    roots = {  # (right, left) hilum of each tree: the ends of the pulmonary arteries and veins
        "artery": (cavity_point(-0.30, 0.05, carina_level - 0.10),
                   cavity_point(0.33, 0.22, carina_level - 0.08)),
        "vein": (cavity_point(-0.30, -0.05, carina_level - 0.25),
                 cavity_point(0.34, 0.05, carina_level - 0.28)),
    }
    return classes, roots


def paint_bones(classes: np.ndarray, grid: Grid, thorax: Thorax, vertebra_y: float,
                vertebra_half_width: float, vertebra_half_depth: float) -> None:
    """Spine (vertebral bodies, discs, canal, posterior elements), sternum, scapulae and ribs."""
    s, level = thorax.scale, grid.z_fraction
    cortex = max(1.2 * s, 0.5 * min(grid.spacing[:2]))
    pitch = 0.13 * grid.height
    phase = ((grid.z - grid.z_bottom) / pitch + thorax.rib_phase) % 1.0
    x_col, y_row = grid.x[:, None], grid.y[None, :]
    canal_y = vertebra_y + vertebra_half_depth + 1.5 * s + 7 * s  # spinal canal centre

    def ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return ((x_col - cx) / rx) ** 2 + ((y_row - cy) / ry) ** 2 <= 1

    body_outer = ellipse(0, vertebra_y, vertebra_half_width, vertebra_half_depth)
    body_inner = ellipse(0, vertebra_y, vertebra_half_width - cortex, vertebra_half_depth - cortex)
    canal = ellipse(0, canal_y, 7 * s, 7 * s)
    arch_outer = ellipse(0, canal_y, 11.5 * s, 11.5 * s) | ellipse(0, canal_y + 15 * s, 3.5 * s, 7 * s)
    arch_outer |= (ellipse(-20 * s, canal_y - 2 * s, 13 * s, 4 * s)
                   | ellipse(20 * s, canal_y - 2 * s, 13 * s, 4 * s))  # transverse processes
    arch_inner = ndi.binary_erosion(arch_outer, iterations=max(1, round(cortex / grid.spacing[0]))) & ~canal
    for k in range(grid.shape[2]):
        plane = classes[:, :, k]
        if phase[k] < 0.16:
            plane[body_outer] = DISC
        else:
            plane[body_outer] = CORTEX
            plane[body_inner] = MARROW
        if 0.3 < phase[k] < 0.85:
            plane[arch_outer & ~canal] = CORTEX
            plane[arch_inner] = MARROW
        plane[canal] = CANAL
        # Sternum in the anterior chest wall.
        cavity_half_width, cavity_half_depth, cavity_y = thorax.cavity(level[k])
        sternum_y = cavity_y - cavity_half_depth - 6 * s
        plane[ellipse(0, sternum_y, 14 * s, 5.5 * s)] = CORTEX
        plane[ellipse(0, sternum_y, 14 * s - cortex, 5.5 * s - cortex)] = MARROW
        # Scapulae: thin curved blades behind the ribs in the upper chest.
        if level[k] > 0.45:
            dy = y_row - cavity_y
            angle = np.abs(np.arctan2(x_col, dy))  # 0 posterior midline .. pi anterior
            blade = (angle > 0.14 * np.pi) & (angle < (0.30 + 0.08 * min(1.0, (level[k] - 0.45) * 4)) * np.pi)
            shells = [np.abs(x_col / (cavity_half_width + d)) ** 2.3
                      + np.abs(dy / (cavity_half_depth + d)) ** np.where(dy < 0, 2.2, 2.8)
                      for d in (12 * s, 12 * s + max(3.5 * s, grid.spacing[0]))]
            plane[blade & (shells[0] > 1) & (shells[1] <= 1) & (dy > 0)] = CORTEX
    # Ribs: tubes around the chest wall, descending from the spine towards the sternum.
    theta = np.linspace(0.10 * np.pi, 0.90 * np.pi, 17)
    along = (theta - theta[0]) / (theta[-1] - theta[0])  # 0 at the spine .. 1 at the sternum
    rib_radius = 3.6 * s
    drop = 4.0 * pitch
    n_heads = math.ceil((grid.height + drop) / pitch) + 2
    heads = grid.z_bottom + pitch * (np.arange(-1, n_heads) - thorax.rib_phase)  # z of each rib at the spine
    cortex_tubes, marrow_tubes, cartilage_tubes = [], [], []
    for head_z in heads:
        z = head_z - drop * along**1.1
        z_level = np.clip((z - grid.z_bottom) / grid.height, 0, 1)
        cavity_half_width, cavity_half_depth, cavity_y = thorax.cavity(z_level)
        for side in (-1.0, 1.0):
            dx, dy = side * np.sin(theta), np.cos(theta)
            rho = (ray_radius(dx, dy, cavity_half_width, cavity_half_depth, 2.3, np.where(dy < 0, 2.2, 2.8))
                   + rib_radius + 1.5 * s)
            points = np.stack([rho * dx, cavity_y + rho * dy, z], axis=1)
            bone = along <= 0.72
            cortex_tubes.append(points[bone])
            marrow_tubes.append(points[bone])
            cartilage_tubes.append(points[along >= 0.70])
    anything = np.ones(32, bool)
    for tubes, radius, value in ((cartilage_tubes, rib_radius * 0.9, CARTILAGE),
                                 (cortex_tubes, rib_radius, CORTEX),
                                 (marrow_tubes, rib_radius - cortex, MARROW)):
        for points in tubes:
            paint_polyline(classes, grid, points, np.full(len(points), radius), value, anything)


def paint_table(classes: np.ndarray, grid: Grid, thorax: Thorax) -> None:
    """Curved carbon-fibre table (two shells around a foam core) under the patient's back."""
    y_top = thorax.center_y + float(np.min(thorax.body(grid.z_fraction)[1])) + 3.0
    x = grid.x[:, None]
    lift = 14 * thorax.scale * (x / (0.45 * grid.fov[0])) ** 2
    depth = grid.y[None, :] - (y_top - lift)
    width = np.abs(x) < 0.42 * grid.fov[0]
    shell_mm = max(1.5, grid.spacing[1])  # shells at least one row thick
    thick = max(9 * thorax.scale, 3 * shell_mm + 1)
    shell = width & (((depth >= 0) & (depth < shell_mm)) | ((depth >= thick - shell_mm) & (depth < thick)))
    core = width & (depth >= shell_mm) & (depth < thick - shell_mm)
    for mask, value in ((shell, TABLE_SHELL), (core, TABLE_CORE)):
        classes[mask[:, :, None] & (classes == AIR)] = value


def vessel_tree(rng: np.random.Generator, root: np.ndarray, targets: np.ndarray, leaf_radius: float
                ) -> list[tuple[np.ndarray, np.ndarray, float, float]]:
    """Space-filling branching tree from ``root`` to ``targets``: each branch heads part-way to the
    centroid of the targets it serves, then splits them in two across its direction. Radius follows
    Murray's law, ``r = leaf_radius * n ** (1/3)`` for a branch serving ``n`` targets. Returns the
    segments ``(start, end, start radius, end radius)``."""
    segments = []
    stack = [(root, np.arange(len(targets)))]
    while stack:
        start, served = stack.pop()
        points = targets[served]
        radius = leaf_radius * len(served) ** (1 / 3)
        if len(served) == 1:
            segments.append((start, points[0], leaf_radius, 0.8 * leaf_radius))
            continue
        centroid = points.mean(axis=0)
        end = start + rng.uniform(0.3, 0.5) * (centroid - start)
        segments.append((start, end, radius, radius))
        direction = centroid - start
        direction = direction / (np.linalg.norm(direction) + 1e-9)
        rel = points - centroid
        rel = rel - np.outer(rel @ direction, direction)
        cov = rel.T @ rel
        axis = np.linalg.eigh(cov)[1][:, -1]
        axis = axis if axis[np.argmax(np.abs(axis))] > 0 else -axis  # eigenvector sign is arbitrary
        order = np.argsort(rel @ axis, kind="stable")
        cut = min(len(served) - 1, max(1, round(len(served) * rng.uniform(0.3, 0.7))))
        stack.append((end, served[order[cut:]]))
        stack.append((end, served[order[:cut]]))
    return segments


def paint_vessels(rng: np.random.Generator, grid: Grid, lung: np.ndarray, roots: dict, edge_mm: float
                  ) -> np.ndarray:
    """Partial-volume fraction (float32) of the pulmonary vessels, restricted to the lungs."""
    fraction = np.zeros(grid.shape, np.float32)
    coarse = lung[::2, ::2, :]  # targets are drawn on every other column and row
    for side, lung_side in ((0, grid.x[::2] < 0), (1, grid.x[::2] > 0)):
        flat = np.flatnonzero(coarse & lung_side[:, None, None])
        if flat.size == 0:
            continue
        for kind in ("artery", "vein"):
            n = int(rng.integers(180, 240))
            pick = np.sort(rng.choice(flat.size, size=min(n, flat.size), replace=False))
            i, j, k = np.unravel_index(flat[pick], coarse.shape)
            targets = np.stack([grid.x[::2][i], grid.y[::2][j], grid.z[k]], axis=1)
            targets += rng.uniform(-0.5, 0.5, targets.shape) * np.array(grid.spacing) * (2, 2, 1)
            for p, q, r0, r1 in vessel_tree(rng, roots[kind][side], targets, 0.85):
                paint_capsule_fraction(fraction, grid, p, q, r0, r1, edge_mm)
    fraction *= lung
    return fraction
