"""medpipe.lungs: the lung field that keeps lesion candidates inside the lungs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medpipe.lungs import LesionSamplingd, LungField, RestrictToLungsd, lung_mask
from tests.conftest import SHARED_DATA

SPACING = (1.5, 1.5, 2.5)


def chest(shape=(120, 100, 40)) -> tuple[np.ndarray, dict[str, tuple]]:
    """A chest phantom: body, two lungs, a nodule on the pleura (its point: the half in the lung), a table under an air gap, -2048 padding
    outside the reconstruction circle."""
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    ct = np.full(shape, -1000.0, dtype=np.float32)
    ct[((x - 60) / 52) ** 2 + ((y - 45) / 34) ** 2 <= 1] = 40.0  # body
    for cx in (35, 85):
        ct[((x - cx) / 18) ** 2 + ((y - 45) / 22) ** 2 + ((z - 20) / 16) ** 2 <= 1] = -850.0  # lungs
    ct[(x - 17) ** 2 + (y - 45) ** 2 + ((z - 20) * 2.5 / 1.5) ** 2 <= 5**2] = 30.0  # nodule on the pleura
    ct[10:110, 88:92, :] = 200.0  # table
    ct[(x - 60) ** 2 + (y - 50) ** 2 > 62**2] = -2048.0  # outside the scan circle
    points = {"lung": (35, 45, 20), "nodule": (20, 45, 20), "outside": (60, 84, 20), "table": (60, 90, 20),
              "gap": (60, 86, 20), "body": (60, 20, 20), "padding": (0, 0, 0)}  # fmt: skip
    return ct, points


def test_lung_field_holds_lungs_and_pleural_nodules_not_air_outside_or_table():
    ct, points = chest()
    mask = lung_mask(ct, SPACING)
    assert mask.shape == ct.shape and mask.dtype == bool
    inside = {name: bool(mask[p]) for name, p in points.items()}
    assert inside == {"lung": True, "nodule": True, "outside": False, "table": False, "gap": False,
                      "body": False, "padding": False}  # fmt: skip
    lungs = ct == -850.0
    assert mask[lungs].mean() > 0.99  # the whole of both lungs
    assert not lung_mask(np.full((30, 30, 10), 40.0), SPACING).any()  # no air inside: no lungs
    small = LungField(min_lung_ml=10_000.0)  # lungs smaller than asked for are not lungs
    assert not small.mask(ct, SPACING).any()


def test_restriction_zeroes_foreground_outside_the_lungs_and_keeps_the_metadata():
    ct, points = chest()
    window = (-1000.0, 400.0)
    image = MetaTensor(torch.as_tensor(np.clip((ct - window[0]) / (window[1] - window[0]), 0, 1))[None],
                       affine=torch.diag(torch.tensor([*SPACING, 1.0], dtype=torch.float64)))  # fmt: skip
    pred = MetaTensor(
        torch.stack([torch.full(ct.shape, 0.2), torch.full(ct.shape, 0.8)]), affine=image.affine
    )
    out = RestrictToLungsd(keys="pred", hu_window=window)({"image": image, "pred": pred})
    fg = out["pred"][1]
    assert fg[points["nodule"]] == pytest.approx(0.8) and fg[points["lung"]] == pytest.approx(0.8)
    assert fg[points["table"]] == 0 and out["pred"][0][points["table"]] == 1
    assert isinstance(out["pred"], MetaTensor) and torch.equal(out["pred"].affine, image.affine)


def test_real_lidc_scan_lung_field_holds_every_nodule():
    from medpipe.data.images import read_image

    ct_dir = SHARED_DATA / "lidc_idri_0003_dicom_xml" / "LIDC-IDRI-0003"
    masks = SHARED_DATA / "lidc_nodule_vois" / "full_ct_masks"
    if not ct_dir.is_dir() or not masks.is_dir():
        pytest.skip(f"real LIDC-IDRI-0003 not available under {SHARED_DATA}")
    import nibabel as nib

    ct = read_image(ct_dir)
    mask = lung_mask(ct.array, ct.spacing)
    litres = mask.sum() * float(np.prod(ct.spacing)) / 1e6
    assert 3.0 < litres < 8.0, litres  # adult lungs
    for n in (2, 3, 4):
        nodule = np.asarray(nib.load(masks / f"LIDC-IDRI-0003_R_{n}.nii.gz").dataobj) > 0
        assert mask[nodule].mean() == 1.0, n
    assert not mask[:, -40:, :].any()  # the table, at the posterior end of the field of view


def test_lesion_sampling_centres_each_lesion_equally_and_negatives_in_the_lungs():
    """Patch centres: one per lesion (a 2-voxel speck as likely as a big nodule), negatives in the lung field."""
    from monai.transforms import RandCropByPosNegLabeld

    ct, _ = chest()
    label = np.zeros(ct.shape, dtype=np.uint8)
    label[25:45, 35:55, 15:25] = 1  # a big lesion in the left lung: 4,000 voxels
    label[85:87, 45, 20] = 1  # a 2-voxel speck in the right one
    window = (-1000.0, 400.0)
    image = MetaTensor(torch.as_tensor(np.clip((ct - window[0]) / (window[1] - window[0]), 0, 1))[None],
                       affine=torch.diag(torch.tensor([*SPACING, 1.0])))  # fmt: skip
    data = LesionSamplingd(hu_window=window, bg_stride=3)(
        {"image": image, "label": MetaTensor(torch.as_tensor(label)[None])}
    )
    fg, bg = data["fg_centres"], data["bg_centres"]
    assert len(fg) == 2 and label.ravel()[fg].all()
    field = lung_mask(ct, SPACING)
    assert field.ravel()[bg].all() and not label.ravel()[bg].any() and len(bg) > 0
    assert not ((ct.ravel()[bg] > -500) & ~field.ravel()[bg]).any()  # no body, table or outside air
    crop = RandCropByPosNegLabeld(["image", "label"], "label", (8, 8, 4), pos=1, neg=0, num_samples=1,
                                  fg_indices_key="fg_centres", bg_indices_key="bg_centres")  # fmt: skip
    crop.set_random_state(0)
    speck = sum(float(crop(data)[0]["label"].sum()) < 10 for _ in range(200))
    assert 60 < speck < 140  # about half the positive patches are on the speck (voxel sampling: 1 in 2,000)
    passed = LesionSamplingd(enabled=False)({"image": image, "label": data["label"]})
    assert "fg_centres" not in passed
