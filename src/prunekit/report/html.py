"""Reports: ``report.json`` (every number) and ``report.html`` (self-contained, plots as base64 PNG).

A report is a plain dict (the JSON); the HTML is rendered from it alone, so a report can be re-rendered
from its JSON at any time::

    {"prunekit_report": 1, "kind": "prune" | "analyze" | "demo", "title": ..., "created": ...,
     "model": {...}, "recipe": {...}, "before": {...}, "after": {...}, "layers": [...],
     "history": [...], "sensitivity": {...} | None, "demo": [...] | None, "hardware": {...}, ...}

Plots (matplotlib, Agg backend, imported lazily): per-layer sparsity bars, per-layer width bars
(before/after), accuracy vs sparsity, sensitivity curves. Terminal tables use rich.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prunekit.core import atomic_dir

REPORT_VERSION = 1
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


# ----------------------------------------------------------------------------------------------
# Building the JSON
# ----------------------------------------------------------------------------------------------


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def flatten_metrics(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """Metrics with the latency dict flattened into ``latency_ms`` / ``latency_iqr_ms``."""
    if not metrics:
        return {}
    out = {k: v for k, v in metrics.items() if k != "latency"}
    lat = metrics.get("latency")
    out["latency_ms"] = lat.get("median_ms") if isinstance(lat, dict) else None
    out["latency_iqr_ms"] = lat.get("iqr_ms") if isinstance(lat, dict) else None
    return out


def envelope(kind: str, title: str, **content: Any) -> dict[str, Any]:
    """A report dict: the common header plus ``content``."""
    from prunekit.version import __version__

    report: dict[str, Any] = {
        "prunekit_report": REPORT_VERSION,
        "kind": kind,
        "title": title,
        "created": _now(),
        "prunekit_version": __version__,
    }
    report.update(content)
    return report


def prune_report(
    result: Any, *, model_source: dict[str, Any] | None = None, title: str | None = None
) -> dict[str, Any]:
    """The report of a recipe run (a :class:`prunekit.recipes.schema.RecipeResult`)."""
    data = result.to_dict()
    name = result.recipe.name or "pruning run"
    return envelope("prune", title or f"prunekit: {name}", model=model_source or {}, **data)


def demo_report(result: Any) -> dict[str, Any]:
    """The report of ``prunekit demo`` (a :class:`prunekit.cli.demo.DemoResult`)."""
    d = result.to_dict()
    rows = d["rows"]
    dense = rows[0]
    history = [
        {
            "round": 0,
            "stage": "dense",
            "sparsity": dense["sparsity"],
            "params": dense["params"],
            "accuracy": dense["accuracy_finetuned"],
            "series": "dense",
        }
    ]
    for r in rows[1:]:
        series = f"{r['method']} {r['criterion']}"
        history.append(
            {
                "stage": "pruned",
                "series": series,
                "sparsity": r["sparsity"],
                "params": r["params"],
                "accuracy": r["accuracy_pruned"],
            }
        )
        history.append(
            {
                "stage": "finetuned",
                "series": series,
                "sparsity": r["sparsity"],
                "params": r["params"],
                "accuracy": r["accuracy_finetuned"],
            }
        )
    return envelope(
        "demo",
        "prunekit demo: small CNN on sklearn digits",
        demo=rows,
        history=history,
        hardware=d["hardware"],
        seconds=d["seconds"],
        notes=d["notes"],
        config=d["config"],
    )


# ----------------------------------------------------------------------------------------------
# Writing (atomically: a temp dir renamed into place)
# ----------------------------------------------------------------------------------------------


def write_report(report: dict[str, Any], directory: str | Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into ``directory`` (which must exist); return both paths."""
    directory = Path(directory)
    json_path = directory / "report.json"
    html_path = directory / "report.html"
    json_path.write_text(json.dumps(_jsonable(report), indent=2, allow_nan=False) + "\n")
    html_path.write_text(render_html(report))
    return html_path, json_path


def write_demo_report(result: Any, out_dir: str | Path) -> tuple[Path, Path]:
    """Write the demo's report into ``out_dir`` (replaced atomically)."""
    with atomic_dir(out_dir, overwrite=True) as tmp:
        write_report(demo_report(result), tmp)
    out = Path(out_dir)
    return out / "report.html", out / "report.json"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        return _jsonable(to_dict())
    return str(obj)


