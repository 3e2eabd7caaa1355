"""The public namespace is exactly ``__all__`` (sorted), and importing prunekit stays cheap."""

from __future__ import annotations

import subprocess
import sys
import types

import prunekit as pk


def test_all_is_sorted_and_complete() -> None:
    public = {
        name
        for name, value in vars(pk).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType) and name != "annotations"
    }
    assert set(pk.__all__) - {"__version__"} == public
    assert list(pk.__all__) == sorted(pk.__all__)


def test_import_does_not_pull_heavy_optional_libraries() -> None:
    code = "import sys, prunekit; print(any(m in sys.modules for m in ('transformers', 'lightning', 'matplotlib')))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "False"
