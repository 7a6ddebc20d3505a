"""Re-serialize result files written before leukodx wrote strict JSON: ``NaN`` / ``Infinity`` -> ``null``.

    python benchmarks/strict_json.py [--check]

Figures are not touched: only the non-finite values (undefined figures, e.g. the PPV of a class a
collapsed model never predicts) change spelling, from the non-standard ``NaN`` literal to ``null``.
Files are rewritten with ``leukodx._atomic.write_json`` (key order kept). ``--check`` only lists them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from leukodx import _atomic

RESULTS = Path(__file__).parent / "results"


def non_strict(path: Path) -> bool:
    def refuse(token: str):
        raise ValueError(token)

    try:
        json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)
    except ValueError:
        return True
    return False


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    bad = [p for p in sorted(RESULTS.rglob("*.json")) if non_strict(p)]
    for p in bad:
        if not args.check:
            _atomic.write_json(p, json.loads(p.read_text(encoding="utf-8")))
        print(f"{'non-strict' if args.check else 'rewritten'}: {p.relative_to(RESULTS.parent)}")
    print(f"{len(bad)} file(s) with NaN / Infinity literals")
    return 1 if (args.check and bad) else 0


if __name__ == "__main__":
    sys.exit(main())