# ----------------------------------------------------------------------------------------------
# Plots (matplotlib, lazily imported, Agg backend)
# ----------------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _short(names: Sequence[str], width: int = 28) -> list[str]:
    return [n if len(n) <= width else "…" + n[-(width - 1) :] for n in names]


def plot_layer_sparsity(layers: list[dict[str, Any]]) -> str | None:
    """Horizontal bars: weight sparsity of every layer after pruning. Returns base64 PNG."""
    rows = [r for r in layers if r.get("shape_before") and len(r["shape_before"]) >= 2]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(rows) + 1.2))
    names = _short([r["name"] for r in rows])
    after = [r["sparsity_after"] for r in rows]
    ax.barh(range(len(rows)), after, color="#c0392b", label="after")
    ax.barh(
        range(len(rows)), [r["sparsity_before"] for r in rows], color="#7f8c8d", height=0.35, label="before"
    )
    ax.set_yticks(range(len(rows)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of zero weights")
    ax.set_title("Per-layer weight sparsity")
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def plot_layer_widths(layers: list[dict[str, Any]]) -> str | None:
    """Grouped bars: output width (channels / features) of every layer before and after."""
    rows = [r for r in layers if r.get("width_before")]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(rows) + 1.2))
    y = list(range(len(rows)))
    ax.barh(
        [v - 0.2 for v in y], [r["width_before"] for r in rows], height=0.4, color="#7f8c8d", label="before"
    )
    ax.barh(
        [v + 0.2 for v in y], [r["width_after"] for r in rows], height=0.4, color="#2980b9", label="after"
    )
    ax.set_yticks(y, _short([r["name"] for r in rows]), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("output channels / features")
    ax.set_title("Per-layer width")
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def plot_accuracy_vs_sparsity(history: list[dict[str, Any]]) -> str | None:
    """Accuracy against sparsity (or, when weights stay dense, against the fraction of params removed)."""
    pts = [h for h in history if h.get("accuracy") is not None]
    if len(pts) < 2:
        return None
    plt = _pyplot()
    base_params = max((h.get("params") or 0) for h in pts) or 1

    def x_of(h: dict[str, Any]) -> float:
        removed = 1 - (h.get("params") or base_params) / base_params
        return max(float(h.get("sparsity") or 0.0), removed)

    fig, ax = plt.subplots(figsize=(6.5, 4))
    series: dict[str, list[dict[str, Any]]] = {}
    for h in pts:
        key = h.get("series") or "run"
        if h.get("stage") == "dense":
            continue
        series.setdefault(f"{key} ({h.get('stage', '')})", []).append(h)
    dense = [h for h in pts if h.get("stage") == "dense"]
    for label, hs in series.items():
        hs = sorted(hs, key=x_of)
        style = "--" if "(pruned)" in label else "-"
        ax.plot(
            [x_of(h) for h in dense + hs], [h["accuracy"] for h in dense + hs], style, marker="o", label=label
        )
    if not series:
        ax.plot([x_of(h) for h in pts], [h["accuracy"] for h in pts], marker="o")
    ax.set_xlabel("fraction pruned (weights zeroed or parameters removed)")
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy vs sparsity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def plot_sensitivity(sens: dict[str, Any], key: str = "loss") -> str | None:
    """One curve per layer against its ratio: loss increase (``key="loss"``) or the metric (``"metric"``)."""
    curves = sensitivity_curves(sens, key)
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, (ratios, values) in list(curves.items())[:40]:
        ax.plot(ratios, values, marker=".", label=name)
    metric_name = str(sens.get("metric_name") or "metric")
    ax.set_xlabel("ratio pruned (this layer alone)")
    ax.set_ylabel("loss increase" if key == "loss" else metric_name)
    ax.set_title(
        "Sensitivity per layer" if key == "loss" else f"{metric_name.capitalize()} vs ratio, per layer"
    )
    ax.grid(alpha=0.3)
    if len(curves) <= 16:
        ax.legend(fontsize=7)
    return _png(fig)


def sensitivity_curves(
    sens: dict[str, Any] | None, key: str = "loss"
) -> dict[str, tuple[list[float], list[float]]]:
    """``{layer: (ratios, values)}`` from ``SensitivityResult.to_dict()``.

    ``key="loss"`` gives the loss increase over the baseline; ``key="metric"`` the metric itself
    (layers without a metric are left out).
    """
    if not sens:
        return {}
    base = sens.get("baseline_loss")
    out: dict[str, tuple[list[float], list[float]]] = {}
    for lay in sens.get("layers") or []:
        ratios, values = lay.get("ratios"), lay.get(key)
        if not ratios or values is None or len(ratios) != len(values):
            continue
        if key == "loss":
            if base is None:
                continue
            values = [v - base for v in values]
        out[str(lay.get("name"))] = ([float(r) for r in ratios], [float(v) for v in values])
    return out


def make_plots(report: dict[str, Any]) -> dict[str, str]:
    """Every plot the report has data for: ``{title: base64 PNG}``."""
    plots: dict[str, str] = {}
    layers = report.get("layers") or []
    candidates = [
        ("Per-layer weight sparsity", lambda: plot_layer_sparsity(layers)),
        ("Per-layer width", lambda: plot_layer_widths(layers)),
        ("Accuracy vs sparsity", lambda: plot_accuracy_vs_sparsity(report.get("history") or [])),
        ("Sensitivity curves", lambda: plot_sensitivity(report.get("sensitivity") or {})),
        ("Metric vs ratio per layer", lambda: plot_sensitivity(report.get("sensitivity") or {}, "metric")),
    ]
    for title, fn in candidates:
        png = fn()  # type: ignore[no-untyped-call]
        if png:
            plots[title] = png
    return plots


# ----------------------------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;font-size:.9rem;margin:.5rem 0}th,td{border:1px solid #ddd;padding:.25rem .6rem}
th{background:#f4f4f4;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.plots{display:flex;flex-wrap:wrap;gap:1rem}.plots figure{margin:0;border:1px solid #eee;padding:.5rem}
figcaption{font-size:.85rem;color:#555;text-align:center}img{max-width:100%}
pre{background:#f7f7f7;padding:.6rem;overflow:auto;font-size:.8rem}.muted{color:#777;font-size:.85rem}
.better{color:#1e8449}.worse{color:#c0392b}
"""


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
        if (
            isinstance(b, (int, float))
            and isinstance(a, (int, float))
            and b
            and kind in ("int", "bytes", "ms")
        ):
            ratio = f"{a / b:.3f}x"
        rows.append((label, fmt_value(b, kind), fmt_value(a, kind), ratio))
    return rows


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], num_from: int = 1) -> str:
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


def _layer_rows(layers: list[dict[str, Any]]) -> list[list[str]]:
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


def render_html(report: dict[str, Any], plots: dict[str, str] | None = None) -> str:
    """The report as one self-contained HTML page (no external resources; plots inline as PNG)."""
    plots = make_plots(report) if plots is None else plots
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{esc(report.get('title', 'prunekit report'))}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(report.get('title', 'prunekit report'))}</h1>",
        f"<p class='muted'>{esc(report.get('kind', ''))} report, created {esc(str(report.get('created', '')))} "
        f"by prunekit {esc(str(report.get('prunekit_version', '')))}"
        + (f", {float(report['seconds']):.1f} s" if isinstance(report.get("seconds"), (int, float)) else "")
        + "</p>",
    ]
    model = report.get("model")
    if model:
        parts.append(f"<p>Model: <code>{esc(json.dumps(model))}</code></p>")
    if report.get("after"):
        parts.append("<h2>Before and after</h2>")
        parts.append(_table(("metric", "before", "after", "after / before"), before_after_rows(report)))
    elif report.get("before"):
        parts.append("<h2>Model</h2>")
        parts.append(_table(("metric", "value"), [row[:2] for row in before_after_rows(report)]))
    if report.get("demo"):
        parts.append("<h2>Demo results</h2>")
        parts.append(_demo_table(report["demo"]))
    if plots:
        parts.append("<h2>Plots</h2><div class='plots'>")
        for i, (title, png) in enumerate(plots.items()):
            parts.append(
                f"<figure><img id='plot-{i}' class='plot' alt='{esc(title)}' src='data:image/png;base64,{png}'>"
                f"<figcaption>{esc(title)}</figcaption></figure>"
            )
        parts.append("</div>")
    sens = report.get("sensitivity")
    if sens:
        parts.append("<h2>Sensitivity</h2>")
        curves = sensitivity_curves(sens)
        if curves:
            ratios = next(iter(curves.values()))[0]
            rows = [[name, *(f"{v:+.4f}" for v in d)] for name, (_, d) in curves.items()]
            parts.append(_table(("layer", *(f"{r:.0%}" for r in ratios)), rows))
        corr = sens.get("rank_correlation")
        if corr:
            parts.append(
                f"<p>Rank correlation of one-pass estimates with the measured curves: "
                f"<code>{esc(json.dumps(corr))}</code></p>"
            )
    alloc = report.get("allocation")
    if alloc:
        parts.append("<h2>Allocation</h2>")
        parts.append(
            f"<p>Per-layer ratios reaching {esc(str(alloc.get('by', 'sparsity')))} target "
            f"{fmt_value(alloc.get('target'), 'pct')} (achieved {fmt_value(alloc.get('achieved'), 'pct')}); "
            f"predicted loss increase {fmt_value(alloc.get('predicted_loss_increase'), 'float')} vs "
            f"{fmt_value(alloc.get('uniform_predicted_loss_increase'), 'float')} for the same uniform ratio.</p>"
        )
        parts.append(
            _table(("layer", "ratio"), [[k, f"{v:.3f}"] for k, v in (alloc.get("ratios") or {}).items()])
        )
    if report.get("history") and report.get("kind") != "demo":
        parts.append("<h2>Rounds</h2>")
        parts.append(
            _table(
                ("round", "stage", "sparsity", "params", "non-zeros", "MACs", "accuracy", "loss"),
                [
                    [
                        h.get("round"),
                        h.get("stage"),
                        fmt_value(h.get("sparsity"), "pct"),
                        fmt_value(h.get("params"), "int"),
                        fmt_value(h.get("nonzeros"), "int"),
                        fmt_value(h.get("macs"), "int"),
                        fmt_value(h.get("accuracy"), "pct"),
                        fmt_value(h.get("loss"), "float"),
                    ]
                    for h in report["history"]
                ],
                num_from=2,
            )
        )
    if report.get("layers"):
        parts.append("<h2>Layers</h2>")
        parts.append(
            _table(
                (
                    "layer",
                    "type",
                    "shape before",
                    "shape after",
                    "params before",
                    "params after",
                    "non-zeros",
                    "sparsity",
                ),
                _layer_rows(report["layers"]),
                num_from=4,
            )
        )
    hw = report.get("hardware") or {}
    if hw:
        parts.append("<h2>Hardware</h2>")
        parts.append(_table(("property", "value"), [[k, v] for k, v in hw.items()], num_from=9))
    if report.get("recipe"):
        import yaml

        parts.append("<h2>Recipe</h2>")
        parts.append(f"<pre>{esc(yaml.safe_dump(report['recipe'], sort_keys=False))}</pre>")
    for note in report.get("notes") or []:
        parts.append(f"<p class='muted'>note: {esc(str(note))}</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _demo_table(rows: list[dict[str, Any]]) -> str:
    return _table(
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
            ]
            for r in rows
        ],
    )


# ----------------------------------------------------------------------------------------------
# Terminal (rich)
# ----------------------------------------------------------------------------------------------


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


def rich_layers(layers: list[dict[str, Any]], title: str = "Layers") -> Any:
    """The per-layer table as a ``rich.table.Table``."""
    from rich.table import Table

    table = Table(title=title)
    for i, col in enumerate(
        (
            "layer",
            "type",
            "shape before",
            "shape after",
            "params before",
            "params after",
            "non-zeros",
            "sparsity",
        )
    ):
        table.add_column(col, justify="right" if i >= 4 else "left")
    for row in _layer_rows(layers):
        table.add_row(*row)
    return table


def load_report(path: str | Path) -> dict[str, Any]:
    """Read a ``report.json`` (or the ``report.json`` inside a directory)."""
    from prunekit.errors import FormatError

    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FormatError(f"cannot read report {path}: {e}") from e
    if not isinstance(data, dict) or data.get("prunekit_report") != REPORT_VERSION:
        raise FormatError(f"{path} is not a prunekit report (no 'prunekit_report': {REPORT_VERSION})")
    return data


__all__ = [
    "REPORT_VERSION",
    "atomic_dir",
    "before_after_rows",
    "demo_report",
    "envelope",
    "load_report",
    "make_plots",
    "prune_report",
    "render_html",
    "rich_before_after",
    "rich_layers",
    "sensitivity_curves",
    "write_demo_report",
    "write_report",
]
