"""``prunekit demo``: train a small CNN on sklearn's digits, prune it several ways, fine-tune, compare.

Everything is embedded (scikit-learn ships the digits), seeded, and sized to finish well under a
minute on 2 CPU cores::

    train DigitsCNN (dense)
      ├── prune_weights  magnitude | wanda  at several sparsities ── fine-tune ── evaluate, save,
      │                                        pk.accelerate a copy (Linear and Conv2d layers: dense /
      │                                        CSR / BSR / taps, measured) ── time
      └── prune_channels l2                 at several ratios     ── fine-tune ── evaluate, save, time

Every row is timed the same way: ``measure_latency`` on a batch of 256 images, ``threads`` threads,
``latency_repeats`` runs, median and IQR.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunekit.core import (
    HardwareInfo,
    count_macs,
    count_nonzeros,
    count_params,
    evaluate,
    human_bytes,
    measure_latency,
)
from prunekit.errors import ConfigError
from prunekit.io import file_size
from prunekit.kernels import numba_available
from prunekit.training import num_threads
from prunekit.training import train as train_model


class DigitsCNN(nn.Module):
    """A small CNN for 8x8 digit images: two conv blocks and a two-layer classifier head.

    Example:
        >>> DigitsCNN()(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, width: int = 32, hidden: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width // 2, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(width)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(width * 4 * 4, hidden)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))  # (B, w/2, 8, 8)
        x = self.pool(torch.relu(self.bn2(self.conv2(x))))  # (B, w, 4, 4)
        x = torch.relu(self.fc1(x.flatten(1)))  # (B, hidden)
        out: torch.Tensor = self.fc(x)  # (B, classes)
        return out


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """What the demo runs. The defaults finish in well under a minute on 2 CPU cores."""

    sparsities: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95)
    criteria: tuple[str, ...] = ("magnitude", "wanda")
    channel_ratios: tuple[float, ...] = (0.25, 0.5)
    epochs: int = 10
    finetune_epochs: int = 1
    lr: float = 3e-3
    batch_size: int = 64
    seed: int = 0
    latency_repeats: int = 50
    threads: int = 1  # a tiny model trains fastest on one thread, and stays fast on a busy machine

    def __post_init__(self) -> None:
        for s in self.sparsities:
            if not 0.0 <= s < 1.0:
                raise ConfigError(f"demo sparsities must be in [0, 1), got {s}")
        for r in self.channel_ratios:
            if not 0.0 <= r < 1.0:
                raise ConfigError(f"demo channel ratios must be in [0, 1), got {r}")
        if self.threads < 1:
            raise ConfigError(f"demo threads must be >= 1, got {self.threads}")
        if self.epochs < 1 or self.finetune_epochs < 0:
            raise ConfigError(
                f"demo needs epochs >= 1 and finetune_epochs >= 0, got {self.epochs}, {self.finetune_epochs}"
            )


@dataclass(frozen=True, kw_only=True)
class DemoRow:
    """One line of the demo table."""

    method: str  # "dense", "weights" or "channels"
    criterion: str
    target: float  # requested sparsity (weights) or channel ratio (channels)
    sparsity: float  # achieved fraction of zero weights over prunable layers
    params: int
    nonzeros: int
    macs: int
    accuracy_pruned: float  # right after pruning
    accuracy_finetuned: float  # after the brief fine-tune
    file_bytes: int
    latency_ms: float | None = None  # median for a batch of 256 images, DemoConfig.threads threads
    latency_iqr_ms: float | None = None
    latency_note: str = ""  # what was timed: "dense", "physically smaller", or what pk.accelerate kept


@dataclass(frozen=True, kw_only=True)
class DemoResult:
    """All rows, the hardware, the wall time, and the report paths when one was written."""

    rows: tuple[DemoRow, ...]
    hardware: HardwareInfo
    seconds: float
    config: DemoConfig
    notes: tuple[str, ...] = ()
    report_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": [asdict(r) for r in self.rows],
            "hardware": self.hardware.to_dict(),
            "seconds": self.seconds,
            "config": asdict(self.config),
            "notes": list(self.notes),
            "report_dir": self.report_dir,
        }


