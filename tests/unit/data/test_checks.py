"""medpipe.data.checks: every unusable labelled case is listed, in one error, before any work."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medpipe.data.checks import MAX_LISTED, check_labelled_cases
from medpipe.errors import ManifestError


def pair(tmp_path, name, *, label_shape=(8, 8, 4), shift=0.0, values=(0, 1)):
    image, label = tmp_path / f"{name}.nii.gz", tmp_path / f"{name}_label.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.eye(4)), image)
    affine = np.eye(4)
    affine[0, 3] = shift
    data = np.zeros(label_shape, np.uint8)
    data.flat[: len(values)] = values
    nib.save(nib.Nifti1Image(data, affine), label)
    return {"image": str(image), "label": str(label)}


def test_good_cases_pass(tmp_path):
    check_labelled_cases([pair(tmp_path, "a"), pair(tmp_path, "b", values=(0, 1, 2))], 3, split="training")


def test_every_case_off_the_grid_is_named(tmp_path):
    entries = [pair(tmp_path, "ok"), pair(tmp_path, "small", label_shape=(8, 8, 3)), pair(tmp_path, "moved", shift=0.5)]
    with pytest.raises(ManifestError) as e:
        check_labelled_cases(entries, 2, split="validation")
    assert e.value.code == "DATA_GEOMETRY_MISMATCH" and "2 case(s) of split 'validation'" in str(e.value)
    assert "small (image (8, 8, 4), label (8, 8, 3))" in str(e.value) and "moved (affines differ by up to 0.5" in str(e.value)


def test_label_values_outside_the_classes_and_a_bounded_listing(tmp_path):
    entries = [pair(tmp_path, f"c{i}", values=(0, 5)) for i in range(MAX_LISTED + 3)]
    with pytest.raises(ManifestError) as e:
        check_labelled_cases(entries, 2, split="test")
    message = str(e.value)
    assert e.value.code == "DATA_UNEXPECTED_LABELS" and "values [5]" in message and "and 3 more" in message


def test_class_index_labels_of_classifiers(tmp_path):
    check_labelled_cases([{"image": "a", "label": 0}, {"image": "b", "label": 1}], 2, split="training")
    for bad in (2, -1, True):
        with pytest.raises(ManifestError) as e:
            check_labelled_cases([{"image": "a.nii.gz", "label": bad}], 2, split="training")
        assert e.value.code == "DATA_UNEXPECTED_LABELS" and f"class {bad!r}" in str(e.value)
