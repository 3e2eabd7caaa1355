"""The ``heads`` recipe step: :class:`prunekit.HeadPruneConfig` in YAML (``prunekit.prune_heads``).

.. code-block:: yaml

    prune:
      - what: heads                     # remove attention heads by name, physically
        heads:                          # module name or glob -> head indices
          encoder.layer.0.attention.self: [0, 3]
          "encoder.layer.*.attention": [11]
      - what: heads                     # or: the n least sensitive heads of a head-sensitivity run
        from: runs/sens/sensitivity.json  # `prunekit analyze MODEL --granularity head --out runs/sens`
        n: 12                           # (a relative path is read beside the recipe file)

``heads`` and ``from``/``n`` may be combined (the union is removed). ``gqa`` is as in ``prune_heads``.
A step runs whole in the last round of an iterative schedule. ``HeadsStep.config`` is the validated
``HeadPruneConfig`` of the named heads; ``from``/``n`` are read when the step runs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import nn

from prunekit.errors import ConfigError, PlanError, UnknownModuleError
from prunekit.structured import HeadPruneConfig


class HeadsStepSchema(BaseModel):
    """The YAML boundary of a ``what: heads`` step."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    what: Literal["heads"]
    heads: dict[str, list[int]] | None = Field(
        default=None, description="attention module name or glob -> head indices"
    )
    from_: str | None = Field(default=None, alias="from", description="a head-sensitivity sensitivity.json")
    n: int | None = Field(default=None, ge=1, description="how many of the least sensitive heads of 'from'")
    gqa: Literal["kv_groups", "query_heads"] = "kv_groups"

    @field_validator("heads")
    @classmethod
    def _indices(cls, v: dict[str, list[int]] | None) -> dict[str, list[int]] | None:
        for name, idx in (v or {}).items():
            if any(h < 0 for h in idx):
                raise ValueError(f"heads[{name!r}]: head indices are integers >= 0; got {idx}")
        return v

    @model_validator(mode="after")
    def _check(self) -> HeadsStepSchema:
        if (self.from_ is None) != (self.n is None):
            raise ValueError(
                "give 'from' (a sensitivity.json of `prunekit analyze --granularity head`) with 'n'"
            )
        if not self.heads and self.from_ is None:
            raise ValueError("give heads: {module: [indices]} and/or from: sensitivity.json with n")
        try:
            self.to_config()
        except ConfigError as e:  # pydantic reports it with the step's line number
            raise ValueError(str(e)) from None
        return self

    def to_config(self) -> HeadPruneConfig:
        """The :class:`HeadPruneConfig` of the heads named in the step (without ``from``/``n``)."""
        return HeadPruneConfig(heads=dict(self.heads or {}), gqa=self.gqa)  # type: ignore[arg-type]

    def to_step(self) -> HeadsStep:
        return HeadsStep(config=self.to_config(), source=self.from_, n=self.n)


@dataclass(frozen=True, kw_only=True)
class HeadsStep:
    """Remove attention heads by name, or the ``n`` least sensitive of ``source`` (``prunekit.prune_heads``).

    Example:
        >>> step = HeadsStep.from_mapping({"heads": {"encoder.layer.0.attention": [0, 3]}})
        >>> step.config.heads
        {'encoder.layer.0.attention': (0, 3)}
    """

    config: HeadPruneConfig = field(default_factory=HeadPruneConfig)
    source: str | None = None
    n: int | None = None
    what: Literal["heads"] = "heads"

    def __post_init__(self) -> None:
        if not isinstance(self.config, HeadPruneConfig):
            raise ConfigError(f"HeadsStep.config must be a HeadPruneConfig, got {type(self.config).__name__}")
        if (self.source is None) != (self.n is None) or (self.n is not None and self.n < 1):
            raise ConfigError("a heads step takes 'from' (sensitivity.json) together with n >= 1")
        if not self.config.heads and self.source is None:
            raise ConfigError("a heads step names heads or gives from: sensitivity.json with n")

    @property
    def criterion(self) -> str:
        """``"named"``: the heads are chosen by the recipe, not by a data-aware score."""
        return "named"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> HeadsStep:
        """Validate a plain mapping of the step's keys (``what`` optional).

        Raises:
            ConfigError: an unknown key or a value the step refuses.
        """
        try:
            schema = HeadsStepSchema.model_validate({"what": "heads", **dict(data)})
        except ValidationError as e:
            msgs = [f"{'.'.join(map(str, err['loc'])) or 'heads'}: {err['msg']}" for err in e.errors()]
            raise ConfigError("heads step: " + "; ".join(msgs)) from None
        return schema.to_step()

    def to_dict(self) -> dict[str, Any]:
        """The step as recipe YAML data."""
        out: dict[str, Any] = {"what": "heads"}
        if self.config.heads:
            out["heads"] = {k: list(v) for k, v in self.config.heads.items()}
        if self.source is not None:
            out["from"], out["n"] = self.source, self.n
        out["gqa"] = self.config.gqa
        return out

    def resolve(self, base: str | Path | None = None) -> HeadPruneConfig:
        """The config with the ``n`` least sensitive heads of ``source`` added (``base``: the recipe's folder).

        Raises:
            ConfigError: the file is missing, is not a head-sensitivity result, or has fewer than ``n`` heads.
        """
        if self.source is None:
            return self.config
        path = Path(self.source)
        if not path.is_absolute() and base is not None:
            path = Path(base) / path
        heads = least_sensitive_heads(path, int(self.n or 0))
        merged = {k: set(v) for k, v in self.config.heads.items()}
        for name, idx in heads.items():
            merged.setdefault(name, set()).update(idx)
        return replace(self.config, heads={k: tuple(sorted(v)) for k, v in merged.items()})


