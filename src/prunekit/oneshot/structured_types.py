"""Config and result of :func:`prunekit.prune_structured_oneshot` (calibration-aware structured pruning)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from prunekit.core import ConfigMixin, register_config
from prunekit.errors import ConfigError
from prunekit.oneshot.compensate import COLUMN_CRITERIA

KINDS: tuple[str, ...] = ("mlp", "heads")
COMPENSATIONS: tuple[str, ...] = ("refit", "bias", "none")


def _fraction(value: Any, what: str, *, high: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < high:
        raise ConfigError(f"{what} must be a number in [0, {high:g}), got {value!r}")
    return float(value)


@register_config
@dataclasses.dataclass(frozen=True, kw_only=True)
class StructuredOneShotConfig(ConfigMixin):
    """Every option of :func:`prunekit.prune_structured_oneshot`.

    Attributes:
        ratio: Fraction of the units (MLP channels, heads / KV groups) removed in every group, in
            [0, 1); or ``{"mlp": r, "heads": r}`` (a kind not named keeps its width).
        what: Which units may go: ``("mlp", "heads")`` or one of them.
        method: Compensation of what was removed: ``"refit"`` (exact least-squares refit of the
            consuming layer's kept columns and bias on the calibration statistics), ``"bias"`` (FLAP:
            the removed inputs' mean folded into the bias) or ``"none"``.
        criterion: Score of a unit from its consumer's columns: ``"activation"`` (``||W[:, j]|| ||a_j||``),
            ``"fluctuation"`` (``||W[:, j]||² Var(a_j)``) or ``"weight"`` (``||W[:, j]||``).
        budget: Instead of ``ratio``: remove this fraction of the blocks' parameters (or MACs), in (0, 1),
            shared between the kinds in ``what`` and allocated per layer by estimated error per cost.
        budget_metric: ``"params"`` (all parameters of the blocks) or ``"macs"`` (per-token MACs of the
            blocks' Linear layers; the attention score products are not counted).
        round_to: MLP groups keep a multiple of this many channels (e.g. 8); heads are whole units already.
        max_batches: Use at most this many calibration batches (``None``: all).
        dampening: Ridge of the refit relative to the mean diagonal of the kept Gram block (0: plain
            least squares).
        gqa: Grouped-query attention units: ``"kv_groups"`` (a KV head with its query heads) or
            ``"query_heads"`` (as in ``prune_channels``).
        max_layer_ratio: With ``budget``: at most this fraction of any group's units goes, in (0, 1).
        check: Oracle-check the physical removal against the masked, compensated model.
    """

    ratio: float | Mapping[str, float] = 0.25
    what: tuple[str, ...] = KINDS
    method: Literal["refit", "bias", "none"] = "refit"
    criterion: Literal["activation", "fluctuation", "weight"] = "activation"
    budget: float | None = None
    budget_metric: Literal["params", "macs"] = "params"
    round_to: int | None = None
    max_batches: int | None = None
    dampening: float = 1e-4
    gqa: Literal["kv_groups", "query_heads"] = "kv_groups"
    max_layer_ratio: float = 0.9
    check: bool = True

    def __post_init__(self) -> None:
        what = (self.what,) if isinstance(self.what, str) else tuple(self.what)
        bad = [w for w in what if w not in KINDS]
        if bad or not what:
            raise ConfigError(f"what= takes a non-empty subset of {list(KINDS)}, got {self.what!r}")
        object.__setattr__(self, "what", what)
        if isinstance(self.ratio, Mapping):
            unknown = sorted(set(self.ratio) - set(KINDS))
            if unknown:
                raise ConfigError(f"ratio= keys must be in {list(KINDS)}, got {unknown}")
            object.__setattr__(
                self, "ratio", {k: _fraction(v, f"ratio[{k!r}]") for k, v in self.ratio.items()}
            )
        else:
            _fraction(self.ratio, "ratio")
        if self.method not in COMPENSATIONS:
            raise ConfigError(f"method must be one of {list(COMPENSATIONS)}, got {self.method!r}")
        if self.criterion not in COLUMN_CRITERIA:
            raise ConfigError(f"criterion must be one of {list(COLUMN_CRITERIA)}, got {self.criterion!r}")
        if self.budget is not None and (_fraction(self.budget, "budget") <= 0.0):
            raise ConfigError(f"budget is the fraction of {self.budget_metric} to remove, in (0, 1); got 0")
        if self.budget_metric not in ("params", "macs"):
            raise ConfigError(f"budget_metric must be 'params' or 'macs', got {self.budget_metric!r}")
        if self.round_to is not None and (
            isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1
        ):
            raise ConfigError(f"round_to must be a positive int or None, got {self.round_to!r}")
        if self.max_batches is not None and (
            isinstance(self.max_batches, bool)
            or not isinstance(self.max_batches, int)
            or self.max_batches < 1
        ):
            raise ConfigError(f"max_batches must be a positive int or None, got {self.max_batches!r}")
        if (
            isinstance(self.dampening, bool)
            or not isinstance(self.dampening, (int, float))
            or self.dampening < 0
        ):
            raise ConfigError(f"dampening must be a number >= 0, got {self.dampening!r}")
        if self.gqa not in ("kv_groups", "query_heads"):
            raise ConfigError(f"gqa must be 'kv_groups' or 'query_heads', got {self.gqa!r}")
        if _fraction(self.max_layer_ratio, "max_layer_ratio") <= 0.0:
            raise ConfigError("max_layer_ratio must be in (0, 1), got 0")

    def kind_ratios(self) -> dict[str, float]:
        """``{kind: ratio}`` for the kinds in ``what``."""
        if isinstance(self.ratio, Mapping):
            return {k: float(v) for k, v in self.ratio.items() if k in self.what}
        return dict.fromkeys(self.what, float(self.ratio))


@dataclasses.dataclass(frozen=True)
class StructuredGroup:
    """One pruned group.

    Attributes:
        name: The module whose output rows are the units (``...intermediate.dense``, ``...q_proj``).
        kind: ``"mlp"`` or ``"heads"``.
        block: Index of the block.
        before: Units before.
        after: Units after.
        compensation: What was done for the consumer: ``"refit"``, ``"bias"``, ``"none"``,
            ``"refit (no bias)"``.
        error: Relative output error of the consumer on the calibration inputs after compensation,
            ``E||Δy||² / E||y||²``.
    """

    name: str
    kind: str
    block: int
    before: int
    after: int
    compensation: str
    error: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class StructuredOneShotResult:
    """What :func:`prunekit.prune_structured_oneshot` did (``str`` is a table, ``to_dict`` plain data)."""

    config: StructuredOneShotConfig
    groups: tuple[StructuredGroup, ...]
    params_before: int
    params_after: int
    block_params_before: int
    block_params_after: int
    plan: dict[str, Any]
    hf_config_synced: bool | None
    seconds: float

    @property
    def removed_fraction(self) -> float:
        """Fraction of the blocks' parameters removed."""
        return 1.0 - self.block_params_after / max(self.block_params_before, 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return {
            "config": self.config.to_dict(),
            "groups": [dataclasses.asdict(g) for g in self.groups],
            "params_before": self.params_before,
            "params_after": self.params_after,
            "block_params_before": self.block_params_before,
            "block_params_after": self.block_params_after,
            "removed_fraction": self.removed_fraction,
            "plan": self.plan,
            "hf_config_synced": self.hf_config_synced,
            "seconds": self.seconds,
        }

    def __str__(self) -> str:
        lines = [
            f"prune_structured_oneshot ({self.config.method}): {len(self.groups)} groups in {self.seconds:.1f} s; "
            f"block params {self.block_params_before:,} -> {self.block_params_after:,} "
            f"(-{self.removed_fraction:.1%})",
            f"  {'group':<48} {'kind':<5} {'before':>6} {'after':>6}  {'comp.':<8} {'error':>8}",
        ]
        for g in self.groups:
            lines.append(
                f"  {g.name:<48} {g.kind:<5} {g.before:>6} {g.after:>6}  {g.compensation:<8} {g.error:>8.4f}"
            )
        return "\n".join(lines)


__all__ = [
    "COMPENSATIONS",
    "KINDS",
    "StructuredGroup",
    "StructuredOneShotConfig",
    "StructuredOneShotResult",
]
