"""The architecture holds: the layering contract, package APIs, no private names across modules, cheap import."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "prunekit"
ROOT = SRC.parents[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> list[tuple[str, str, str, int]]:
    """(importing module, imported module, imported name, line) for every ``from prunekit... import``."""
    out = []
    for path in sorted(SRC.rglob("*.py")):
        me = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "prunekit":
                out.extend((me, node.module, alias.name, node.lineno) for alias in node.names)
    return out


def test_layering_contract_holds() -> None:
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (pip install import-linter)")
    run = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "1 kept, 0 broken" in run.stdout


def test_no_private_name_crosses_a_module() -> None:
    bad = [
        f"{me}:{line} imports {mod}.{name}"
        for me, mod, name, line in _imports()
        if (name.startswith("_") and not name.startswith("__")) or any(p.startswith("_") for p in mod.split("."))
    ]
    assert bad == []


def test_names_crossing_a_package_come_from_its_api() -> None:
    """Outside package P, code imports P's names from ``prunekit.P`` itself, and P lists them in ``__all__``."""
    bad = []
    for me, mod, name, line in _imports():
        parts = mod.split(".")
        if len(parts) < 2 or parts[1] in {"errors", "compat", "version"}:
            continue
        package = ".".join(parts[:2])
        if me == package or me.startswith(package + "."):
            continue
        if len(parts) > 2:
            bad.append(f"{me}:{line} reaches into {mod} for {name}; import it from {package}")
            continue
        init = SRC / parts[1] / "__init__.py"
        exported = next(
            (
                [ast.literal_eval(e) for e in node.value.elts]  # type: ignore[attr-defined]
                for node in ast.parse(init.read_text(encoding="utf-8")).body
                if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__all__"
            ),
            [],
        )
        if name not in exported:
            bad.append(f"{me}:{line} imports {name} from {package}, which does not export it")
    assert bad == []


def test_import_time_budget() -> None:
    """``import prunekit`` costs at most 0.15 s on top of ``import torch`` (measured: ~2 ms; best of 3)."""
    code = (
        "import time, torch\n"
        "t = time.perf_counter()\n"
        "import prunekit\n"
        "print(time.perf_counter() - t)\n"
    )
    times = [
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
        for _ in range(3)
    ]
    assert min(times) < 0.15, times


def test_no_module_is_longer_than_600_lines() -> None:
    """One concept per module: 100-400 lines where the concept allows, none above 600."""
    long = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 600
    }
    assert long == {}


def test_the_package_has_no_import_cycle() -> None:
    grimp = pytest.importorskip("grimp", reason="grimp comes with import-linter")
    graph = grimp.build_graph("prunekit", exclude_type_checking_imports=True)
    cycles = [
        (a, b)
        for a in graph.modules
        for b in graph.find_modules_directly_imported_by(a)
        if graph.chain_exists(importer=b, imported=a)
    ]
    assert cycles == []
