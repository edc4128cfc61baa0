"""medpipe.infer.preview: which slices a person is shown, and a PNG that is written whole."""

from __future__ import annotations

import numpy as np
import pytest

from medpipe.infer.lesions import measure_lesions
from medpipe.infer.preview import preview_slices, write_preview

PNG = b"\x89PNG\r\n\x1a\n"


def volume_with_lesions():
    mask = np.zeros((40, 40, 30), np.uint8)
    mask[5:15, 5:15, 20:24] = 1  # the largest: slices 20-23
    mask[25:30, 25:30, 8:10] = 1  # slices 8-9
    mask[30:32, 5:7, 21:23] = 1  # small, on a slice already shown
    return mask, measure_lesions(mask, np.eye(4))


def test_slices_through_the_largest_lesions_distinct_and_bounded():
    mask, lesions = volume_with_lesions()
    assert preview_slices(mask, lesions) == [21, 8]  # the third lesion's slice (21) is already there
    assert preview_slices(mask, lesions, max_slices=1) == [21]
    assert preview_slices(mask, []) == [15]  # nothing found: the middle slice


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_a_png_with_one_panel_per_slice_and_no_temporary(tmp_path, modality):
    import matplotlib.image as mpimg

    mask, lesions = volume_with_lesions()
    image = np.random.default_rng(0).normal(0, 300, mask.shape).astype(np.float32)
    path = write_preview(tmp_path / "p.png", image, mask, lesions, title="series x: 3 lesion(s)", modality=modality)
    assert path.read_bytes()[:8] == PNG and [p.name for p in tmp_path.iterdir()] == ["p.png"]
    height, width = mpimg.imread(path).shape[:2]
    assert width == 2 * 4 * 80 and height == int(4.3 * 80)  # two panels of 4 in at 80 dpi
