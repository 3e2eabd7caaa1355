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

import datetime as _dt
import html
import json
import math
from pathlib import Path
from typing import Any

from prunekit.core import atomic_dir
from prunekit.report.plots import make_plots, sensitivity_curves
from prunekit.report.tables import (
    LAYER_COLUMNS,
    STATE_COLUMNS,
    before_after_rows,
    demo_table,
    display_path,
    fmt_value,
    html_table,
    layer_table_rows,
    mask_note,
    state_rows,
    states_from_before_after,
)

REPORT_VERSION = 1


# ----------------------------------------------------------------------------------------------
# Building the JSON
# ----------------------------------------------------------------------------------------------


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()



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
    result: Any,
    *,
    model_source: dict[str, Any] | None = None,
    title: str | None = None,
    states: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The report of a recipe run (a :class:`prunekit.recipes.schema.RecipeResult`).

    ``states``: rows of :func:`prunekit.accel.model_state_report` (dense / pruned / accelerated /
    quantized ...); default: dense and pruned from the run's own before/after measurements.
    """
    data = result.to_dict()
    name = result.recipe.name or "pruning run"
    source = {k: display_path(v) if isinstance(v, str) else v for k, v in (model_source or {}).items()}
    report = envelope("prune", title or f"prunekit: {name}", model=source, **data)
    report["states"] = states if states is not None else states_from_before_after(report)
    return report


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
        shown = {k: display_path(v) if isinstance(v, str) else v for k, v in model.items()}
        parts.append(f"<p>Model: <code>{esc(json.dumps(shown))}</code></p>")
    if report.get("after"):
        parts.append("<h2>Before and after</h2>")
        parts.append(html_table(("metric", "before", "after", "after / before"), before_after_rows(report)))
        note = mask_note(report)
        if note:
            parts.append(f"<p class='muted' id='mask-note'>{esc(note)}</p>")
    elif report.get("before"):
        parts.append("<h2>Model</h2>")
        parts.append(html_table(("metric", "value"), [row[:2] for row in before_after_rows(report)]))
    states = report.get("states")
    if states:
        parts.append("<h2>Model states</h2>")
        parts.append(html_table(STATE_COLUMNS, state_rows(states)))
        parts.append(
            "<p class='muted'>energy: an estimate from MACs and bytes moved with published per-operation "
            "energies (Horowitz 2014, 45 nm), not a measurement; latency: median and interquartile range.</p>"
        )
    if report.get("demo"):
        parts.append("<h2>Demo results</h2>")
        parts.append(demo_table(report["demo"]))
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
            parts.append(html_table(("layer", *(f"{r:.0%}" for r in ratios)), rows))
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
            html_table(("layer", "ratio"), [[k, f"{v:.3f}"] for k, v in (alloc.get("ratios") or {}).items()])
        )
    if report.get("history") and report.get("kind") != "demo":
        parts.append("<h2>Rounds</h2>")
        parts.append(
            html_table(
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
            html_table(
                LAYER_COLUMNS,
                layer_table_rows(report["layers"]),
                num_from=4,
            )
        )
    hw = report.get("hardware") or {}
    if hw:
        parts.append("<h2>Hardware</h2>")
        parts.append(html_table(("property", "value"), [[k, v] for k, v in hw.items()], num_from=9))
    if report.get("recipe"):
        import yaml

        parts.append("<h2>Recipe</h2>")
        parts.append(f"<pre>{esc(yaml.safe_dump(report['recipe'], sort_keys=False))}</pre>")
    for note in report.get("notes") or []:
        parts.append(f"<p class='muted'>note: {esc(str(note))}</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)



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
    "sensitivity_curves",
    "write_demo_report",
    "write_report",
]
