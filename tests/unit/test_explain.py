"""medpipe.explain: the default Grad-CAM layer (the explain command end to end: tests/integration/test_malignancy_bundle.py)."""

from __future__ import annotations

import torch

from tests.unit.bundle.test_classifier import bundle_network


def test_default_grad_cam_layer_is_the_last_block_with_a_usable_map():
    from monai.networks.nets import ResNet

    from medpipe.explain import pick_target_layer

    vessel_like = ResNet("basic", [1, 1, 1, 1], [4, 8, 16, 32], spatial_dims=3, n_input_channels=1,
                         conv1_t_size=3, conv1_t_stride=1, no_max_pool=True, num_classes=2)  # fmt: skip
    assert pick_target_layer(vessel_like, torch.zeros(1, 1, 28, 28, 28)) == "layer4"  # 4x4x4 map
    net, crop = bundle_network()
    assert pick_target_layer(net, torch.zeros(1, 1, *crop)) == "layer3"  # its layer4 map is 2x2x2
    assert pick_target_layer(net, torch.zeros(1, 1, 8, 8, 8)) == "layer1"  # 4x4x4 there, 2x2x2 after
    assert pick_target_layer(net, torch.zeros(1, 1, 4, 4, 4)) == "layer1"  # none reaches 4: last > 1 voxel
