"""The shape of the source tree at one or more git revisions, side by side.

    python benchmarks/tree_stats.py [REV ...]        # default: f91d6ca (before the architecture work) and HEAD

For each revision (checked out with ``git archive`` into a temporary directory): Python files and lines
under ``src/prunekit``, the largest module, import cycles (strongly connected groups of modules, by grimp,
which comes with import-linter), ``_private`` names imported across modules, modules that import the
package root inside a function, and the time of ``import prunekit`` on top of ``import torch`` (median of
``--repeats`` fresh interpreters; the lazy part of the package is not imported).
"""

from __future__ import annotations

import argparse
import ast
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPORT = "import time, torch\nt = time.perf_counter()\nimport prunekit\nprint(time.perf_counter() - t)\n"
CYCLES = """
import grimp, sys
g = grimp.build_graph("prunekit", exclude_type_checking_imports=True)
mods = sorted(g.modules)
seen, groups = set(), []
for m in mods:
    if m in seen:
        continue
    group = {m} | {o for o in mods if o != m and g.chain_exists(importer=m, imported=o)
                   and g.chain_exists(importer=o, imported=m)}
    seen |= group
    if len(group) > 1:
        groups.append(group)
print(len(groups), sum(len(x) for x in groups))
"""


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def private_imports(src: Path) -> tuple[int, int]:
    """(private names imported across modules, modules importing the package root inside a function)."""
    private, root_in_fn = 0, set()
    for path in sorted((src / "prunekit").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "prunekit":
                for alias in node.names:
                    if (alias.name.startswith("_") and not alias.name.startswith("__")) or any(
                        p.startswith("_") and not p.startswith("__") for p in node.module.split(".")
                    ):
                        private += 1
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if (isinstance(node, ast.Import) and any(a.name == "prunekit" for a in node.names)) or (
                        isinstance(node, ast.ImportFrom) and node.module == "prunekit"
                    ):
                        root_in_fn.add(module_name(path, src))
    return private, len(root_in_fn)


def stats(rev: str, repeats: int) -> dict[str, object]:
    blob = subprocess.run(["git", "archive", rev, "src"], cwd=ROOT, capture_output=True, check=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            tar.extractall(tmp, filter="data")
        src = Path(tmp) / "src"
        files = sorted((src / "prunekit").rglob("*.py"))
        lines = {f: len(f.read_text(encoding="utf-8").splitlines()) for f in files}
        largest = max(lines, key=lines.__getitem__)
        env = {"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"}
        run = subprocess.run([sys.executable, "-c", CYCLES], capture_output=True, text=True, env=env)
        cycles = run.stdout.split() if run.returncode == 0 else ["n/a", "n/a"]
        times = []
        for _ in range(repeats):
            t = subprocess.run([sys.executable, "-c", IMPORT], capture_output=True, text=True, env=env)
            if t.returncode == 0:
                times.append(float(t.stdout))
        private, root_in_fn = private_imports(src)
        label = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True)
        return {
            "rev": f"{rev} ({label.stdout.strip()})",
            "files": len(files),
            "lines": sum(lines.values()),
            "largest": f"{lines[largest]} ({largest.relative_to(src / 'prunekit')})",
            "cycle groups / modules": f"{cycles[0]} / {cycles[1]}",
            "private cross-module imports": private,
            "modules importing prunekit in a function": root_in_fn,
            "import prunekit on top of torch": f"{statistics.median(times) * 1000:.1f} ms"
            if times
            else "n/a",
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revs", nargs="*", default=["f91d6ca", "HEAD"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = [stats(rev, args.repeats) for rev in args.revs]
    keys = list(rows[0])
    width = max(len(k) for k in keys)
    for key in keys:
        print(f"{key:{width}s}  " + "  ".join(f"{str(r[key]):>34s}" for r in rows))


if __name__ == "__main__":
    main()
