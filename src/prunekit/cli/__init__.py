"""The ``prunekit`` command line and the demo: a thin layer over the public API."""

from __future__ import annotations

from prunekit.cli.main import build_parser, main

__all__ = [
    "build_parser",
    "main",
]
