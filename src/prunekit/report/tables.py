"""Report tables: number formatting, the before/after and layer tables (HTML and rich), model states."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

_METRIC_ROWS: tuple[tuple[str, str, str], ...] = (
    # key, label, format
    ("params", "parameters", "int"),
    ("nonzeros", "non-zero parameters", "int"),
    ("sparsity", "weight sparsity", "pct"),
    ("macs", "MACs (one example)", "int"),
    ("file_bytes", "file size", "bytes"),
    ("param_bytes", "parameter memory", "bytes"),
    ("peak_forward_bytes", "peak forward memory (activations)", "bytes"),
    ("latency_ms", "latency, median", "ms"),
    ("latency_iqr_ms", "latency, IQR", "ms"),
    ("accuracy", "accuracy", "pct"),
    ("loss", "loss", "float"),
)


def flatten_metrics(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """Metrics with the latency dict flattened into ``latency_ms`` / ``latency_iqr_ms``."""
    if not metrics:
        return {}
    out = {k: v for k, v in metrics.items() if k != "latency"}
    lat = metrics.get("latency")
    out["latency_ms"] = lat.get("median_ms") if isinstance(lat, dict) else None
    out["latency_iqr_ms"] = lat.get("iqr_ms") if isinstance(lat, dict) else None
    return out


def fmt_value(value: Any, kind: str) -> str:
    """Format one number for tables (``None`` -> '-')."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "pct":
        return f"{float(value):.2%}"
    if kind == "bytes":
        from prunekit.core import human_bytes

        return human_bytes(float(value))
    if kind == "ms":
        return f"{float(value):.3f} ms"
    return f"{float(value):.4g}"


def before_after_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """``(label, before, after, after/before)`` for the before/after table."""
    before, after = flatten_metrics(report.get("before")), flatten_metrics(report.get("after"))
    rows = []
    for key, label, kind in _METRIC_ROWS:
        b, a = before.get(key), after.get(key)
        if b is None and a is None:
            continue
        ratio = "-"
        if key == "latency_ms" and isinstance(b, (int, float)) and isinstance(a, (int, float)):
            spread = max(
                float(before.get("latency_iqr_ms") or 0.0), float(after.get("latency_iqr_ms") or 0.0)
            )
            if abs(a - b) <= spread:  # the difference is inside the run-to-run spread: not a result
                rows.append(
                    (label, fmt_value(b, kind), fmt_value(a, kind), f"~ same (± {spread:.3f} ms IQR)")
                )
                continue
        if (
            isinstance(b, (int, float))
            and isinstance(a, (int, float))
            and b
            and kind in ("int", "bytes", "ms")
        ):
            ratio = f"{a / b:.3f}x"
        rows.append((label, fmt_value(b, kind), fmt_value(a, kind), ratio))
    return rows


def html_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], num_from: int = 1) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f"<td class='num'>{html.escape(str(c))}</td>"
            if i >= num_from
            else f"<td>{html.escape(str(c))}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


LAYER_COLUMNS = (
    "layer",
    "type",
    "shape before",
    "shape after",
    "params before",
    "params after",
    "non-zeros",
    "sparsity",
)  # the per-layer table of every report (HTML and terminal); columns from index 4 are numbers


