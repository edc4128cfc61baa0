"""Shape primitives and the one nodule renderer shared by the phantoms and the nodule crops."""

from __future__ import annotations

import numpy as np
import pytest

from medpipe.data.synthetic.shapes import (
    NODULE_KINDS,
    Grid,
    NoduleShape,
    blend_nodule,
    capsule_sdf,
    nodule_density,
    partial_volume,
    relative_box,
)

GRID = Grid((48, 48, 24), (0.8, 0.8, 2.5))


def test_grid_is_centred_and_boxes_clip_to_the_volume():
    assert np.isclose(GRID.x.mean(), 0) and np.isclose(GRID.z.mean(), 0)
    assert GRID.z_fraction[0] == 0 and GRID.z_fraction[-1] == 1
    box = GRID.box(np.array([-1e3, -1.0, -2.0]), np.array([0.0, 1.0, 2.0]))
    assert box[0].start == 0 and box[0].stop == 24  # clipped at the border, centres <= 0 only
    assert GRID.box(np.array([1e3, 0, 0]), np.array([2e3, 1, 1])) is None
    inner = (slice(3, 5), slice(10, 12), slice(0, 1))
    outer = (slice(2, 8), slice(10, 20), slice(0, 4))
    assert relative_box(inner, outer) == (slice(1, 3), slice(0, 2), slice(0, 1))
    affine = GRID.affine_ras()
    assert np.allclose(affine @ [*(np.array(GRID.shape) - 1) / 2, 1], [0, 0, 0, 1])


def test_capsule_is_negative_inside_and_partial_volume_ramps():
    a, b = np.array([-5.0, 0.0, 0.0]), np.array([5.0, 0.0, 0.0])
    box, sd = capsule_sdf(GRID, a, b, 2.0, 2.0, pad=1.0)
    p = GRID.local(box, np.zeros(3))
    on_axis = (np.abs(p[1]) < 0.5) & (np.abs(p[2]) < 1.3) & (np.abs(p[0]) < 4)
    far = np.sqrt(p[1] ** 2 + p[2] ** 2) > 2.8
    assert (sd[np.broadcast_to(on_axis, sd.shape)] < 0).all()
    assert (sd[np.broadcast_to(far, sd.shape)] > 0).all()
    assert capsule_sdf(GRID, a + 1e3, b + 1e3, 2.0, 2.0) is None
    w = partial_volume(np.array([-5.0, 0.0, 5.0], np.float32), 1.0)
    assert w.tolist() == [1.0, 0.5, 0.0]


@pytest.mark.parametrize("kind", NODULE_KINDS)
def test_nodule_density_by_kind(kind):
    rng = np.random.default_rng(0)
    nodule = NoduleShape(rng, np.zeros(3), 12.0, "smooth")
    box = GRID.box(nodule.center - nodule.max_radius - 2, nodule.center + nodule.max_radius + 2)
    sd = nodule.signed_distance(GRID, box)
    weight, value = nodule_density(rng, GRID, nodule, box, sd, kind, GRID.edge_mm)
    assert weight.shape == value.shape == sd.shape and 0 <= weight.min() and weight.max() == 1
    assert (weight[sd > GRID.edge_mm] == 0).all()
    centre = value[tuple(s // 2 for s in value.shape)]
    rim = float(np.median(value[(sd < 0) & (sd > -1.0)]))
    if kind == "solid":
        assert -20 < centre < 100 and -20 < rim < 100
    elif kind == "ground-glass":
        assert -800 < centre < -400 and -800 < rim < -400
    else:  # solid core in ground glass
        assert centre > -100 and rim < -400


def test_blend_keeps_vessels_visible_through_ground_glass():
    image = np.full((4, 4, 4), -850.0, np.float32)
    image[0] = 40.0  # a vessel
    box = (slice(0, 4), slice(0, 4), slice(0, 4))
    weight, value = np.ones_like(image), np.full_like(image, -600.0)
    glass = image.copy()
    blend_nodule(glass, box, weight, value, "ground-glass")
    assert (glass[0] == 40).all() and (glass[1:] == -600).all()
    solid = image.copy()
    blend_nodule(solid, box, weight, np.full_like(image, 30.0), "solid")
    assert (solid == 30).all()
