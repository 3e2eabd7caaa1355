"""Weight (unstructured and N:M) pruning with bool masks, in bounded extra memory.

``prune_weights`` scores every selected weight with a criterion and masks the lowest-scoring ones
(:func:`prunekit.core.masks.set_mask`: a bool buffer, no weight copy, kept at zero through training).

Global scope never concatenates the model's weights. Scores are turned into order-preserving
32-bit integer keys, and the exact k-th smallest key is found by a two-pass radix select over
chunks of rows (``chunk_elements`` scores at a time)::

    pass 1: histogram of the high 16 bits of every key   -> bucket holding the k-th key
    pass 2: histogram of the low 16 bits inside bucket   -> the exact k-th key t
    pass 3: mask = key > t, plus the first (k - #{key < t}) keys equal to t pruned in module order

So the achieved count of pruned weights is exactly ``round(sparsity * n)`` (ties broken by
position) and the extra memory is two 65536-bin histograms, one chunk of scores, and the bool
mask of the layer being written. Already-pruned weights score ``-inf``, so pruning again raises
sparsity cumulatively: the new target is the total sparsity.

N:M keeps at most N of every M consecutive weights along the *input* dimension: dim 1 of
Linear ``(out, in)`` and Conv ``(out, in/groups, *kernel)`` weights (the M weights of one output
channel and kernel position that read M consecutive input channels, as sparse tensor cores
expect), dim 0 of GPT-2 ``Conv1D`` weights ``(in, out)``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from prunekit.core import (
    UNSET,
    ConfigMixin,
    LossFn,
    Skipped,
    Target,
    get_mask,
    is_default_type,
    masked_parameters,
    merge_config,
    register_config,
    resolve_targets,
    restored_on_error,
)
from prunekit.errors import ConfigError, DataRequiredError
from prunekit.weights.criteria import Calibration, Magnitude, WeightCriterion, get_criterion
from prunekit.weights.rows import apply_rows, warn_pruned_away
from prunekit.weights.select import Scorer, apply_threshold, check_pattern, full_scores, kth_key, pruned_count

Scope = Literal["global", "layer", "row"]
_PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_pattern(pattern: str | None) -> tuple[int, int] | None:
    """``"2:4"`` -> ``(2, 4)``; ``None`` -> ``None``.

    Raises:
        ConfigError: not of the form ``"N:M"`` with ``0 < N < M``.
    """
    if pattern is None:
        return None
    match = _PATTERN.match(pattern) if isinstance(pattern, str) else None
    if match is None:
        raise ConfigError(f"pattern must be a string 'N:M' such as '2:4' or '4:8', got {pattern!r}")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ConfigError(
            f"pattern {pattern!r}: need 0 < N < M (keep N of every M weights), got N={n}, M={m}"
        )
    return n, m


def as_selection(value: Any) -> Any:
    """A list/set of module specs as a tuple (hashable, round-trips through a dict); others unchanged."""
    return tuple(value) if isinstance(value, (list, set, frozenset)) else value


@register_config
@dataclass(frozen=True, kw_only=True)
class WeightPruningConfig(ConfigMixin):
    """Every option of ``prune_weights`` (validated); the model and data are arguments of the verb.

    Attributes:
        sparsity: total fraction of the selected weights to prune, in [0, 1). ``None`` is allowed
            only with ``pattern`` and means exactly the pattern's ``1 - N/M``.
        scope: ``"global"`` (one threshold over all selected weights), ``"layer"`` (the same
            fraction in every layer) or ``"row"`` (the same fraction in every output row, Wanda's
            comparison group; see :mod:`prunekit.weights.rows`).
        pattern: ``"N:M"`` or ``None``. With ``sparsity`` above ``1 - N/M``, the extra weights are
            pruned on top of the pattern by ``scope``.
        max_batches: at most this many batches of ``data`` are used by data-aware criteria.
        chunk_elements: scores computed at a time (bounds the extra memory of global scope).
        criterion: a registered weight criterion name (``"magnitude"``, ``"random"``, ``"taylor"``,
            ``"snip"``, ``"wanda"``, ...) or a WeightCriterion object.
        include: module names, fnmatch globs or types to prune (default: every Linear/Conv weight).
        exclude: module names, globs or types to leave dense.
    """

    sparsity: float | None = None
    scope: Scope = "global"
    pattern: str | None = None
    max_batches: int = 8
    chunk_elements: int = 1 << 18
    criterion: str | WeightCriterion = "magnitude"
    include: Any = None
    exclude: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "include", as_selection(self.include))
        object.__setattr__(self, "exclude", as_selection(self.exclude))
        get_criterion(self.criterion)
        nm = parse_pattern(self.pattern)
        if self.sparsity is None:
            if nm is None:
                raise ConfigError(
                    "sparsity is required (a float in [0, 1), e.g. sparsity=0.9) unless pattern= is given"
                )
        else:
            if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)):
                raise ConfigError(f"sparsity must be a float in [0, 1), got {self.sparsity!r}")
            if not 0.0 <= float(self.sparsity) < 1.0 or math.isnan(self.sparsity):
                raise ConfigError(
                    f"sparsity must be in [0, 1) (fraction of weights to prune), got {self.sparsity}; "
                    "e.g. 0.9 prunes 90%"
                )
            if nm is not None and float(self.sparsity) < 1 - nm[0] / nm[1] - 1e-9:
                raise ConfigError(
                    f"sparsity={self.sparsity} is below what pattern {self.pattern!r} prunes ({1 - nm[0] / nm[1]:g}); "
                    "omit sparsity= to get exactly the pattern, or raise it"
                )
        if self.scope not in ("global", "layer", "row"):
            raise ConfigError(f"scope must be 'global', 'layer' or 'row', got {self.scope!r}")
        if (
            isinstance(self.max_batches, bool)
            or not isinstance(self.max_batches, int)
            or self.max_batches < 1
        ):
            raise ConfigError(f"max_batches must be a positive int, got {self.max_batches!r}")
        if not isinstance(self.chunk_elements, int) or self.chunk_elements < 1:
            raise ConfigError(f"chunk_elements must be a positive int, got {self.chunk_elements!r}")

    @property
    def nm(self) -> tuple[int, int] | None:
        return parse_pattern(self.pattern)


@dataclass(frozen=True)
class LayerSparsity:
    """Pruned count of one weight."""

    name: str
    kind: str
    shape: tuple[int, ...]
    numel: int
    zeros: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "shape": list(self.shape),
            "numel": self.numel,
            "zeros": self.zeros,
            "sparsity": self.sparsity,
        }


def _table(rows: Sequence[LayerSparsity], extra: Sequence[str] = ()) -> str:
    header = ("layer", "type", "shape", "params", "zeros", "sparsity")
    body = [
        (
            r.name or "(root)",
            r.kind,
            "x".join(map(str, r.shape)),
            f"{r.numel:,}",
            f"{r.zeros:,}",
            f"{r.sparsity:.2%}",
        )
        for r in rows
    ]
    total_n = sum(r.numel for r in rows)
    total_z = sum(r.zeros for r in rows)
    body.append(
        ("total", "", "", f"{total_n:,}", f"{total_z:,}", f"{(total_z / total_n if total_n else 0):.2%}")
    )
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    right = (False, False, False, True, True, True)

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ).rstrip()

    lines = [fmt(header), fmt(["-" * w for w in widths]), *(fmt(b) for b in body[:-1]), fmt(body[-1])]
    return "\n".join([*lines, *extra])


@dataclass(frozen=True, kw_only=True)
class WeightPruningResult:
    """What ``prune_weights`` did: per-layer pruned counts and the modules it skipped."""

    criterion: str
    scope: Scope
    pattern: str | None
    target_sparsity: float
    layers: tuple[LayerSparsity, ...]
    skipped: tuple[Skipped, ...] = field(default_factory=tuple)

    @property
    def sparsity(self) -> float:
        """Achieved fraction of masked weights over the pruned layers."""
        n = sum(r.numel for r in self.layers)
        return sum(r.zeros for r in self.layers) / n if n else 0.0

    def __str__(self) -> str:
        head = (
            f"prune_weights: {self.criterion}, scope={self.scope}, pattern={self.pattern}, "
            f"target {self.target_sparsity:.2%}, achieved {self.sparsity:.2%}"
        )
        extra = [f"skipped {s.name}: {s.reason}" for s in self.skipped]
        return head + "\n" + _table(self.layers, extra)

    def to_dict(self) -> dict[str, Any]:
        return {
            "criterion": self.criterion,
            "scope": self.scope,
            "pattern": self.pattern,
            "target_sparsity": self.target_sparsity,
            "sparsity": self.sparsity,
            "layers": [r.to_dict() for r in self.layers],
            "skipped": [{"name": s.name, "reason": s.reason} for s in self.skipped],
        }


# ---------------------------------------------------------------------------------------------
# scoring in chunks


def prune_weights(
    model: nn.Module,
    sparsity: float | None = UNSET,
    *,
    criterion: str | WeightCriterion = UNSET,
    scope: Scope = UNSET,
    pattern: str | None = UNSET,
    include: Any = UNSET,
    exclude: Any = UNSET,
    data: Any = None,
    loss_fn: LossFn | None = None,
    max_batches: int = UNSET,
    chunk_elements: int = UNSET,
    config: WeightPruningConfig | None = None,
) -> WeightPruningResult:
    """Prune individual weights in place with bool masks; return what was pruned per layer.

    Args:
        model: the model; pruned in place (``id`` of every parameter is kept).
        sparsity: total fraction of the selected weights to be pruned after this call, in [0, 1).
            Weights pruned earlier count toward it (pruning again is cumulative).
        criterion: ``"magnitude"`` (``"l1"``), ``"random"``, ``"taylor"``, ``"snip"``, ``"wanda"``,
            or a :class:`~prunekit.weights.criteria.WeightCriterion` object.
        scope: ``"global"`` (one threshold over all selected weights), ``"layer"`` (the same fraction
            per layer) or ``"row"`` (per output row). Default: the criterion's ``default_scope``
            (``"row"`` for Wanda, as in its paper; ``"global"`` for the others). A layer pruned to
            over 99% raises a :class:`~prunekit.errors.LayerPrunedAwayWarning`.
        pattern: ``"N:M"`` (e.g. ``"2:4"``): at most N non-zeros in every M consecutive weights
            along the input dimension.
        include: module names, fnmatch globs or types to prune (default: every Linear/Conv weight).
        exclude: module names, globs or types to leave dense.
        data: for data-aware criteria: an iterable of ``(inputs, targets)`` or a DataLoader.
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` for gradient criteria (taylor, snip).
        max_batches: at most this many batches of ``data`` are used.
        chunk_elements: scores held in memory at a time.
        config: a :class:`WeightPruningConfig` holding every option above (all but ``data`` and
            ``loss_fn``); a keyword that sets the same option as ``config`` raises ``ConfigError``.

    Returns:
        A :class:`WeightPruningResult` (per-layer pruned counts, skipped modules).

    Raises:
        ConfigError: bad sparsity, scope, pattern string or criterion name.
        UnknownModuleError: an ``include``/``exclude`` name matches nothing.
        PatternError: a layer's input dimension is not a multiple of M.
        DataRequiredError: a data-aware criterion without ``data`` (or ``loss_fn``).

    On any error the model is left exactly as it was.

    Example:
        >>> import torch, prunekit as pk
        >>> model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
        >>> result = pk.prune_weights(model, 0.75, scope="layer")
        >>> round(result.sparsity, 4), round(pk.sparsity(model), 4)
        (0.75, 0.75)
        >>> result = pk.prune_weights(model, pattern="2:4", include=["0"])
        >>> int(model[0].weight.reshape(32, 4, 4).ne(0).sum(-1).max())
        2
    """
    if scope is UNSET and config is None:  # the criterion's own default: Wanda compares within output rows
        scope = get_criterion(criterion if criterion is not UNSET else "magnitude").default_scope
    cfg = merge_config(
        WeightPruningConfig,
        config,
        verb="prune_weights",
        sparsity=sparsity,
        scope=scope,
        pattern=pattern,
        max_batches=max_batches,
        chunk_elements=chunk_elements,
        criterion=criterion,
        include=include,
        exclude=exclude,
    )
    include, exclude = cfg.include, cfg.exclude
    crit = get_criterion(cfg.criterion)
    targets, skipped = resolve_targets(model, include, exclude)
    if not targets:
        raise ConfigError(
            "no weights selected for pruning: the model has no Linear/Conv layers"
            + (" left after include=/exclude=" if include is not None or exclude is not None else "")
            + "; name the layers to prune with include=[...]"
        )
    nm = cfg.nm
    if nm is not None:
        assert cfg.pattern is not None
        check_pattern(targets, cfg.pattern, nm)
    if crit.requires_data and data is None:
        need = "data= (an iterable of (inputs, targets) batches, or a DataLoader)"
        if crit.requires_loss_fn:
            need += " and loss_fn= (e.g. torch.nn.functional.cross_entropy)"
        raise DataRequiredError(
            f"criterion {crit.name!r} scores weights on data: pass {need}, or use 'magnitude'"
        )
    if crit.requires_loss_fn and loss_fn is None:
        raise DataRequiredError(
            f"criterion {crit.name!r} needs gradients of a loss: pass loss_fn=(outputs, targets) -> scalar, "
            "e.g. loss_fn=torch.nn.functional.cross_entropy"
        )
    calibration = Calibration(data=data, loss_fn=loss_fn, max_batches=cfg.max_batches)
    scorer = Scorer(crit, cfg)
    target_sparsity = cfg.sparsity if cfg.sparsity is not None else 1 - nm[0] / nm[1]  # type: ignore[index]
    try:
        crit.prepare(model, targets, calibration)
        if cfg.scope == "row":
            with torch.no_grad():
                apply_rows(targets, target_sparsity, full_scores(scorer, targets))
        with torch.no_grad():
            groups = [[t] for t in targets] if cfg.scope == "layer" else [list(targets)]
            groups = [] if cfg.scope == "row" else groups
            # select every threshold first (no mutation), then mask
            plans: list[tuple[list[Target], tuple[int, int] | None]] = []
            for group in groups:
                n = sum(t.weight.numel() for t in group)
                k = int(math.floor(float(cfg.sparsity) * n + 0.5)) if cfg.sparsity is not None else 0
                plans.append((group, kth_key(scorer, group, k) if k > 0 else None))
            # a criterion is called again while masking: if it raises there, no layer stays masked
            # (magnitude calls no user code: no copy then)
            covered = [] if type(crit) is Magnitude else [(t.module, t.param_name) for t in targets]
            with restored_on_error(covered):
                for group, threshold in plans:
                    apply_threshold(scorer, group, threshold)
    finally:
        crit.release()
    warn_pruned_away(targets, f"prune_weights ({crit.name}, scope={cfg.scope})")
    layers = tuple(
        LayerSparsity(t.name, t.kind, tuple(t.weight.shape), t.weight.numel(), pruned_count(t))
        for t in targets
    )
    result = WeightPruningResult(
        criterion=crit.name,
        scope=cfg.scope,
        pattern=cfg.pattern,
        target_sparsity=float(target_sparsity),
        layers=layers,
        skipped=tuple(skipped),
    )
    from prunekit.kernels import warn_if_no_speedup  # SpeedupWarning if it cannot be faster here

    warn_if_no_speedup(result)
    return result


# ---------------------------------------------------------------------------------------------
# reports


def _prunable(model: nn.Module) -> list[tuple[str, nn.Module, str, torch.Tensor]]:
    out: list[tuple[str, nn.Module, str, torch.Tensor]] = []
    seen: set[int] = set()
    for mp in masked_parameters(model):
        if id(mp.param) not in seen:
            seen.add(id(mp.param))
            out.append((mp.module_name, mp.module, mp.name, mp.param))
    for name, module in model.named_modules():
        w = module._parameters.get("weight")
        if is_default_type(module) and isinstance(w, torch.Tensor) and id(w) not in seen:
            seen.add(id(w))
            out.append((name, module, "weight", w))
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    out.sort(key=lambda row: order.get(row[0], 0))
    return out


@dataclass(frozen=True)
class SparsityReport:
    """Zeros of every prunable weight (Linear/Conv weights and every masked parameter)."""

    layers: tuple[LayerSparsity, ...]
    masked: tuple[str, ...]

    @property
    def numel(self) -> int:
        return sum(r.numel for r in self.layers)

    @property
    def zeros(self) -> int:
        return sum(r.zeros for r in self.layers)

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0

    def __str__(self) -> str:
        return _table(self.layers, [f"masked: {len(self.masked)} of {len(self.layers)} weights"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "numel": self.numel,
            "zeros": self.zeros,
            "sparsity": self.sparsity,
            "layers": [{**r.to_dict(), "masked": r.name in self.masked} for r in self.layers],
        }


def sparsity_report(model: nn.Module) -> SparsityReport:
    """Per-layer zeros of the prunable weights, as a printable table with ``to_dict()``.

    Example:
        >>> import torch, prunekit as pk
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
        >>> _ = pk.prune_weights(model, 0.5, scope="layer")
        >>> [row["sparsity"] for row in pk.sparsity_report(model).to_dict()["layers"]]
        [0.5, 0.5]
    """
    rows = []
    masked = []
    for name, module, pname, w in _prunable(model):
        label = name if pname == "weight" else f"{name}.{pname}"
        if get_mask(module, pname) is not None:
            masked.append(label)
        zeros = w.numel() - int(torch.count_nonzero(w.detach()))
        rows.append(LayerSparsity(label, type(module).__name__, tuple(w.shape), w.numel(), zeros))
    return SparsityReport(tuple(rows), tuple(masked))


def sparsity(model: nn.Module) -> float:
    """Fraction of zeros over the prunable weights (Linear/Conv weights and every masked parameter).

    Example:
        >>> import torch, prunekit as pk
        >>> layer = torch.nn.Linear(10, 10)
        >>> pk.sparsity(layer)
        0.0
    """
    return sparsity_report(model).sparsity


__all__ = [
    "LayerSparsity",
    "SparsityReport",
    "WeightPruningConfig",
    "WeightPruningResult",
    "as_selection",
    "parse_pattern",
    "prune_weights",
    "sparsity",
    "sparsity_report",
]
