"""Regenerate the README's results tables from the benchmark results files.

    python benchmarks/readme_tables.py          # rewrite README.md's generated blocks
    python benchmarks/readme_tables.py --check  # exit 1 if README.md disagrees with the results

A generated block in README.md looks like::

    <!-- table: benchmarks/results/NAME.md -->
    | ... the first table of NAME.md, verbatim ... |
    <!-- end table -->

Each NAME.md is written by its benchmark script from NAME.json, so every figure in the README
traces back to a results file and the command at the top of its Markdown. tests/test_readme.py
runs the check.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- table: (?P<src>[^ ]+) -->\n)(?P<body>.*?)(<!-- end table -->)", re.S)


def first_table(markdown: str) -> str:
    """The first Markdown table of a file (consecutive lines starting with '|')."""
    lines, started = [], False
    for line in markdown.splitlines():
        if line.startswith("|"):
            lines.append(line)
            started = True
        elif started:
            break
    if not lines:
        raise ValueError("no table found")
    return "\n".join(lines) + "\n"


def render(readme: str, root: Path = ROOT) -> str:
    """README text with every generated block refilled from its source file."""
    def fill(match: re.Match) -> str:
        source = root / match.group("src")
        return match.group(1) + first_table(source.read_text(encoding="utf-8")) + match.group(4)

    return BLOCK.sub(fill, readme)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when README.md is stale")
    args = ap.parse_args()
    path = ROOT / "README.md"
    current = path.read_text(encoding="utf-8")
    fresh = render(current)
    if args.check:
        if fresh != current:
            print("README.md disagrees with benchmarks/results: run python benchmarks/readme_tables.py", file=sys.stderr)
            return 1
        print(f"README.md agrees with its {len(BLOCK.findall(current))} results tables")
        return 0
    path.write_text(fresh, encoding="utf-8")
    print(f"README.md: {len(BLOCK.findall(fresh))} tables regenerated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
