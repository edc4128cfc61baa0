"""medpipe.tables: the one CSV writer of every report."""

from __future__ import annotations

import csv
import io

import numpy as np

from medpipe.tables import cell, csv_text, write_csv


def test_cells_that_need_quoting_round_trip():
    rows = [{"series": "a,b", "note": 'said "no"\nthen yes', "value": 0.1 + 0.2, "shape": [512, 512, 99]}]
    text = csv_text(rows, ["series", "note", "value", "shape", "absent"])
    back = list(csv.DictReader(io.StringIO(text)))
    assert back == [{"series": "a,b", "note": 'said "no"\nthen yes', "value": "0.3", "shape": "512x512x99", "absent": ""}]


def test_cell_rules():
    assert cell(None) == "" and cell(float("nan")) == "" and cell(np.float32("inf")) == ""
    assert cell(1 / 3) == "0.333333" and cell(np.float32(0.5)) == "0.5" and cell(np.int64(7)) == "7"
    assert cell(True) == "True" and cell([0.5, 1.25]) == "0.5x1.25" and cell("ok") == "ok"


def test_columns_are_the_declared_ones_in_order_and_extras_are_left_out(tmp_path):
    write_csv(tmp_path / "r.csv", [{"b": 2, "a": 1, "secret": "x"}], ["a", "b"])
    assert (tmp_path / "r.csv").read_text() == "a,b\n1,2\n"
