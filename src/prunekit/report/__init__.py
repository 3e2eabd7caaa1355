"""Reports: ``report.json`` (every number), a self-contained ``report.html`` and terminal tables."""

from __future__ import annotations

from prunekit.report.html import (
    demo_report,
    envelope,
    load_report,
    prune_report,
    render_html,
    write_demo_report,
    write_report,
)
from prunekit.report.plots import make_plots, sensitivity_curves
from prunekit.report.tables import flatten_metrics, fmt_value, rich_before_after, rich_layers, rich_states

__all__ = [
    "demo_report",
    "envelope",
    "flatten_metrics",
    "fmt_value",
    "load_report",
    "make_plots",
    "prune_report",
    "render_html",
    "rich_before_after",
    "rich_layers",
    "rich_states",
    "sensitivity_curves",
    "write_demo_report",
    "write_report",
]
