"""``OneShotResult``: what one-shot pruning did, layer by layer (printable table and ``to_dict``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prunekit.core import Skipped


@dataclass(frozen=True)
class OneShotLayer:
    """One pruned layer.

    Attributes:
        name: module name in the model.
        block: index of the transformer block holding it.
        shape: weight shape.
        numel: weights.
        zeros: pruned weights.
        target: the sparsity asked of this layer (after layer ratios).
        error_mask: relative reconstruction error on the calibration inputs of the mask alone
            (pruned weights set to 0, nothing updated): ``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)``.
        error: the same after the method's weight update (equal for magnitude and Wanda).
        seconds: solver time of this layer.
    """

    name: str
    block: int
    shape: tuple[int, ...]
    numel: int
    zeros: int
    target: float
    error_mask: float
    error: float
    seconds: float

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "block": self.block,
            "shape": list(self.shape),
            "numel": self.numel,
            "zeros": self.zeros,
            "sparsity": self.sparsity,
            "target": self.target,
            "error_mask": self.error_mask,
            "error": self.error,
            "seconds": self.seconds,
        }


@dataclass(frozen=True, kw_only=True)
class OneShotResult:
    """What :func:`prunekit.prune_oneshot` / :func:`prunekit.prune_checkpoint` did."""

    method: str
    pattern: str | None
    target_sparsity: float
    blocks: str
    layers: tuple[OneShotLayer, ...]
    skipped: tuple[Skipped, ...] = field(default_factory=tuple)
    calibration_tokens: int = 0
    seconds: float = 0.0

    @property
    def sparsity(self) -> float:
        """Achieved fraction of zeros over the pruned layers."""
        n = sum(r.numel for r in self.layers)
        return sum(r.zeros for r in self.layers) / n if n else 0.0

    @property
    def error(self) -> float:
        """Mean relative reconstruction error over the layers (after the weight update)."""
        return sum(r.error for r in self.layers) / len(self.layers) if self.layers else 0.0

    def __str__(self) -> str:
        head = (
            f"prune_oneshot: {self.method}, pattern={self.pattern}, target {self.target_sparsity:.2%}, "
            f"achieved {self.sparsity:.2%}, blocks {self.blocks!r}, {self.calibration_tokens:,} calibration "
            f"tokens, {self.seconds:.1f} s"
        )
        header = ("layer", "block", "shape", "sparsity", "err mask", "err", "time")
        body = [
            (
                r.name,
                str(r.block),
                "x".join(map(str, r.shape)),
                f"{r.sparsity:.2%}",
                f"{r.error_mask:.4f}",
                f"{r.error:.4f}",
                f"{r.seconds:.2f}s",
            )
            for r in self.layers
        ]
        lines = _format(header, body, right=(False, True, False, True, True, True, True))
        lines += [f"skipped {s.name}: {s.reason}" for s in self.skipped]
        return head + "\n" + "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "pattern": self.pattern,
            "target_sparsity": self.target_sparsity,
            "sparsity": self.sparsity,
            "blocks": self.blocks,
            "calibration_tokens": self.calibration_tokens,
            "seconds": self.seconds,
            "layers": [r.to_dict() for r in self.layers],
            "skipped": [{"name": s.name, "reason": s.reason} for s in self.skipped],
        }


def _format(header: Sequence[str], body: Sequence[Sequence[str]], right: Sequence[bool]) -> list[str]:
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ).rstrip()

    return [fmt(header), fmt(["-" * w for w in widths]), *(fmt(b) for b in body)]


__all__ = ["OneShotLayer", "OneShotResult"]
