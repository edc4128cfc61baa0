"""--init-from / --freeze / --pretrained-lr-scale: what is loaded, what trains, at which learning rate."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import DenseNet121, ResNet

from medpipe.errors import BundleError
from medpipe.transfer import freeze, frozen_parameters, init_from, layer_names, regroup_optimizer


def resnet(num_classes: int = 2, widths=(4, 8, 16, 32)) -> ResNet:
    torch.manual_seed(num_classes)
    return ResNet("basic", [1, 1, 1, 1], list(widths), spatial_dims=3, n_input_channels=1,
                  conv1_t_size=3, conv1_t_stride=2, no_max_pool=True, num_classes=num_classes)  # fmt: skip


def test_loads_matching_weights_and_reports_the_rest(tmp_path):
    src, dst = resnet(3), resnet(2)
    ckpt = tmp_path / "src.pt"
    torch.save({"model": src.state_dict()}, ckpt)  # MONAI CheckpointSaver layout
    report = init_from(dst, ckpt)
    assert torch.equal(dst.conv1.weight, src.conv1.weight)
    assert torch.equal(dst.layer4[0].conv2.weight, src.layer4[0].conv2.weight)
    assert set(report.skipped) == {"fc.weight", "fc.bias"}  # 3 classes vs 2: shape mismatch
    assert not torch.equal(dst.fc.weight, src.fc.weight[:2])
    assert len(report.loaded) == len(dst.state_dict()) - 2
    assert "skipped 2" in report.lines()[0]
    # a bundle folder means its models/model.pt; a plain state dict works too
    (tmp_path / "b" / "models").mkdir(parents=True)
    torch.save(src.state_dict(), tmp_path / "b" / "models" / "model.pt")
    assert init_from(resnet(2), tmp_path / "b").source.name == "model.pt"


def test_bad_sources_are_coded(tmp_path):
    with pytest.raises(BundleError) as e:
        init_from(resnet(), tmp_path / "missing.pt")
    assert e.value.code == "INIT_SOURCE_NOT_FOUND"
    (tmp_path / "empty_bundle").mkdir()
    with pytest.raises(BundleError) as e:
        init_from(resnet(), tmp_path / "empty_bundle")
    assert e.value.code == "INIT_SOURCE_NOT_FOUND"
    other = tmp_path / "densenet.pt"
    torch.save(DenseNet121(spatial_dims=3, in_channels=1, out_channels=2).state_dict(), other)
    with pytest.raises(BundleError) as e:
        init_from(resnet(), other)
    assert e.value.code == "INIT_NO_MATCHING_LAYERS"
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(BundleError) as e:
        init_from(resnet(), garbage)
    assert e.value.code == "CHECKPOINT_UNREADABLE"


def test_freeze_strategies():
    net = resnet()
    total = sum(p.numel() for p in net.parameters())
    assert freeze(net, "none") == (total, total)
    trainable, _ = freeze(net, "backbone")
    assert trainable == net.fc.weight.numel() + net.fc.bias.numel()
    frozen = frozen_parameters(net, "until:layer2")
    assert frozen[0] == "conv1.weight" and frozen[-1].startswith("layer2.")
    assert not any(n.startswith(("layer3", "layer4", "fc")) for n in frozen)
    freeze(net, "until:layer2")
    assert not net.layer2[0].conv1.weight.requires_grad and net.layer3[0].conv1.weight.requires_grad
    assert "layer1.0" in layer_names(net)
    with pytest.raises(BundleError) as e:
        freeze(net, "until:layr3")
    assert e.value.code == "FREEZE_UNKNOWN_LAYER" and "'layer3'" in str(e.value)
    with pytest.raises(BundleError) as e:
        freeze(net, "half")
    assert e.value.code == "FREEZE_INVALID"
    dense = DenseNet121(spatial_dims=3, in_channels=1, out_channels=2)
    freeze(dense, "backbone")
    assert [n for n, p in dense.named_parameters() if p.requires_grad][0].startswith("class_layers")


def test_optimizer_regrouped_with_scaled_pretrained_lr():
    net = resnet()
    freeze(net, "until:layer1")
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
    pretrained = {n for n, _ in net.named_parameters() if not n.startswith("fc")}
    groups = regroup_optimizer(opt, net, pretrained, 0.1)
    assert [(g, lr) for g, _, lr in groups] == [("pretrained", pytest.approx(1e-4)), ("new", 1e-3)]
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(net.conv1.weight) not in in_opt and id(net.layer2[0].conv1.weight) in in_opt
    assert all(g["weight_decay"] == 0.01 for g in opt.param_groups)
    assert opt.param_groups[1]["params"] == [net.fc.weight, net.fc.bias]
