"""Architecture figures before and after the one-design refactor (issue 10), measured on two git trees.

    python benchmarks/architecture.py [--before f43eefb] [--after HEAD] [--suite]

For each tree: Python lines of the package, places that read or write safetensors directly (bundle
code paths), places that assemble a model card, copies of bootstrap-CI code, training loops
(``optimizer.step()`` calls), the longest functions, and the import-linter contracts of the
*after* tree's ``.importlinter`` checked against both trees. Also: whether every bundled model's
weights are byte-identical across the two trees, and (``--suite``) the test suite's wall time on
the current checkout.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

from _common import write_result

ROOT = Path(__file__).resolve().parents[1]

PATTERNS = {
    # direct safetensors reads / writes: every one is a bundle or checkpoint code path
    "bundle_code_paths": r"\b(?:save_file|load_file|safe_open)\(",
    # a card assembled by hand as a dict literal starting with its name
    "cards_assembled_by_hand": r"\bcard\s*=\s*\{\s*\"name\"",
    # a card assembled by the one card builder
    "cards_from_build_card": r"(?<!def )\bbuild_card\(",
    # a bootstrap resampling loop: indices drawn with replacement from range(n)
    "bootstrap_ci_copies": r"\.integers\(0,\s*(?:n|d\.size|len\([^)]*\)),\s*(?:n|d\.size|len\([^)]*\))\)",
    # a fit loop that keeps its own best epoch / step
    "own_best_epoch_selection": r"\bbest\s*=\s*\{\s*\"(?:macro_f1|map50|dice)\"",
    # fits that run on the shared training engine
    "fits_on_the_shared_engine": r"(?<!class )\bEngine\(",
    # fits that write a resumable checkpoint
    "resumable_fit_loops": r"checkpoint\.save_state\(",
}


def extract(rev: str, dest: Path) -> Path:
    data = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def measure(tree: Path) -> dict:
    pkg = tree / "src" / "leukodx"
    files = sorted(pkg.rglob("*.py"))
    lines = 0
    counts = {k: 0 for k in PATTERNS}
    where = {k: set() for k in PATTERNS}
    functions = []
    for f in files:
        text = f.read_text(encoding="utf-8")
        lines += sum(1 for line in text.splitlines() if line.strip())
        rel = str(f.relative_to(tree / "src"))
        for key, pattern in PATTERNS.items():
            n = len(re.findall(pattern, text))
            counts[key] += n
            if n:
                where[key].add(rel)
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((node.end_lineno - node.lineno + 1, f"{rel}:{node.name}"))
    functions.sort(reverse=True)
    return {"python_files": len(files), "python_lines": lines, **counts, "package_cycles": package_cycles(pkg),
            "models_import_zoo": any("leukodx.zoo" in f.read_text() for f in (pkg / "models").rglob("*.py")),
            "files": {k: sorted(v) for k, v in where.items()},
            "longest_functions": [{"lines": n, "function": name} for n, name in functions[:5]]}


def package_cycles(pkg: Path) -> list[str]:
    """Pairs of leukodx sub-packages that import each other (at any depth, function-level imports too)."""
    edges: dict[str, set[str]] = {}
    for f in pkg.rglob("*.py"):
        parts = f.relative_to(pkg).with_suffix("").parts
        src = parts[0]
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for name in names:
                if name.startswith("leukodx.") and name.split(".")[1] != src:
                    edges.setdefault(src, set()).add(name.split(".")[1])
    return sorted(f"{a} <-> {b}" for a in edges for b in edges[a] if a < b and a in edges.get(b, set()))


def contracts(tree: Path, config: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    proc = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--config", str(config)], cwd=tree,
                          capture_output=True, text=True, env=env)
    m = re.search(r"Contracts: (\d+) kept, (\d+) broken", proc.stdout)
    return {"kept": int(m.group(1)), "broken": int(m.group(2))} if m else {"error": proc.stdout[-300:] + proc.stderr[-300:]}


def weights(tree: Path) -> dict:
    import hashlib

    out = {}
    for w in sorted((tree / "src" / "leukodx" / "weights").rglob("model.safetensors")):
        out[w.parent.name] = hashlib.sha256(w.read_bytes()).hexdigest()
    return out


STARTUP_COMMANDS = (["--help"], ["datasets", "list"], ["flow", "info", "{data}/flow/tidytof/ddpr/UPN1_Basal.fcs"],
                    ["--version"])


def startup_seconds(tree: Path, repeats: int = 5) -> dict:
    """Median wall time of light commands run from ``tree``'s sources (target: under 1.5 s)."""
    from leukodx.data.root import resolve_data_root

    data = str(resolve_data_root(None))
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    out = {}
    for args in STARTUP_COMMANDS:
        args = [a.replace("{data}", data) for a in args]
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "leukodx", *args], capture_output=True, text=True, env=env)
            times.append(time.perf_counter() - t0)
        out[" ".join(args).replace(data, "DATA")] = {"median_s": round(sorted(times)[len(times) // 2], 3),
                                                     "exit_code": proc.returncode}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default="f43eefb", help="git revision before the refactor")
    ap.add_argument("--after", default="HEAD", help="git revision after it")
    ap.add_argument("--suite", action="store_true", help="also time the whole test suite on this checkout")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {name: extract(rev, Path(tmp) / name) for name, rev in (("before", args.before), ("after", args.after))}
        result = {"revisions": {"before": args.before, "after": args.after}}
        for name, tree in trees.items():
            config = tree / ".importlinter"
            result[name] = {**measure(tree), "import_contracts": contracts(tree, config) if config.exists() else {},
                            "startup": startup_seconds(tree)}
        w_before, w_after = weights(trees["before"]), weights(trees["after"])
        result["bundled_weights"] = {name: {"sha256": digest[:16], "unchanged": w_before.get(name) == digest
                                            if name in w_before else None}
                                     for name, digest in w_after.items()}
    if args.suite:
        started = time.time()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=ROOT,
                              capture_output=True, text=True)
        result["test_suite"] = {"seconds": round(time.time() - started, 1), "exit_code": proc.returncode,
                                "summary": proc.stdout.strip().splitlines()[-1]}
    b, a = result["before"], result["after"]
    keys = ("python_lines", "bundle_code_paths", "cards_assembled_by_hand", "cards_from_build_card",
            "bootstrap_ci_copies", "fits_on_the_shared_engine", "resumable_fit_loops")
    rows = [[k.replace("_", " "), b[k], a[k]] for k in keys]
    rows.append(["files with a fit loop keeping its own best epoch", len(b["files"]["own_best_epoch_selection"]),
                 len(a["files"]["own_best_epoch_selection"])])
    rows.append(["models/ imports the zoo", b["models_import_zoo"], a["models_import_zoo"]])
    rows.append(["files with bundle code paths", len(b["files"]["bundle_code_paths"]), len(a["files"]["bundle_code_paths"])])
    rows.append(["sub-packages importing each other", "; ".join(b["package_cycles"]) or "none",
                 "; ".join(a["package_cycles"]) or "none"])
    rows.append(["longest function (lines)", f"{b['longest_functions'][0]['lines']} ({b['longest_functions'][0]['function']})",
                 f"{a['longest_functions'][0]['lines']} ({a['longest_functions'][0]['function']})"])
    def kept(c: dict) -> str:
        return f"{c['kept']} kept, {c['broken']} broken" if "kept" in c else "no contract file"

    rows.append(["import-linter contracts", kept(b["import_contracts"]), kept(a["import_contracts"])])
    changed = [n for n, v in result["bundled_weights"].items() if v["unchanged"] is False]
    new = [n for n, v in result["bundled_weights"].items() if v["unchanged"] is None]
    rows.append(["bundled weights byte-identical", "-", f"{len(result['bundled_weights']) - len(changed) - len(new)} of "
                 f"{len(result['bundled_weights']) - len(new)} (new: {', '.join(new) or 'none'}; changed: "
                 f"{', '.join(changed) or 'none'})"])
    for command, entry in a["startup"].items():
        old = b["startup"].get(command, {})
        rows.append([f"start-up: leukodx {command} (median of 5)", f"{old.get('median_s', 'n/a')} s",
                     f"{entry['median_s']} s"])
    if "test_suite" in result:
        rows.append(["test suite wall time, this machine", "-", f"{result['test_suite']['seconds']} s "
                     f"({result['test_suite']['summary']})"])
    notes = [f"bundle code paths after: {', '.join(a['files']['bundle_code_paths'])}",
             f"bootstrap loops after: {', '.join(a['files']['bootstrap_ci_copies'])}",
             "counts are regex matches over src/leukodx (see PATTERNS in this script); 'before' is the tree "
             "as it was before issue 10"]
    write_result("architecture", result, ["figure", "before", "after"], rows, notes)


if __name__ == "__main__":
    main()
