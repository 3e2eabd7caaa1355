"""The ``oneshot`` recipe step: :class:`prunekit.OneShotConfig` in YAML.

.. code-block:: yaml

    prune:
      - what: oneshot          # one-shot calibration pruning (pk.prune_oneshot)
        method: refit          # magnitude | wanda | sparsegpt | refit (default)
        sparsity: 0.5
        pattern: null          # or "2:4"
        layer_ratios: null     # or owl, or {glob: sparsity}
        max_batches: null

The step's keys are exactly ``OneShotConfig``'s fields (less ``progress``, which the run decides);
``OneShotStep.config`` is the validated ``OneShotConfig`` that the runner passes to ``prune_oneshot``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from prunekit.errors import ConfigError
from prunekit.oneshot import OneShotConfig

NOT_IN_RECIPES = ("progress",)  # decided by the run (``progress=`` / the CLI), not by the recipe


class OneShotStepSchema(BaseModel):
    """The YAML boundary of a ``what: oneshot`` step (field names = ``OneShotConfig`` fields)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    what: Literal["oneshot"]
    method: Literal["magnitude", "wanda", "sparsegpt", "refit"] = "refit"
    sparsity: float | None = Field(default=0.5, ge=0.0, lt=1.0, description="fraction of zeros, in [0, 1)")
    pattern: str | None = Field(default=None, description="N:M pattern such as '2:4'")
    include: list[str] | None = None
    exclude: list[str] | None = None
    layer_ratios: Literal["owl"] | dict[str, float] | None = None
    owl_lambda: float = Field(default=0.08, ge=0.0, lt=0.5)
    owl_threshold: float = Field(default=5.0, gt=0.0)
    block_size: int = Field(default=128, ge=1)
    dampening: float = Field(default=0.01, ge=0.0, lt=10.0)
    max_batches: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _as_config(self) -> OneShotStepSchema:
        try:
            self.to_config()
        except ConfigError as e:  # pydantic reports it with the step's line number
            raise ValueError(str(e)) from None
        return self

    def to_config(self) -> OneShotConfig:
        """The :class:`OneShotConfig` this step describes."""
        return OneShotConfig.from_dict(self.model_dump(exclude={"what"}))


def config_keys() -> list[str]:
    """The keys a ``oneshot`` step accepts besides ``what`` (``OneShotConfig``'s fields)."""
    return [f.name for f in fields(OneShotConfig) if f.name not in NOT_IN_RECIPES]


@dataclass(frozen=True, kw_only=True)
class OneShotStep:
    """Prune in one shot with calibration data (see ``prunekit.prune_oneshot``).

    Example:
        >>> step = OneShotStep.from_mapping({"method": "wanda", "sparsity": 0.6})
        >>> step.config.method, step.config.sparsity
        ('wanda', 0.6)
    """

    config: OneShotConfig = field(default_factory=OneShotConfig)
    what: Literal["oneshot"] = "oneshot"

    def __post_init__(self) -> None:
        if not isinstance(self.config, OneShotConfig):
            raise ConfigError(f"OneShotStep.config must be a OneShotConfig, got {type(self.config).__name__}")
        if any(not isinstance(v, str) for v in (*(self.config.include or ()), *(self.config.exclude or ()))):
            raise ConfigError("a recipe's oneshot include/exclude hold module names or globs, not types")

    @property
    def criterion(self) -> str:
        """The method's name (what the other steps call their criterion)."""
        return self.config.method

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> OneShotStep:
        """Validate a plain mapping of ``OneShotConfig`` options (``what`` optional).

        Raises:
            ConfigError: an unknown key or a value ``OneShotConfig`` refuses.
        """
        values = {k: v for k, v in dict(data).items() if k != "what"}
        bad = sorted(set(values) - set(config_keys()))
        if bad:
            raise ConfigError(
                f"oneshot: unknown key(s) {bad}; allowed keys: what, {', '.join(config_keys())}"
            )
        return cls(config=OneShotConfig.from_dict(values))

    def to_dict(self) -> dict[str, Any]:
        """The step as recipe YAML data (``what: oneshot`` and the config's options)."""
        data = self.config.to_dict()
        data.pop("version", None)
        for name in NOT_IN_RECIPES:
            data.pop(name, None)
        return {"what": "oneshot", **data}


__all__ = ["NOT_IN_RECIPES", "OneShotStep", "OneShotStepSchema", "config_keys"]
