"""AutocastInferer: bf16 forward passes switched on from a config, float32 out, weights untouched."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SimpleInferer, SlidingWindowInferer
from monai.networks.nets import DynUNet

from medpipe.inferers import AutocastInferer, native_support


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return DynUNet(3, 1, 3, [3, 3, 3], [1, 2, 2], [2, 2], filters=[8, 16, 32], norm_name="instance").eval()


def test_bf16_forward_matches_float32_and_returns_float32():
    net, x = _net(), torch.randn(2, 1, 24, 32, 24)
    with torch.no_grad():
        ref = SimpleInferer()(x, net)
        out = AutocastInferer(SimpleInferer(), enabled=True)(x, net)
    assert out.dtype == torch.float32
    assert not torch.equal(out, ref)  # it really ran in bf16 ...
    # ... and bf16's 8-bit mantissa keeps logits within a few percent and the argmax almost everywhere
    assert (out - ref).abs().max() <= 0.05 * ref.abs().max()
    assert (out.argmax(1) == ref.argmax(1)).float().mean() > 0.98


def test_sliding_window_accumulates_in_float32():
    net, x = _net(), torch.randn(1, 1, 40, 40, 40)
    sw = SlidingWindowInferer(roi_size=(24, 24, 24), overlap=0.25, mode="gaussian")
    with torch.no_grad():
        out = AutocastInferer(sw, enabled=True)(x, net)
        ref = sw(x, net)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert (out.argmax(1) == ref.argmax(1)).float().mean() > 0.98


def test_training_step_keeps_float32_weights_and_gradients():
    net = _net().train()
    x, y = torch.randn(2, 1, 24, 32, 24), torch.randint(0, 3, (2, 24, 32, 24))
    out = AutocastInferer(enabled=True)(x, net)
    torch.nn.functional.cross_entropy(out, y).backward()
    for p in net.parameters():
        assert p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32


def test_disabled_is_a_pass_through():
    net, x = _net(), torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(AutocastInferer(enabled=False)(x, net), SimpleInferer()(x, net))


def test_auto_follows_native_support():
    inferer = AutocastInferer(enabled="auto")
    cpu = torch.device("cpu")
    assert inferer.active(cpu) == native_support(cpu, torch.bfloat16)
    assert AutocastInferer(enabled=False).active(cpu) is False


@pytest.mark.parametrize("kwargs", [{"dtype": "float64"}, {"enabled": "yes"}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match="AutocastInferer"):
        AutocastInferer(**kwargs)






