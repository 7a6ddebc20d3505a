"""Shared by the benchmark drivers: write a result as JSON + a short Markdown table, with versions."""

from __future__ import annotations

import sys
from pathlib import Path

from leukodx import _atomic
from leukodx._versions import provenance

RESULTS = Path(__file__).parent / "results"


def write_result(name: str, result: dict, table_header: list[str], table_rows: list[list], notes: list[str] = ()) -> None:
    prov = provenance(["python"] + sys.argv)
    result = {"benchmark": name, "created": prov["created"], "command": prov["argv"], "provenance": prov, **result}
    _atomic.write_json(RESULTS / f"{name}.json", result)
    lines = [f"# {name}", "", f"Reproduce: `{result['command']}`", "",
             "| " + " | ".join(table_header) + " |", "|" + "---|" * len(table_header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in table_rows]
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    _atomic.write_text(RESULTS / f"{name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def ci(entry: dict | None, digits: int = 4) -> str:
    """``value [lo, hi]`` of a ``{"value", "ci95"}`` estimate (``n/a`` where undefined)."""
    if not entry or entry.get("value") is None:
        return "n/a"
    if not entry.get("ci95"):
        return f"{entry['value']:.{digits}f}"
    return f"{entry['value']:.{digits}f} [{entry['ci95'][0]:.{digits}f}, {entry['ci95'][1]:.{digits}f}]"
