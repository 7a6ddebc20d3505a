"""CSV text that a spreadsheet opens safely: the one writer of every CSV leukodx produces.

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is run as a formula
by spreadsheet programs (CSV injection): a file named ``=SUM(1+1).jpg`` would become a formula in
predictions.csv. Such text cells (numbers excepted) are written with a leading ``'``.
"""

from __future__ import annotations

import csv
import io
from typing import Iterable, Sequence

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value):
    """``value``, with a leading ``'`` when it is text a spreadsheet would run as a formula."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        try:
            float(value)
            return value
        except ValueError:
            return "'" + value
    return value


def csv_text(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """The CSV text of ``header`` and ``rows`` (sequences), every text cell made safe."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows([safe_cell(v) for v in row] for row in rows)
    return buf.getvalue()


def csv_text_dicts(fieldnames: Sequence[str], rows: Iterable[dict]) -> str:
    """The CSV text of dict rows (keys beyond ``fieldnames`` ignored, missing ones empty)."""
    return csv_text(fieldnames, ([row.get(k, "") for k in fieldnames] for row in rows))


def write_csv(fh, header: Sequence[str], rows: Iterable[Sequence]) -> int:
    """Stream ``header`` and ``rows`` to the text file ``fh`` (cells made safe); returns the row count."""
    writer = csv.writer(fh)
    writer.writerow(header)
    n = 0
    for row in rows:
        writer.writerow([safe_cell(v) for v in row])
        n += 1
    return n
