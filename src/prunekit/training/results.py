"""A small results table shared by the training-time methods: rows of numbers -> CSV, JSON, PNG."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ResultsTable:
    """Rows of results (one dict per round/run), written as CSV, JSON and a matplotlib plot.

    Example:
        >>> t = ResultsTable("demo", [{"round": 0, "sparsity": 0.0, "accuracy": 0.9}])
        >>> t.column("accuracy")
        [0.9]
    """

    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    def column(self, key: str, **where: Any) -> list[Any]:
        """Values of ``key`` over the rows matching every ``where`` item."""
        return [r[key] for r in self.rows if all(r.get(k) == v for k, v in where.items())]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rows": self.rows}

    def columns(self) -> list[str]:
        cols: list[str] = []
        for r in self.rows:
            cols.extend(k for k in r if k not in cols)
        return cols

    def to_csv(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns())
            writer.writeheader()
            writer.writerows(self.rows)
        return path

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    def to_markdown(self, keys: Sequence[str] | None = None) -> str:
        keys = list(keys or self.columns())
        lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for r in self.rows:
            cells = [f"{r.get(k):.4f}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def plot(
        self,
        path: str | Path,
        *,
        x: str,
        ys: Sequence[str],
        group: str | None = None,
        log_x: bool = False,
        invert_x: bool = False,
        title: str | None = None,
    ) -> Path:
        """One panel per ``ys`` key against ``x``, one line per value of ``group``; saved as PNG (Agg)."""
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        groups = sorted({r.get(group) for r in self.rows}, key=str) if group else [None]
        fig, axes = plt.subplots(1, len(ys), figsize=(5 * len(ys), 4), squeeze=False)
        for ax, y in zip(axes[0], ys, strict=True):
            for g in groups:
                rows = [r for r in self.rows if (group is None or r.get(group) == g) and r.get(y) is not None]
                ax.plot(
                    [r[x] for r in rows],
                    [r[y] for r in rows],
                    marker="o",
                    label=str(g) if g is not None else y,
                )
            ax.set_xlabel(x)
            ax.set_ylabel(y)
            if log_x:
                ax.set_xscale("log")
            if invert_x:
                ax.invert_xaxis()
            ax.grid(True, alpha=0.3)
            ax.legend()
        fig.suptitle(title or self.name)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def write(self, out_dir: str | Path, **plot_kwargs: Any) -> dict[str, Path]:
        """Write ``<name>.csv``, ``<name>.json`` and, given ``plot_kwargs``, ``<name>.png`` into ``out_dir``."""
        out = Path(out_dir)
        paths = {
            "csv": self.to_csv(out / f"{self.name}.csv"),
            "json": self.to_json(out / f"{self.name}.json"),
        }
        if plot_kwargs:
            paths["png"] = self.plot(out / f"{self.name}.png", **plot_kwargs)
        return paths


@dataclass
class RunResult:
    """What a training-time method returns: its results table and the final evaluation numbers."""

    table: ResultsTable
    sparsity: float
    accuracy: float | None = None
    loss: float | None = None


__all__ = ["ResultsTable", "RunResult"]
