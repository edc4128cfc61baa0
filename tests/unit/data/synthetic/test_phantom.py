"""Synthetic chest-CT phantoms: determinism, nodule placement, HU plausibility and spec validation."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage as ndi

from medpipe.data.synthetic.phantom import NODULE_KINDS, PhantomSpec, generate_phantom
from medpipe.errors import DataGenerationError

SMALL = PhantomSpec(shape=(96, 80, 24), spacing=(2.0, 2.0, 5.0))
#: Plausible mean HU over a nodule's labelled voxels (noise and partial volume included, coarse grid).
HU_BANDS = {"solid": (-300, 100), "part-solid": (-750, -150), "ground-glass": (-800, -300)}


@pytest.fixture(scope="module")
def cases():
    return [generate_phantom(seed, SMALL) for seed in range(6)]


def _digest(case) -> str:
    return hashlib.sha256(case.image.tobytes() + case.label.tobytes()).hexdigest()


def _voxel(case, point) -> tuple[int, int, int]:
    pairs = zip(point, case.origin_lps, case.spacing, strict=True)
    return tuple(int(round((p - o) / s)) for p, o, s in pairs)


def test_dtype_shape_and_geometry(cases):
    case = cases[0]
    assert case.image.dtype == np.int16 and case.image.shape == SMALL.shape
    assert case.label.dtype == np.uint8 and case.label.shape == SMALL.shape
    assert set(np.unique(case.label)) <= {0, 1}
    assert case.lung_mask.shape == case.vessel_mask.shape == SMALL.shape
    assert case.spacing == SMALL.spacing
    lps = case.affine_lps()
    centre = lps @ np.array([(n - 1) / 2 for n in SMALL.shape] + [1.0])
    np.testing.assert_allclose(centre[:3], 0, atol=1e-9)  # the volume is centred on the origin
    np.testing.assert_allclose(lps @ [1, 2, 3, 1], np.array(case.origin_lps + (0,)) + [2, 4, 15, 1])
    np.testing.assert_allclose(case.affine_ras(), np.diag([-1, -1, 1, 1]) @ lps)


def test_same_seed_gives_identical_case(cases):
    again = generate_phantom(0, SMALL)
    assert np.array_equal(again.image, cases[0].image) and np.array_equal(again.label, cases[0].label)
    assert again.nodules == cases[0].nodules


def test_same_seed_identical_in_another_process(cases):
    code = ("import hashlib; from medpipe.data.synthetic.phantom import PhantomSpec, generate_phantom;"
            "c = generate_phantom(0, PhantomSpec(shape=(96, 80, 24), spacing=(2.0, 2.0, 5.0)));"
            "print(hashlib.sha256(c.image.tobytes() + c.label.tobytes()).hexdigest())")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == _digest(cases[0])


def test_different_seeds_give_different_cases(cases):
    assert len({_digest(c) for c in cases}) == len(cases)
    assert cases[0].nodules != cases[1].nodules


def test_nodules_lie_inside_the_lungs_and_are_labelled(cases):
    low, high = SMALL.effective_diameter_mm
    for case in cases:
        label = case.label.astype(bool)
        assert not (label & ~case.lung_mask).any(), f"seed {case.seed}: label outside the lungs"
        components, n = ndi.label(label, structure=np.ones((3, 3, 3)))
        assert 1 <= len(case.nodules) <= 4 and n == len(case.nodules), f"seed {case.seed}"
        seen = set()
        for nodule in case.nodules:
            comp = components[_voxel(case, nodule.center_lps)]
            assert comp > 0, f"seed {case.seed}: nodule centre {nodule.center_lps} not labelled"
            seen.add(comp)
            assert low - 1e-6 <= nodule.diameter_mm <= high + 1e-6
            assert nodule.kind in NODULE_KINDS and nodule.shape in ("smooth", "lobulated")
        assert len(seen) == n  # one component per nodule: they do not touch


def test_small_nodules_still_get_labelled_voxels():
    spec = PhantomSpec(shape=(96, 80, 24), spacing=(2.0, 2.0, 5.0), nodule_diameter_mm=(4.0, 4.0),
                       n_nodules=(4, 4))
    case = generate_phantom(3, spec)
    assert all(n.diameter_mm == 4.0 for n in case.nodules)  # below the guarantee: centred on a voxel
    assert ndi.label(case.label, structure=np.ones((3, 3, 3)))[1] == 4


def test_hu_plausibility(cases):
    for case in cases:
        img = case.image
        near_nodule = ndi.binary_dilation(case.label.astype(bool), iterations=2)
        parenchyma = case.lung_mask & ~case.vessel_mask & ~near_nodule
        assert abs(np.median(img[parenchyma]) + 850) <= 60
        assert (img[:3, :3, :] == -2048).all()  # the corners: outside the reconstruction circle
        assert abs(np.median(img[:, :4, :][img[:, :4, :] > -2048]) + 1000) <= 30  # in front of the chest: air
        assert (img > 600).sum() > 50  # ribs, sternum and spine
        vessels = case.vessel_mask & ~near_nodule
        assert vessels.sum() > 100 and np.median(img[vessels]) > -500  # vessels are bright in the lungs


@pytest.mark.parametrize("kind", NODULE_KINDS)
def test_nodule_mean_hu_by_kind(kind):
    spec = PhantomSpec(shape=(96, 80, 24), spacing=(2.0, 2.0, 5.0), kinds=(kind,), n_nodules=(2, 2),
                       nodule_diameter_mm=(10.0, 25.0))
    case = generate_phantom(21, spec)
    low, high = HU_BANDS[kind]
    for nodule in case.nodules:
        assert nodule.kind == kind and low <= nodule.mean_hu <= high, nodule


def test_default_size_case():
    case = generate_phantom(0)
    assert case.image.shape == (384, 320, 56) and case.spacing == (0.8, 0.8, 2.5)
    assert case.label.any() and case.vessel_mask.sum() > 10_000


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"shape": (96, 80)}, "shape="),
        ({"shape": (16, 80, 24)}, "shape="),
        ({"spacing": (2.0, 0.0, 5.0)}, "spacing="),
        ({"spacing": (2.0, -1.0, 5.0)}, "spacing="),
        ({"n_nodules": (3, 1)}, "n_nodules="),
        ({"n_nodules": (-1, 2)}, "n_nodules="),
        ({"nodule_diameter_mm": (20.0, 10.0)}, "nodule_diameter_mm="),
        ({"nodule_diameter_mm": (0.0, 10.0)}, "nodule_diameter_mm="),
        ({"noise_hu": -1.0}, "noise_hu="),
        ({"kinds": ("calcified",)}, "kinds="),
        ({"shape": (40, 40, 24), "spacing": (1.0, 1.0, 5.0)}, "field of view"),
    ],
)
def test_invalid_spec_raises_with_code(kwargs, fragment):
    with pytest.raises(DataGenerationError) as info:
        PhantomSpec(**kwargs)
    assert info.value.code == "PHANTOM_INVALID_SPEC"
    assert fragment in str(info.value)


@pytest.mark.parametrize("seed", [-1, "7", True, 1.5])
def test_invalid_seed_raises_with_code(seed):
    with pytest.raises(DataGenerationError) as info:
        generate_phantom(seed, SMALL)
    assert info.value.code == "PHANTOM_INVALID_SEED"


def test_unplaceable_nodules_raise_with_code():
    spec = PhantomSpec(shape=(96, 80, 24), spacing=(2.0, 2.0, 5.0), n_nodules=(8, 8),
                       nodule_diameter_mm=(40.0, 40.0))
    with pytest.raises(DataGenerationError) as info:
        generate_phantom(0, spec)
    assert info.value.code == "PHANTOM_NODULE_PLACEMENT"


def test_outside_the_reconstruction_circle_is_the_scanners_padding(cases):
    """-2048 HU outside the circle of the larger in-plane field of view, as GE scanners write it; nothing
    of the lungs or nodules there, and inside the circle the image is the one without padding."""
    import dataclasses

    plain = generate_phantom(0, dataclasses.replace(SMALL, outside_scan_hu=None))
    padded = cases[0].image == -2048
    assert 0.1 < padded[:, :, 0].mean() < 0.2 and (padded == padded[:, :, :1]).all()  # the same circle per slice
    assert not (padded & (cases[0].lung_mask | cases[0].label.astype(bool))).any()
    assert np.array_equal(cases[0].image[~padded], plain.image[~padded]) and plain.image.min() >= -1100
    for bad in (-500, True, "air"):
        with pytest.raises(DataGenerationError) as e:
            PhantomSpec(outside_scan_hu=bad)
        assert e.value.code == "PHANTOM_INVALID_SPEC"