def layer_table_rows(layers: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for r in layers:
        shape_b = "x".join(map(str, r.get("shape_before") or [])) or "-"
        shape_a = (
            "x".join(map(str, r.get("shape_after") or [])) if r.get("shape_after") is not None else "removed"
        )
        out.append(
            [
                r["name"],
                r["type"],
                shape_b,
                shape_a,
                f"{r['params_before']:,}",
                f"{r['params_after']:,}",
                f"{r['nonzeros_after']:,}",
                f"{r['sparsity_after']:.1%}",
            ]
        )
    return out


def demo_table(rows: list[dict[str, Any]]) -> str:
    return html_table(
        (
            "method",
            "target",
            "sparsity",
            "params",
            "non-zeros",
            "MACs",
            "acc pruned",
            "acc fine-tuned",
            "file",
            "latency",
            "latency note",
        ),
        [
            [
                r["method"] if r["method"] == "dense" else f"{r['method']} {r['criterion']}",
                "-" if r["method"] == "dense" else f"{r['target']:.0%}",
                fmt_value(r["sparsity"], "pct"),
                fmt_value(r["params"], "int"),
                fmt_value(r["nonzeros"], "int"),
                fmt_value(r["macs"], "int"),
                fmt_value(r["accuracy_pruned"], "pct"),
                fmt_value(r["accuracy_finetuned"], "pct"),
                fmt_value(r["file_bytes"], "bytes"),
                fmt_value(r.get("latency_ms"), "ms"),
                str(r.get("latency_note") or ""),
            ]
            for r in rows
        ],
    )


def rich_before_after(report: dict[str, Any]) -> Any:
    """The before/after table as a ``rich.table.Table``."""
    from rich.table import Table

    table = Table(title=report.get("title", "prunekit report"))
    table.add_column("metric")
    has_after = bool(report.get("after"))
    for col in ("before", "after", "after / before") if has_after else ("model",):
        table.add_column(col, justify="right")
    for row in before_after_rows(report):
        table.add_row(*(row if has_after else row[:2]))
    return table


def rich_states(states: list[dict[str, Any]], title: str = "Model states") -> Any:
    """The model-states table (dense, pruned, accelerated, exported, quantized) for the console."""
    from rich.table import Table

    t = Table(title=title)
    for i, col in enumerate(STATE_COLUMNS):
        t.add_column(col, justify="left" if i == 0 else "right")
    for row in state_rows(states):
        t.add_row(*row)
    return t


def rich_layers(layers: list[dict[str, Any]], title: str = "Layers") -> Any:
    """The per-layer table as a ``rich.table.Table``."""
    from rich.table import Table

    table = Table(title=title)
    for i, col in enumerate(LAYER_COLUMNS):
        table.add_column(col, justify="right" if i >= 4 else "left")
    for row in layer_table_rows(layers):
        table.add_row(*row)
    return table


def mask_note(report: dict[str, Any]) -> str | None:
    """A sentence when the pruned model's memory includes mask buffers (so "parameter memory" grew)."""
    before, after = report.get("before") or {}, report.get("after") or {}
    b, a = before.get("param_bytes"), after.get("param_bytes")
    if not isinstance(b, int) or not isinstance(a, int) or after.get("params") != before.get("params"):
        return None
    if a <= b or not after.get("sparsity"):
        return None
    from prunekit.core import human_bytes

    return (
        f"masks add {human_bytes(float(a - b))} ({a - b:,} bytes) to the parameter memory: one bool per weight "
        "of every pruned layer; pk.make_permanent removes them (the zeros stay)"
    )


def display_path(value: str) -> str:
    """An absolute path shown relative to the current directory (a report is read on other machines)."""
    import os

    if not isinstance(value, str) or not os.path.isabs(value):
        return value
    rel = os.path.relpath(value)
    return (
        rel
        if not rel.startswith(os.pardir + os.sep + os.pardir + os.sep + os.pardir)
        else os.path.basename(value)
    )


STATE_COLUMNS = (
    "state",
    "params",
    "non-zeros",
    "MACs",
    "file size",
    "latency b1 (median ± IQR)",
    "latency large batch",
    "peak memory",
    "accuracy",
    "energy / inference, estimate (Horowitz 2014)",
)


def state_rows(states: list[dict[str, Any]]) -> list[list[str]]:
    """Rows of the model-states table from ``accel.model_state_report``-style dicts."""

    def lat(row: dict[str, Any], which: str | None) -> str:
        table = row.get("latency") or {}
        key = which or next((k for k in sorted(table, key=int) if k != "1"), None)
        if key is None or key not in table:
            return "-"
        t = table[key]
        text = f"{t['median_ms']:.3f} ms ± {t['iqr_ms']:.3f}"
        return text if which else f"{text} (batch {key})"

    out = []
    for r in states:
        energy = r.get("energy") or {}
        total = energy.get("total_pj")
        out.append(
            [
                str(r.get("state")),
                fmt_value(r.get("params"), "int"),
                fmt_value(r.get("nonzeros"), "int"),
                fmt_value(r.get("macs"), "int"),
                fmt_value(r.get("file_bytes"), "bytes"),
                lat(r, "1"),
                lat(r, None),
                fmt_value(r.get("peak_memory_bytes"), "bytes"),
                fmt_value(r.get("accuracy"), "pct"),
                f"{total / 1e6:.3g} µJ" if isinstance(total, (int, float)) else "-",
            ]
        )
    return out


def states_from_before_after(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Dense and pruned states from a run's before/after measurements (no extra timing), with an energy
    estimate each: a masked model still multiplies every weight on a dense kernel."""
    from prunekit.accel import energy_estimate

    out = []
    for name, m in (("dense", report.get("before")), ("pruned", report.get("after"))):
        if not m or not m.get("params"):
            continue
        lat = m.get("latency")
        macs = m.get("macs")
        row: dict[str, Any] = {
            "state": name,
            "params": m.get("params"),
            "nonzeros": m.get("nonzeros"),
            "macs": macs,
            "file_bytes": m.get("file_bytes"),
            "latency": {"1": {"median_ms": lat["median_ms"], "iqr_ms": lat["iqr_ms"]}}
            if isinstance(lat, dict)
            else {},
            "peak_memory_bytes": m.get("peak_forward_bytes"),
            "accuracy": m.get("accuracy"),
            "energy": None,
        }
        if isinstance(macs, int):
            row["energy"] = energy_estimate(macs=macs, weight_bytes=4 * int(m["params"])).to_dict()
        out.append(row)
    return out


__all__ = [
    "STATE_COLUMNS",
    "before_after_rows",
    "demo_table",
    "display_path",
    "flatten_metrics",
    "fmt_value",
    "html_table",
    "layer_table_rows",
    "mask_note",
    "rich_before_after",
    "rich_layers",
    "rich_states",
    "state_rows",
    "states_from_before_after",
]
