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


def held_out_sides(clf) -> dict:
    """A bundled classifier's held-out test sides by dataset: each site's of a multi-site model, else its
    dataset's side of the bundled split."""
    from leukodx.data.registry import load_dataset
    from leukodx.data.sites import site_sides
    from leukodx.data.splits import apply_split, bundled_split_path, load_split

    sites = [entry["dataset"] for entry in clf.card["data"].get("sites", [])]
    if sites:
        return {s: site_sides(s)["test"] for s in sites}
    dataset = clf.card["data"]["dataset"]
    return {dataset: apply_split(load_dataset(dataset), load_split(bundled_split_path(dataset)))["test"]}
