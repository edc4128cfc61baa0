"""The one CSV writer of medpipe's reports (infer, evaluate, robustness).

RFC 4180 CSV through :mod:`csv` (cells holding commas, quotes or newlines are quoted), a header of the
declared columns in order, one row per record. Cells: floats with 6 significant digits, NaN / None as
an empty cell (read back as missing by pandas and spreadsheet programs), lists and tuples joined with
``x`` (``512x512x99``, a shape), everything else as ``str``. Written atomically.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from medpipe.atomic import atomic_write_text


def cell(value: Any) -> str:
    """The text of one CSV cell (see the module docstring)."""
    if value is None or isinstance(value, bool | str):
        return "" if value is None else str(value)
    if isinstance(value, float | np.floating):
        return f"{float(value):.6g}" if math.isfinite(value) else ""
    if isinstance(value, list | tuple):
        return "x".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def csv_text(rows: Iterable[Mapping[str, Any]], fields: Sequence[str]) -> str:
    """CSV text of ``rows`` with the columns ``fields`` (keys of a row that are not fields are left out)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(fields))
    for row in rows:
        writer.writerow([cell(row.get(k)) for k in fields])
    return buf.getvalue()


def write_csv(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]], fields: Sequence[str]) -> None:
    """Write ``rows`` as CSV to ``path`` atomically."""
    atomic_write_text(path, csv_text(rows, fields))