def least_sensitive_heads(path: str | Path, n: int) -> dict[str, list[int]]:
    """The ``n`` heads whose removal hurt least in a ``granularity="head"`` sensitivity result file.

    Raises:
        ConfigError: the file cannot be read, is not a head result, or holds fewer than ``n`` heads.
    """
    from prunekit.analysis import SensitivityResult

    try:
        result = SensitivityResult.from_dict(json.loads(Path(path).read_text()))
    except FileNotFoundError:
        raise ConfigError(f"heads: from: {path} does not exist") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"heads: from: {path} is not a sensitivity.json ({e})") from None
    if result.granularity != "head":
        raise ConfigError(
            f"heads: from: {path} holds a granularity={result.granularity!r} result; run "
            "`prunekit analyze MODEL --granularity head` for one score per head"
        )
    ranking = result.ranking()  # most sensitive first
    if n > len(ranking):
        raise ConfigError(f"heads: n: {n} but {path} scores only {len(ranking)} heads")
    out: dict[str, list[int]] = {}
    for name in ranking[len(ranking) - n :]:
        module, _, unit = name.rpartition("/")
        digits = unit.removeprefix("head").removeprefix("kvgroup")
        if not module or not digits.isdigit():
            raise ConfigError(f"heads: from: {path}: {name!r} is not a '<module>/head<i>' row")
        out.setdefault(module, []).append(int(digits))
    return {k: sorted(v) for k, v in out.items()}


def step_line(source_path: str | None, index: int, key: str | None = None) -> str:
    """``file:line`` of step ``index`` (or of its ``heads`` key ``key``) in the recipe file, or ``recipe``."""
    if source_path is None:
        return "recipe"
    try:
        import yaml

        node: Any = yaml.compose(Path(source_path).read_text(), Loader=yaml.SafeLoader)
    except (OSError, ValueError):
        return source_path
    line = None
    for part in ("prune", index, "heads", key):
        if part is None:
            break
        if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        elif isinstance(node, yaml.MappingNode):
            hit = [(k, v) for k, v in node.value if k.value == part]
            if not hit:
                break
            line = int(hit[0][0].start_mark.line) + 1  # the key's line
            node = hit[0][1]
            continue
        else:
            break
        line = int(node.start_mark.line) + 1
    return f"{source_path}:{line}" if line else source_path


def apply_heads(
    model: nn.Module,
    st: HeadsStep,
    frac: float,
    example_inputs: Any,
    *,
    index: int,
    source_path: str | None,
) -> dict[str, Any]:
    """Run a heads step (whole, in the last round); errors name the recipe line of the step / key."""
    from prunekit.structured import prune_heads

    if frac < 1.0:
        return {}
    if example_inputs is None:
        raise ConfigError("a heads step traces the model: give example inputs or data")
    base = Path(source_path).parent if source_path else None
    try:
        cfg = st.resolve(base)
        prune_heads(model, example_inputs, config=cfg)
    except (ConfigError, UnknownModuleError, PlanError) as e:
        text = str(e)
        key = next((k for k in st.config.heads if repr(k) in text or f"'{k}" in text), None)
        where = step_line(source_path, index, key)
        raise type(e)(f"{where}: prune[{index}] (heads): {text}") from None
    return {"heads": {k: list(v) for k, v in cfg.heads.items()}}


__all__ = ["HeadsStep", "HeadsStepSchema", "apply_heads", "least_sensitive_heads", "step_line"]