class _Progress:
    """A rich progress bar on stderr, or nothing when disabled."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled
        self.total = total
        self._progress: Any = None
        self._task: Any = None

    @contextmanager
    def running(self) -> Iterator[_Progress]:
        if not self.enabled:
            yield self
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("{task.description:<34}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        ) as progress:
            self._progress = progress
            self._task = progress.add_task("demo", total=self.total)
            yield self

    def step(self, description: str, advance: int = 1) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=advance, description=description)

    def describe(self, description: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=description)


def _data(cfg: DemoConfig) -> tuple[DataLoader[Any], DataLoader[Any], DataLoader[Any]]:
    from prunekit.core import digits

    split = digits(seed=cfg.seed)
    train, test = split.loaders(batch_size=cfg.batch_size, seed=cfg.seed)
    calib = DataLoader(TensorDataset(split.x_train[:256], split.y_train[:256]), batch_size=128)
    return train, test, calib


def _prune_weights(model: nn.Module, sparsity: float, criterion: str, calib: DataLoader[Any]) -> list[str]:
    """Prune with global scope; return the messages of the layers it pruned away (shown as table notes,
    not as Python warnings with a source line in the middle of the demo's output)."""
    import warnings

    from prunekit.errors import LayerPrunedAwayWarning
    from prunekit.weights import prune_weights

    kwargs: dict[str, Any] = {}
    if criterion in ("wanda", "taylor", "snip"):
        kwargs = {"data": calib, "loss_fn": nn.functional.cross_entropy}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LayerPrunedAwayWarning)
        prune_weights(model, sparsity, criterion=criterion, scope="global", **kwargs)
    for w in caught:  # anything else is not the demo's to hide
        if not issubclass(w.category, LayerPrunedAwayWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return [str(w.message) for w in caught if issubclass(w.category, LayerPrunedAwayWarning)]


def _row(
    method: str,
    criterion: str,
    target: float,
    model: nn.Module,
    example: torch.Tensor,
    acc_pruned: float,
    acc_finetuned: float,
    latency: tuple[float, float] | None = None,
    latency_note: str = "",
) -> DemoRow:
    from prunekit.weights import sparsity

    return DemoRow(
        method=method,
        criterion=criterion,
        target=target,
        sparsity=float(sparsity(model)),
        params=count_params(model),
        nonzeros=count_nonzeros(model),
        macs=count_macs(model, example),
        accuracy_pruned=acc_pruned,
        accuracy_finetuned=acc_finetuned,
        file_bytes=file_size(model),
        latency_ms=None if latency is None else latency[0],
        latency_iqr_ms=None if latency is None else latency[1],
        latency_note=latency_note,
    )


def run_demo(
    config: DemoConfig | None = None, *, progress: bool = False, out_dir: str | Path | None = None
) -> DemoResult:
    """Run the demo and return its table (see the module docstring). Seeded: same numbers every run.

    Args:
        config: what to run; default :class:`DemoConfig`.
        progress: show a progress bar on stderr.
        out_dir: write ``report.html`` and ``report.json`` there (created; replaced atomically).
    """
    cfg = config or DemoConfig()
    with num_threads(cfg.threads):
        return _run(cfg, progress, out_dir)


def _accelerated_latency(model: nn.Module, batch: torch.Tensor, cfg: DemoConfig) -> tuple[float, float, str]:
    """Latency of ``pk.accelerate`` on a copy of ``model`` (the model itself stays trainable and masked).

    Returns ``(median_ms, iqr_ms, latency_note)``; the note names the Linear layers that left dense
    and their kernel, or says that dense won everywhere.
    """
    from prunekit.accel import AccelerateConfig, accelerate

    fast = copy.deepcopy(model).eval()
    # 9 alternating rounds per layer (default 15): the demo stays under a minute on a loaded 2-core machine
    acfg = AccelerateConfig(threads=cfg.threads, rounds=9, measure_model=False)
    result = accelerate(fast, batch, config=acfg)
    lat = measure_latency(fast, batch, repeats=cfg.latency_repeats, warmup=3, threads=cfg.threads)
    kept = [f"{c.name} {c.kernel}" for c in result.layers if c.kernel != "dense"]
    return lat.median_ms, lat.iqr_ms, "accelerated: " + (", ".join(kept) if kept else "dense won")


def _run(cfg: DemoConfig, progress: bool, out_dir: str | Path | None) -> DemoResult:
    from prunekit.structured import prune_channels

    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    train, test, calib = _data(cfg)
    example = torch.zeros(1, 1, 8, 8)  # MACs per example
    batch = torch.zeros(256, 1, 8, 8)  # latency of a batch: a single 8x8 image only times Python overhead
    ratios = cfg.channel_ratios
    steps = 1 + len(cfg.sparsities) * len(cfg.criteria) + len(ratios) + (1 if out_dir is not None else 0)
    notes: list[str] = []
    rows: list[DemoRow] = []
    bar = _Progress(progress, steps)
    with bar.running():
        bar.describe("training the dense CNN")
        dense = DigitsCNN()
        train_model(dense, train, epochs=cfg.epochs, lr=cfg.lr)
        acc_dense = _accuracy(dense, test)
        lat_dense = measure_latency(dense, batch, repeats=cfg.latency_repeats, warmup=3, threads=cfg.threads)
        rows.append(
            _row(
                "dense",
                "-",
                0.0,
                dense,
                example,
                acc_dense,
                acc_dense,
                (lat_dense.median_ms, lat_dense.iqr_ms),
                "dense",
            )
        )
        bar.step("trained the dense CNN")
        for criterion in cfg.criteria:
            for s in cfg.sparsities:
                bar.describe(f"weights {criterion} {s:.0%}")
                torch.manual_seed(cfg.seed)
                model = copy.deepcopy(dense)
                notes += [
                    f"weights {criterion} {s:.0%}: {m}" for m in _prune_weights(model, s, criterion, calib)
                ]
                acc_pruned = _accuracy(model, test)
                train_model(model, train, epochs=cfg.finetune_epochs, lr=cfg.lr / 3)
                ms, iqr, latency_note = _accelerated_latency(model, batch, cfg)
                acc = _accuracy(model, test)
                rows.append(
                    _row("weights", criterion, s, model, example, acc_pruned, acc, (ms, iqr), latency_note)
                )
                bar.step(f"weights {criterion} {s:.0%}")
        for r in ratios:
            bar.describe(f"channels l2 {r:.0%}")
            torch.manual_seed(cfg.seed)
            model = copy.deepcopy(dense)
            prune_channels(model, example, ratio=r, criterion="l2", exclude=[model.fc])
            acc_pruned = _accuracy(model, test)
            train_model(model, train, epochs=cfg.finetune_epochs, lr=cfg.lr / 3)
            lat = measure_latency(model, batch, repeats=cfg.latency_repeats, warmup=3, threads=cfg.threads)
            rows.append(
                _row(
                    "channels",
                    "l2",
                    r,
                    model,
                    example,
                    acc_pruned,
                    _accuracy(model, test),
                    (lat.median_ms, lat.iqr_ms),
                    "physically smaller",
                )
            )
            bar.step(f"channels l2 {r:.0%}")
        if any(r.method == "weights" for r in rows):
            notes.append(
                "weights rows: latency of a copy run through pk.accelerate, which times dense and sparse "
                f"kernels (CSR{', numba CSR' if numba_available() else ''}, BSR, conv taps) per Linear and Conv2d "
                "layer on this machine and keeps a sparse "
                "one only where it beats dense by 10% (layers under 4,096 weights stay dense untimed)"
            )
        result = DemoResult(
            rows=tuple(rows),
            hardware=lat_dense.hardware,
            seconds=time.perf_counter() - start,
            config=cfg,
            notes=tuple(notes),
        )
        if out_dir is not None:
            bar.describe("writing the report")
            from prunekit.report import write_demo_report

            write_demo_report(result, out_dir)
            result = DemoResult(
                rows=result.rows,
                hardware=result.hardware,
                seconds=time.perf_counter() - start,
                config=cfg,
                notes=result.notes,
                report_dir=str(out_dir),
            )
            bar.step("wrote the report")
    return result


def _accuracy(model: nn.Module, loader: DataLoader[Any]) -> float:
    acc = evaluate(model, loader).accuracy
    return float(acc if acc is not None else float("nan"))


def demo_table(result: DemoResult) -> Any:
    """The demo's rows as a ``rich.table.Table``."""
    from rich.table import Table

    table = Table(title="prunekit demo: small CNN on sklearn digits (test accuracy)")
    for col in (
        "method",
        "target",
        "sparsity",
        "params",
        "non-zeros",
        "MACs",
        "acc pruned",
        "acc tuned",
        "file",
        "latency b=256 (IQR)",
        "latency note",
    ):
        table.add_column(col, justify="left" if col == "method" else "right", no_wrap=True)
    for r in result.rows:
        table.add_row(
            r.method if r.method == "dense" else f"{r.method} {r.criterion}",
            f"{r.target:.0%}" if r.method != "dense" else "-",
            f"{r.sparsity:.1%}",
            f"{r.params:,}",
            f"{r.nonzeros:,}",
            f"{r.macs:,}",
            f"{r.accuracy_pruned:.1%}",
            f"{r.accuracy_finetuned:.1%}",
            human_bytes(r.file_bytes),
            f"{r.latency_ms:.2f} ms ({r.latency_iqr_ms:.2f})" if r.latency_ms is not None else "-",
            r.latency_note or "-",
        )
    return table


__all__ = ["DemoConfig", "DemoResult", "DemoRow", "DigitsCNN", "demo_table", "run_demo"]
