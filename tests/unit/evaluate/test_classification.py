"""Classifier evaluation against the readers' ratings (the ``rating_key`` of a binary bundle)."""

from __future__ import annotations

import numpy as np
import pytest

from medpipe.evaluate.classification import rating_figures


class Config:
    """The ``get`` of a BundleModel over a plain dict of config ids."""

    def __init__(self, **ids):
        self.ids = ids

    def get(self, config_id, default=None):
        return self.ids.get(config_id, default)


def entries(ratings):
    return [{"case_id": f"n{i}", "label": i % 2, "Malignancy_value": r} for i, r in enumerate(ratings)]


def test_rating_figures_rank_and_error():
    prob1 = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    prob = np.stack([1 - prob1, prob1], axis=1)
    ratings = [1.0, 2.0, 3.0, 5.0, 4.0]
    label_model = rating_figures(Config(rating_key="Malignancy_value"), entries(ratings), prob)
    assert label_model["cases"] == 5 and label_model["spearman"] == pytest.approx(0.9)
    assert "mae" not in label_model and "predicted" not in label_model  # P is not a rating for this bundle
    rated = rating_figures(Config(rating_key="Malignancy_value", target="rating", rating_range=[1, 5]),
                           entries(ratings), prob)  # fmt: skip
    assert rated["predicted"] == [1.0, 2.0, 3.0, 4.0, 5.0] and rated["mae"] == pytest.approx(0.4)


def test_rating_figures_skip_what_has_no_rating():
    prob = np.full((4, 2), 0.5)
    assert rating_figures(Config(), entries([1.0, 2.0, 3.0, 4.0]), prob) is None  # the bundle names no key
    assert rating_figures(Config(rating_key="Malignancy_value"), entries([1.0, "", None, 4.0]), prob) is None
    three = rating_figures(Config(rating_key="Malignancy_value"), entries([1.0, "", 2.0, 4.0]), np.eye(2)[[0, 1, 0, 1]])
    assert three["cases"] == 3
    assert rating_figures(Config(rating_key="Malignancy_value"), entries([1.0, 2.0, 3.0]), np.full((3, 3), 1 / 3)) is None
