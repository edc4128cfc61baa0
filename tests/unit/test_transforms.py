"""medpipe.transforms: the fast RandAffined is MONAI's RandAffined; WithoutMetadata is scoped and cache-safe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader, MetaTensor, get_track_meta, set_track_meta
from monai.transforms import Compose, RandAffined, RandFlipd

from medpipe import transforms as mt

KW = dict(
    keys=["image", "label"],
    prob=0.7,
    rotate_range=[0.26] * 3,
    scale_range=[0.1] * 3,
    translate_range=[2, 0, 1],
    shear_range=[0.05] * 6,
    mode=["bilinear", "nearest"],
    padding_mode="zeros",
)


def _case(shape=(21, 30, 17), seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(1, *shape, generator=g),
        "label": torch.randint(0, 3, (1, *shape), generator=g).float(),
    }


@pytest.mark.parametrize("shape", [(21, 30, 17), (40, 56, 40)])
def test_fast_rand_affined_reproduces_monai_draw_for_draw(shape):
    """Same seed, same calls: the same transforms (odd and even sizes, with shear and translation)."""
    ours, monai = mt.RandAffined(**KW).set_random_state(7), RandAffined(**KW).set_random_state(7)
    set_track_meta(False)  # plain tensors: the fast path
    try:
        for i in range(12):
            d = _case(shape, seed=i)
            a, b = ours(dict(d)), monai(dict(d))
            assert type(a["image"]) is torch.Tensor and a["image"].dtype == torch.float32
            torch.testing.assert_close(a["image"], b["image"], atol=1e-4, rtol=1e-4)
            # nearest neighbour: a float64 rounding tie may flip a voxel or two, never more
            assert (a["label"] != b["label"]).sum() <= 2
    finally:
        set_track_meta(True)


def test_metatensor_input_takes_monais_invertible_path():
    d = {k: MetaTensor(v) for k, v in _case().items()}
    t = mt.RandAffined(**{**KW, "prob": 1.0}).set_random_state(0)
    assert not t._fast_path_ok(d, None)
    out = t(d)
    assert isinstance(out["image"], MetaTensor) and out["image"].applied_operations
    back = t.inverse(out)
    assert back["image"].shape == d["image"].shape


def test_grid_sample_theta_identity():
    theta = mt.grid_sample_theta(torch.eye(4, dtype=torch.float64), (5, 6, 7))
    torch.testing.assert_close(theta, torch.eye(3, 4, dtype=torch.float64)[None])


def test_without_metadata_runs_plain_and_restores_tracking():
    tail = mt.WithoutMetadata([RandFlipd(keys=["image", "label"], prob=1.0, spatial_axis=0)])
    d = {k: MetaTensor(v) for k, v in _case().items()}
    d["name"] = "case"
    out = tail(d)
    assert type(out["image"]) is torch.Tensor and out["name"] == "case"
    torch.testing.assert_close(out["image"], d["image"].as_tensor().flip(1))
    assert get_track_meta() is True
    with pytest.raises(RuntimeError):
        mt.WithoutMetadata([lambda x: (_ for _ in ()).throw(RuntimeError("boom"))])({"image": torch.zeros(1)})
    assert get_track_meta() is True  # restored on error too


def test_hippocampus_cache_is_never_written_by_its_augmentation():
    """The bundle trains with CacheDataset(copy_cache=False): its random tail must not write into the cache."""
    from medpipe.bundle.workflow import build_workflow, parsed
    from tests.conftest import REPO

    wf = build_workflow(REPO / "bundles" / "hippocampus_mri", "train", {"device": "$torch.device('cpu')"})
    head, tail = parsed(wf, "train::random_transforms")
    assert isinstance(tail, mt.WithoutMetadata) and wf.parser.get("train::dataset::copy_cache") is False
    chain = Compose([head, tail])
    chain.set_random_state(0)
    data = [{k: MetaTensor(v) for k, v in _case(seed=i).items()} for i in range(6)]
    ds = CacheDataset(data, chain, cache_rate=1.0, copy_cache=False, progress=False)
    roi = tuple(parsed(wf, "roi_size"))
    assert ds._cache[0]["image"].shape[1:] == roi  # the pad is cached, the random tail is not
    before = [np.array(c[k]).copy() for c in ds._cache for k in ("image", "label")]
    for _ in range(4):
        for batch in DataLoader(ds, batch_size=2, shuffle=True):
            assert batch["image"].shape == (2, 1, *roi) and type(batch["image"]) is torch.Tensor
    after = [np.array(c[k]) for c in ds._cache for k in ("image", "label")]
    for b, a in zip(before, after, strict=True):
        np.testing.assert_array_equal(b, a)
