"""The HTML case report: summary, flags, and every image with its thumbnail and prediction.

Rendered from the jinja2 template ``templates/case.html.j2`` with autoescaping, so file names and
labels can never inject markup. The report is streamed: its image rows come from an iterator (a
case's row file, read one image at a time) and the page is written piece by piece.
"""

from __future__ import annotations

import base64
import os
from typing import Iterable, Iterator


def _template():
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("leukodx.diagnosis", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    return env.get_template("case.html.j2")


def _report_rows(entries: Iterable[dict]) -> Iterator[dict]:
    """Each entry (``row`` with its base64 ``thumbnail`` and, with ``--explain``, ``heatmap``) as a row
    of the images table: the runner-up class added."""
    for e in entries:
        r = e["row"]
        probs = sorted(r["probabilities"].items(), key=lambda kv: -kv[1])
        second = f"{probs[1][0]} {probs[1][1]:.2f}" if len(probs) > 1 else ""
        yield {**r, "second": second, "thumbnail": e.get("thumbnail"), "heatmap": e.get("heatmap")}


def _pieces(result: dict, entries: Iterable[dict]) -> Iterator[str]:
    model = result["model"]
    return _template().generate(
        result=result, model=model, acc=model.get("test_accuracy") or None, s=result["summary"],
        smear=result["smear"]["summary"] if "smear" in result else None, rows=_report_rows(entries),
        explain=bool(result.get("explained")))


def report_entries(result: dict) -> list[dict]:
    """The entries of a result held in memory (``diagnose`` without ``out_dir``), in report order:
    unsure images first, then by the top class's probability."""
    thumbs, heat = result.get("_thumbnails", {}), result.get("_explanations", {})

    def b64(data: bytes | None) -> str | None:
        return None if data is None else base64.b64encode(data).decode("ascii")

    return [{"row": r, "thumbnail": b64(thumbs.get(r["input"])), "heatmap": b64(heat.get(r["input"]))}
            for r in sorted(result["rows"], key=lambda r: (not r["unsure"], r["probability"]))]


def render_case_html(result: dict) -> str:
    """The report of a result held in memory, as text."""
    return "".join(_pieces(result, report_entries(result)))


def write_case_html(path: str | os.PathLike, result: dict, entries: Iterable[dict]) -> None:
    """The report written atomically to ``path``, its image rows taken from ``entries`` one at a time
    (in the order given)."""
    from leukodx import _atomic

    with _atomic.atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for piece in _pieces(result, entries):
            fh.write(piece)
