"""Test-time augmentation inferers of medpipe.tta: cube symmetries for classifiers, mirroring for segmenters."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SimpleInferer

from medpipe.tta import SYMMETRIES, CubeSymmetryInferer, apply_symmetry
from tests.unit.test_inferers import _net


def test_cube_symmetries_are_48_distinct_orientations_and_tta_is_invariant_to_them():
    x = torch.arange(2 * 4 * 5 * 6, dtype=torch.float32).reshape(2, 1, 4, 5, 6)
    cube = torch.rand(1, 1, 5, 5, 5)
    seen = {apply_symmetry(cube, i).flatten().tolist().__repr__() for i in range(len(SYMMETRIES))}
    assert len(SYMMETRIES) == 48 and len(seen) == 48
    assert torch.equal(apply_symmetry(x, 0), x)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    net(cube)
    full = CubeSymmetryInferer(48)
    # averaging over the whole group: any orientation of the input gives the same probabilities
    p0, p1 = torch.exp(full(cube, net)), torch.exp(full(apply_symmetry(cube, 29), net))
    assert torch.allclose(p0, p1, atol=1e-5) and torch.allclose(p0.sum(1), torch.ones(1))
    assert torch.allclose(
        torch.softmax(CubeSymmetryInferer(1)(cube, net), 1), torch.softmax(net(cube), 1), atol=1e-6
    )


def test_flip_tta_makes_any_network_flip_equivariant():
    """Averaging over the flip group makes the prediction of a flipped input the flipped prediction."""
    from medpipe.tta import FlipTTAInferer

    net, x = _net(), torch.randn(1, 1, 24, 32, 24)
    tta = FlipTTAInferer(SimpleInferer(), spatial_axes=[0, 2])
    assert len(tta.flips) == 4
    with torch.no_grad():
        out = tta(x, net)
        for axis in (0, 2):
            torch.testing.assert_close(tta(x.flip(2 + axis), net), out.flip(2 + axis), atol=1e-5, rtol=1e-5)
        # the plain network is not equivariant, so the check above is not vacuous
        plain = net(x)
        assert not torch.allclose(net(x.flip(2)), plain.flip(2), atol=1e-3)
    # log of a probability: softmax of it gives back the mean probabilities, which sum to one
    torch.testing.assert_close(out.exp().sum(1), torch.ones(1, 24, 32, 24))




def test_flip_tta_without_axes_is_the_wrapped_inferer():
    from medpipe.tta import FlipTTAInferer

    net, x = _net(), torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        out = FlipTTAInferer(SimpleInferer(), spatial_axes=[])(x, net)
        torch.testing.assert_close(out.softmax(1), net(x).softmax(1), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="spatial_axes"):
        FlipTTAInferer(SimpleInferer(), spatial_axes=[0, 3])
