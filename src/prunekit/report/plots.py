"""Report plots (matplotlib, Agg backend, imported lazily), each a base64 PNG, chosen by what the run did.

``make_plots`` draws only what applies: the weight-sparsity bars when weights were zeroed, the width
bars when layers changed width (embedding/vocabulary dimensions and outliers left out so the rest stay
readable), accuracy against sparsity (points or bars when a series has too few points for a curve),
sensitivity curves, and latency against file size per model state.
"""

from __future__ import annotations

import base64
import io
import re
import statistics
from collections.abc import Sequence
from typing import Any


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


_ABBREVIATIONS = (
    (r"\battention\b", "attn"),
    (r"\bintermediate\b", "inter"),
    (r"\boutput\b", "out"),
    (r"\bencoder\b", "enc"),
    (r"\bdecoder\b", "dec"),
    (r"\blayers?\.(\d+)", r"L\1"),
    (r"\bblocks?\.(\d+)", r"B\1"),
    (r"\bfeatures\b", "feat"),
    (r"\bembeddings\b", "emb"),
)


def short_labels(names: Sequence[str], width: int = 34) -> list[str]:
    """Readable axis labels: common words abbreviated (``encoder.layer.3.attention`` -> ``enc.L3.attn``),
    and a label still longer than ``width`` keeps its start and its end around an ellipsis (the layer
    number and the leaf name both stay visible)."""
    out = []
    for name in names:
        short = name
        for pattern, repl in _ABBREVIATIONS:
            short = re.sub(pattern, repl, short)
        if len(short) > width:
            head = (width - 1) // 2
            short = short[:head] + "…" + short[-(width - 1 - head) :]
        out.append(short)
    return out


def weights_were_zeroed(layers: list[dict[str, Any]]) -> bool:
    """Whether the run zeroed weights inside some layer (a weight-sparsity plot applies)."""
    return any(
        r.get("shape_after") is not None
        and (r.get("sparsity_after") or 0) > (r.get("sparsity_before") or 0) + 1e-9
        for r in layers
    )


def widths_changed(layers: list[dict[str, Any]]) -> bool:
    """Whether some layer changed width or was removed (a width plot applies)."""
    return any(r.get("width_before") and r.get("width_after") != r.get("width_before") for r in layers)


def width_rows(layers: list[dict[str, Any]], outlier: float = 8.0) -> tuple[list[dict[str, Any]], list[str]]:
    """The layers the width plot shows, and the names it leaves out (embeddings, and any layer wider
    than ``outlier`` times the median width: a 30522-wide vocabulary would squash every other bar)."""
    rows = [r for r in layers if r.get("width_before")]
    if not rows:
        return [], []
    median = statistics.median(r["width_before"] for r in rows)
    keep, skipped = [], []
    for r in rows:
        if r.get("type") == "Embedding" or r["width_before"] > outlier * median:
            skipped.append(r["name"])
        else:
            keep.append(r)
    if len(keep) > 60:  # a large model: the layers that changed are the news
        keep = [r for r in keep if r.get("width_after") != r["width_before"]] or keep[:60]
    return keep, skipped


def plot_layer_sparsity(layers: list[dict[str, Any]]) -> str | None:
    """Horizontal bars: weight sparsity of every layer after pruning. Returns base64 PNG."""
    rows = [r for r in layers if r.get("shape_before") and len(r["shape_before"]) >= 2]
    if not rows or not weights_were_zeroed(layers):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(rows) + 1.2))
    names = short_labels([r["name"] for r in rows])
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
    if not widths_changed(layers):
        return None
    rows, skipped = width_rows(layers)
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
    ax.set_yticks(y, short_labels([r["name"] for r in rows]), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(r["width_before"] for r in rows) * 1.05)
    ax.set_xlabel("output channels / features")
    if skipped:
        more = f" and {len(skipped) - 2} more" if len(skipped) > 2 else ""
        ax.annotate(f"not shown (much wider): {', '.join(short_labels(skipped[:2]))}{more}",
                    (0, -0.12), xycoords="axes fraction", fontsize=7, va="top")  # fmt: skip
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
    ax.set_ylim(0, 1.02)  # accuracy on its whole scale: a small drop is not drawn as a cliff
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
        xs, ys = [x_of(h) for h in dense + hs], [h["accuracy"] for h in dense + hs]
        if len(set(xs)) <= 2:  # two points are not a curve: draw them as points
            style = "none"
        ax.plot(xs, ys, linestyle=style, marker="o", markersize=7, label=label)
    if not series:
        ax.plot([x_of(h) for h in pts], [h["accuracy"] for h in pts], linestyle="none", marker="o")
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


def plot_model_states(states: list[dict[str, Any]]) -> str | None:
    """Latency (batch 1, median with IQR bars) against file size, one labelled point per model state;
    the accuracy, when known, is written next to each point."""
    pts = [s for s in states if s.get("file_bytes") and (s.get("latency") or {}).get("1")]
    if not pts:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for s in pts:
        lat = s["latency"]["1"]
        size = s["file_bytes"] / 2**20
        ax.errorbar([size], [lat["median_ms"]], yerr=[[lat["iqr_ms"] / 2], [lat["iqr_ms"] / 2]], fmt="o",
                    capsize=3, label=s["state"])  # fmt: skip
        acc = s.get("accuracy")
        text = s["state"] + (f" ({acc:.1%})" if isinstance(acc, (int, float)) else "")
        ax.annotate(text, (size, lat["median_ms"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlim(0, max(s["file_bytes"] for s in pts) / 2**20 * 1.25)
    ax.set_ylim(0, max(s["latency"]["1"]["median_ms"] + s["latency"]["1"]["iqr_ms"] for s in pts) * 1.25)
    ax.set_xlabel("file size (MiB)")
    ax.set_ylabel("latency, batch 1 (ms, median and IQR)")
    ax.set_title("Latency vs size per model state")
    ax.grid(alpha=0.3)
    return _png(fig)


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
        ("Latency vs size per model state", lambda: plot_model_states(report.get("states") or [])),
    ]
    for title, fn in candidates:
        png = fn()  # type: ignore[no-untyped-call]
        if png:
            plots[title] = png
    return plots


__all__ = [
    "make_plots",
    "plot_accuracy_vs_sparsity",
    "plot_layer_sparsity",
    "plot_layer_widths",
    "plot_model_states",
    "plot_sensitivity",
    "sensitivity_curves",
    "short_labels",
    "weights_were_zeroed",
    "width_rows",
    "widths_changed",
]
