"""``OneShotConfig``: every option of one-shot calibration pruning, validated, versioned.

The same object drives :func:`prunekit.prune_oneshot` (in-memory model) and
:func:`prunekit.prune_checkpoint` (streamed checkpoint), and round-trips through plain JSON
(``to_dict`` / ``from_dict``, with a ``version`` field) so a recipe step can hold it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

from prunekit.errors import ConfigError

Method = Literal["magnitude", "wanda", "sparsegpt", "refit"]
METHODS: tuple[str, ...] = get_args(Method)
CONFIG_VERSION = 1


def parse_nm(pattern: str | None) -> tuple[int, int] | None:
    """``"2:4"`` -> ``(2, 4)``, ``None`` -> ``None``; raises :class:`ConfigError` otherwise."""
    from prunekit.weights import parse_pattern

    return parse_pattern(pattern)


def _check_fraction(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(float(value)):
        raise ConfigError(f"{what} must be a float in [0, 1), got {value!r}")
    if not 0.0 <= float(value) < 1.0:
        raise ConfigError(f"{what} must be in [0, 1) (fraction of weights to prune), got {value}; e.g. 0.5")
    return float(value)


@dataclass(frozen=True, kw_only=True)
class OneShotConfig:
    """Options of one-shot pruning with calibration data (frozen; use ``dataclasses.replace``).

    Attributes:
        method: ``"magnitude"`` (|w| per output row), ``"wanda"`` (|w|·||x|| per output row),
            ``"sparsegpt"`` (OBS reconstruction with lazy column blocks) or ``"refit"``
            (SparseGPT's mask, then the exact least-squares optimum of the kept weights, fitted
            to the dense model's outputs; the most accurate, the default).
        sparsity: fraction of each pruned weight set to zero, in [0, 1). ``None`` with a
            ``pattern`` means exactly the pattern's ``1 - N/M``.
        pattern: ``"N:M"`` (keep at most N of every M consecutive inputs) or ``None``. With a
            ``sparsity`` above ``1 - N/M``, more weights are pruned on top of the pattern.
        include: module names, globs or types to prune (default: every Linear / GPT-2 Conv1D
            inside the transformer blocks).
        exclude: module names, globs or types to leave dense.
        layer_ratios: ``None`` (the same sparsity everywhere), ``"owl"`` (outlier-weighted
            layer-wise sparsity) or a mapping ``{module name or glob: sparsity}``.
        owl_lambda: OWL's spread: block sparsities span at most ``2 × owl_lambda`` around ``sparsity``.
        owl_threshold: OWL's outlier threshold M: an activation-weighted score above
            ``M × mean`` of its layer counts as an outlier.
        block_size: SparseGPT's lazy column block (columns updated at once).
        dampening: fraction of the mean Hessian diagonal added to the diagonal.
        max_batches: use at most this many calibration batches (``None``: all of them).
        progress: show a tqdm bar over blocks.
    """

    method: Method = "refit"
    sparsity: float | None = 0.5
    pattern: str | None = None
    include: tuple[Any, ...] | None = None
    exclude: tuple[Any, ...] | None = None
    layer_ratios: str | Mapping[str, float] | None = None
    owl_lambda: float = 0.08
    owl_threshold: float = 5.0
    block_size: int = 128
    dampening: float = 0.01
    max_batches: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        nm = parse_nm(self.pattern)
        if self.sparsity is None:
            if nm is None:
                raise ConfigError(
                    "sparsity is required (a float in [0, 1), e.g. 0.5) unless pattern= is given"
                )
        else:
            s = _check_fraction(self.sparsity, "sparsity")
            if nm is not None and s < 1 - nm[0] / nm[1] - 1e-9:
                raise ConfigError(
                    f"sparsity={s} is below what pattern {self.pattern!r} prunes ({1 - nm[0] / nm[1]:g}); "
                    "pass sparsity=None to get exactly the pattern, or raise it"
                )
        for name in ("include", "exclude"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, str) or not isinstance(value, tuple)):
                object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        ratios = self.layer_ratios
        if isinstance(ratios, str):
            if ratios != "owl":
                raise ConfigError(f"layer_ratios must be None, 'owl' or {{module: sparsity}}, got {ratios!r}")
            if nm is not None and self.sparsity is None:
                raise ConfigError(
                    "layer_ratios='owl' varies the sparsity per block, which a bare N:M pattern cannot; "
                    "give sparsity= above the pattern's, or drop layer_ratios"
                )
        elif ratios is not None:
            if not isinstance(ratios, Mapping) or not ratios:
                raise ConfigError(f"layer_ratios must be None, 'owl' or a non-empty mapping, got {ratios!r}")
            clean = {}
            for key, value in ratios.items():
                if not isinstance(key, str):
                    raise ConfigError(f"layer_ratios keys must be module names or globs, got {key!r}")
                clean[key] = _check_fraction(value, f"layer_ratios[{key!r}]")
            object.__setattr__(self, "layer_ratios", dict(clean))
        if not isinstance(self.owl_lambda, (int, float)) or not 0.0 <= self.owl_lambda < 0.5:
            raise ConfigError(f"owl_lambda must be in [0, 0.5), got {self.owl_lambda!r}")
        if not isinstance(self.owl_threshold, (int, float)) or not self.owl_threshold > 0:
            raise ConfigError(f"owl_threshold must be > 0, got {self.owl_threshold!r}")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            raise ConfigError(f"block_size must be a positive int (e.g. 128), got {self.block_size!r}")
        if nm is not None and self.block_size % nm[1]:
            raise ConfigError(
                f"block_size={self.block_size} must be a multiple of M={nm[1]} for pattern {self.pattern!r}"
            )
        if (
            isinstance(self.dampening, bool)
            or not isinstance(self.dampening, (int, float))
            or not 0.0 <= self.dampening < 10.0
        ):
            raise ConfigError(f"dampening must be a float in [0, 10) (e.g. 0.01), got {self.dampening!r}")
        mb = self.max_batches
        if mb is not None and (isinstance(mb, bool) or not isinstance(mb, int) or mb < 1):
            raise ConfigError(f"max_batches must be None or a positive int, got {mb!r}")

    @property
    def nm(self) -> tuple[int, int] | None:
        """The pattern as ``(N, M)``, or ``None``."""
        return parse_nm(self.pattern)

    @property
    def target_sparsity(self) -> float:
        """The requested sparsity (the pattern's ``1 - N/M`` when ``sparsity`` is ``None``)."""
        if self.sparsity is not None:
            return float(self.sparsity)
        nm = self.nm
        assert nm is not None
        return 1 - nm[0] / nm[1]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict with a ``version``; ``from_dict`` reads it back.

        Raises:
            ConfigError: ``include``/``exclude`` hold module types (only names and globs are data).
        """
        out: dict[str, Any] = {"version": CONFIG_VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                if any(not isinstance(v, str) for v in value):
                    raise ConfigError(
                        f"{f.name}= holds module types, which JSON cannot hold; use names or globs to save it"
                    )
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OneShotConfig:
        """Rebuild a config from :meth:`to_dict` output (or a recipe's ``oneshot:`` mapping).

        Raises:
            ConfigError: an unknown key, a newer version, or an invalid value.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"a oneshot config must be a mapping, got {type(data).__name__}")
        values = dict(data)
        version = values.pop("version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise ConfigError(
                f"oneshot config version {version!r} is not supported (this prunekit reads {CONFIG_VERSION})"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown oneshot option(s) {unknown}; valid: {sorted(known)}")
        for name in ("include", "exclude"):
            if isinstance(values.get(name), list):
                values[name] = tuple(values[name])
        return cls(**values)


__all__ = ["CONFIG_VERSION", "METHODS", "Method", "OneShotConfig", "parse_nm"]
