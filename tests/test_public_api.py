"""The public namespace is exactly ``__all__`` (sorted, every name resolves), and importing prunekit stays cheap."""

from __future__ import annotations

import importlib
import subprocess
import sys
import types

import prunekit as pk


def test_all_is_sorted_and_every_name_resolves() -> None:
    assert list(pk.__all__) == sorted(pk.__all__)
    for name in pk.__all__:
        value = getattr(pk, name)
        assert value is not None and not isinstance(value, types.ModuleType), name
    assert set(pk.__all__) <= set(dir(pk))


def test_namespace_after_loading_is_exactly_all() -> None:
    for name in pk.__all__:
        getattr(pk, name)
    public = {
        name
        for name, value in vars(pk).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"
        and name not in {"TYPE_CHECKING", "Any", "importlib", "sys"}
    }
    assert public == set(pk.__all__) - {"__version__"}


def test_every_package_exports_what_it_lists() -> None:
    for package in (
        "accel",
        "analysis",
        "cli",
        "core",
        "graph",
        "io",
        "kernels",
        "recipes",
        "report",
        "structured",
        "training",
        "weights",
    ):
        module = importlib.import_module(f"prunekit.{package}")
        assert list(module.__all__) == sorted(module.__all__, key=lambda s: (s.lower(), s)), package
        for name in module.__all__:
            assert hasattr(module, name), f"prunekit.{package}.{name}"


def test_import_does_not_pull_heavy_optional_libraries() -> None:
    heavy = (
        "transformers",
        "lightning",
        "matplotlib",
        "scipy",
        "pydantic",
        "rich",
        "yaml",
        "sklearn",
        "safetensors",
    )
    code = f"import sys, prunekit; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"


def test_a_verb_loads_only_its_own_packages() -> None:
    code = "import sys, prunekit as pk; pk.prune_weights; print(sorted(m for m in sys.modules if m.startswith('prunekit.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "prunekit.weights" in out and "prunekit.recipes" not in out and "prunekit.report" not in out


def test_all_lists_exactly_the_lazy_api() -> None:
    assert sorted(pk.__all__) == sorted([*pk._API, "__version__"])
