"""The README's figures are generated from the benchmark results: a stale README fails here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tables():
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "benchmarks" / "readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_tables_match_the_results_files():
    tables = _tables()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = tables.BLOCK.findall(readme)
    assert len(blocks) >= 6  # bundled models, leakage, throughput, expression, smear, flow
    assert tables.render(readme) == readme, "run: python benchmarks/readme_tables.py"


def test_a_changed_figure_is_caught(tmp_path):
    tables = _tables()
    (tmp_path / "r.md").write_text("# r\n\n| a | b |\n|---|---|\n| x | 0.97 |\n")
    readme = "intro\n<!-- table: r.md -->\n| a | b |\n|---|---|\n| x | 0.99 |\n<!-- end table -->\n"
    assert "| x | 0.97 |" in tables.render(readme, tmp_path)
    assert tables.render(readme, tmp_path) != readme


def test_every_result_file_is_strict_json():
    """No NaN / Infinity literals (undefined figures are null): any JSON parser reads the results."""
    import json

    def refuse(token):
        raise AssertionError(f"non-strict JSON literal {token}")

    files = sorted((ROOT / "benchmarks" / "results").rglob("*.json"))
    assert len(files) > 50
    for path in files:
        json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)
