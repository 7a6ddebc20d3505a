"""Shared by the benchmark drivers: write a result as JSON + a short Markdown table, with versions."""

from __future__ import annotations

import datetime as _dt
import sys
from pathlib import Path

from leukodx import _atomic
from leukodx._versions import versions

RESULTS = Path(__file__).parent / "results"


def write_result(name: str, result: dict, table_header: list[str], table_rows: list[list], notes: list[str] = ()) -> None:
    result = {"benchmark": name, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "command": "python " + " ".join(sys.argv), "versions": versions(), **result}
    _atomic.write_json(RESULTS / f"{name}.json", result)
    lines = [f"# {name}", "", f"Reproduce: `{result['command']}`", "",
             "| " + " | ".join(table_header) + " |", "|" + "---|" * len(table_header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in table_rows]
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    _atomic.write_text(RESULTS / f"{name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def ci(entry: dict, digits: int = 4) -> str:
    return f"{entry['value']:.{digits}f} [{entry['ci95'][0]:.{digits}f}, {entry['ci95'][1]:.{digits}f}]"
