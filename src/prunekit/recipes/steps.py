"""What a recipe is made of: the schema of each YAML section (pydantic), the prune steps (each one its verb's config, see :mod:`prunekit.recipes.config_steps`), and the result of a run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from prunekit.errors import ConfigError
from prunekit.oneshot import OneShotConfig
from prunekit.recipes.config_steps import STEP_KINDS, ConfigStep, error_text, register_step
from prunekit.structured import ChannelPruneConfig, LayerPruningConfig
from prunekit.weights import WeightPruningConfig

if TYPE_CHECKING:
    from prunekit.recipes.schema import Recipe


DATA_AWARE = {
    "weights": ("taylor", "snip", "wanda"),
    "channels": ("taylor", "activation", "wanda"),
    "layers": ("loss",),
    "oneshot": ("magnitude", "wanda", "sparsegpt", "refit"),  # every one-shot method calibrates
    "heads": (),  # named heads (or a sensitivity file): no data
}


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSchema(StrictModel):
    source: str = Field(description="digits, mnist, fashion-mnist or module:factory")
    dir: str | None = None
    batch_size: int = Field(default=64, ge=1)
    limit: int | None = Field(default=None, ge=1)
    calibration_batches: int = Field(default=4, ge=1)


class FinetuneSchema(StrictModel):
    epochs: float = Field(default=1.0, ge=0.0)
    lr: float = Field(default=1e-3, gt=0.0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    loss: str | None = Field(
        default=None,
        description="the fine-tuning loss: a task (classification, embedding, causal-lm, masked-lm) or "
        "module:function, fn(model, batch) -> scalar; default: the run's task (--task / loss_fn=)",
    )
    distill: Literal["cosine", "mse"] = "cosine"  # how task embedding compares with the dense teacher

    @field_validator("loss")
    @classmethod
    def _loss(cls, v: str | None) -> str | None:
        from prunekit.recipes.finetune_step import check_loss_name

        return check_loss_name(v)


class ScheduleSchema(StrictModel):
    kind: Literal["one-shot", "iterative"] = "one-shot"
    rounds: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _rounds(self) -> ScheduleSchema:
        if self.kind == "one-shot" and self.rounds != 1:
            raise ValueError("a one-shot schedule has rounds: 1; use kind: iterative for several rounds")
        return self


class MeasureSchema(StrictModel):
    latency: bool = True
    latency_repeats: int = Field(default=30, ge=1)
    threads: int = Field(default=1, ge=1)


class RecipeSchema(StrictModel):
    version: Literal[1] = 1
    name: str | None = None
    description: str | None = None
    model: str | None = None
    seed: int = 0
    data: DataSchema | None = None
    prune: list[dict[str, Any]] = Field(min_length=1)  # each checked by its step class
    schedule: ScheduleSchema = ScheduleSchema()
    finetune: FinetuneSchema | None = None
    measure: MeasureSchema = MeasureSchema()


@register_step
@dataclass(frozen=True, init=False)
class WeightsStep(ConfigStep[WeightPruningConfig]):
    """Prune individual weights (``prune_weights``): the keys are :class:`prunekit.WeightPruningConfig`'s fields.

    Without ``scope`` (or with ``scope: null``) the step takes the criterion's own default, as
    ``prune_weights`` does (``row`` for Wanda, ``global`` for the others).

    Example:
        >>> WeightsStep.from_mapping({"sparsity": 0.5, "criterion": "wanda"}).config.scope
        'row'
    """

    what: ClassVar[str] = "weights"
    config_cls: ClassVar[type[Any]] = WeightPruningConfig
    default_notes: ClassVar[Mapping[str, str]] = {"scope": "the criterion's own (row for wanda, else global)"}

    @classmethod
    def fill(cls, values: dict[str, Any]) -> dict[str, Any]:
        if values.get("scope") is None:
            from prunekit.weights import get_criterion

            try:
                scope = get_criterion(values.get("criterion", "magnitude")).default_scope
            except (ConfigError, TypeError):  # the config names the bad criterion, at its key
                scope = "global"
            values = {**values, "scope": scope}
        return values


@register_step
@dataclass(frozen=True, init=False)
class ChannelsStep(ConfigStep[ChannelPruneConfig]):
    """Remove channels physically (``prune_channels``): the keys are :class:`prunekit.ChannelPruneConfig`'s fields.

    Exactly one of ``ratio``, ``reduce_macs``, ``reduce_params``. ``ignore`` (now ``exclude``) and
    ``target_macs`` / ``target_params`` (fraction kept; now ``reduce_* = 1 - target_*``) still work, with a
    ``DeprecationWarning``. ``exclude`` holds module names.
    """

    what: ClassVar[str] = "channels"
    config_cls: ClassVar[type[Any]] = ChannelPruneConfig
    renamed: ClassVar[Mapping[str, str]] = {"ignore": "exclude"}
    deprecated: ClassVar[Mapping[str, str]] = {
        "target_macs": "reduce_macs (= 1 - target_macs, the fraction removed)",
        "target_params": "reduce_params (= 1 - target_params, the fraction removed)",
    }
    one_of: ClassVar[tuple[str, ...]] = ("ratio", "reduce_macs", "reduce_params")


@register_step
@dataclass(frozen=True, init=False)
class LayersStep(ConfigStep[LayerPruningConfig]):
    """Remove the ``n`` least important blocks (``prune_layers``): :class:`prunekit.LayerPruningConfig`'s fields.

    A recipe spells ``n`` out (no default); ``blocks`` (now ``include``) still works, with a warning.
    """

    what: ClassVar[str] = "layers"
    config_cls: ClassVar[type[Any]] = LayerPruningConfig
    renamed: ClassVar[Mapping[str, str]] = {"blocks": "include"}
    required: ClassVar[tuple[str, ...]] = ("n",)


NOT_IN_RECIPES = ("progress",)  # decided by the run (``progress=`` / the CLI), not by the recipe


@register_step
@dataclass(frozen=True, init=False)
class OneShotStep(ConfigStep[OneShotConfig]):
    """Prune in one shot with calibration data (see ``prunekit.prune_oneshot``).

    Example:
        >>> step = OneShotStep.from_mapping({"method": "wanda", "sparsity": 0.6})
        >>> step.config.method, step.config.sparsity
        ('wanda', 0.6)
    """

    what: ClassVar[str] = "oneshot"
    config_cls: ClassVar[type[Any]] = OneShotConfig
    not_in_yaml: ClassVar[tuple[str, ...]] = NOT_IN_RECIPES

    def check(self) -> None:
        if any(not isinstance(v, str) for v in (*(self.config.include or ()), *(self.config.exclude or ()))):
            raise ConfigError("a recipe's oneshot include/exclude hold module names or globs, not types")

    @property
    def criterion(self) -> str:
        """The method's name (what the other steps call their criterion)."""
        return str(self.config.method)


@dataclass(frozen=True, kw_only=True)
class DataSpec:
    """Where the data comes from (a built-in name or ``module:factory``) and how to batch it."""

    source: str
    dir: str | None = None
    batch_size: int = 64
    limit: int | None = None
    calibration_batches: int = 4


@dataclass(frozen=True, kw_only=True)
class Finetune:
    """Fine-tuning after each pruning round (``prunekit.fit``), with the run's task loss or ``loss``.

    ``loss``: ``None`` (the run's loss: ``--task`` / ``loss_fn=``), a task name (``embedding`` distils to
    a frozen copy of the model taken before pruning, compared by ``distill``: cosine or mse), or
    ``module:function``, a general loss ``fn(model, batch) -> scalar tensor``.
    """

    epochs: float = 1.0
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    loss: str | None = None
    distill: str = "cosine"


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """``one-shot`` (prune once) or ``iterative`` (reach the targets in ``rounds`` equal steps)."""

    kind: str = "one-shot"
    rounds: int = 1


@dataclass(frozen=True, kw_only=True)
class Measure:
    """What to measure before and after (latency with a fixed thread count)."""

    latency: bool = True
    latency_repeats: int = 30
    threads: int = 1


@dataclass(frozen=True, kw_only=True)
class RecipeResult:
    """What a recipe run did: metrics before/after, per-layer rows, history of rounds, timing."""

    model: nn.Module
    recipe: Recipe
    before: dict[str, Any]
    after: dict[str, Any]
    layers: list[dict[str, Any]]
    history: list[dict[str, Any]]
    hardware: dict[str, Any]
    seconds: float
    notes: tuple[str, ...] = ()
    example_inputs: Any = None

    def to_dict(self) -> dict[str, Any]:
        """All numbers (the content of ``report.json`` minus the envelope)."""
        return {
            "recipe": self.recipe.to_dict(),
            "before": self.before,
            "after": self.after,
            "layers": self.layers,
            "history": self.history,
            "hardware": self.hardware,
            "seconds": self.seconds,
            "notes": list(self.notes),
        }


SECTION_SCHEMAS: dict[str, type[BaseModel]] = {
    "data": DataSchema,
    "finetune": FinetuneSchema,
    "schedule": ScheduleSchema,
    "measure": MeasureSchema,
}


def child_node(node: yaml.Node | None, key: Any) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if k.value == key:
                return v
    if isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
        return node.value[key]
    return None


def key_node(node: yaml.Node | None, key: Any) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, _ in node.value:
            if k.value == key:
                return k
    return None


def clean_loc(loc: tuple[Any, ...], data: Any) -> tuple[Any, ...]:
    """Drop pydantic's validator tags (``schedule.function-after`` -> ``schedule``)."""
    out: list[Any] = []
    cur = data
    for part in loc:
        if (
            isinstance(cur, dict)
            and part not in cur
            and isinstance(part, str)
            and part.startswith("function-")
        ):
            continue
        out.append(part)
        if isinstance(cur, dict):
            cur = cur.get(part)
        elif isinstance(cur, list) and isinstance(part, int) and part < len(cur):
            cur = cur[part]
        else:
            cur = None
    return tuple(out)


def line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the value at ``loc`` (or of its key, or of the deepest parent found)."""
    if node is None:
        return None
    cur = node
    line = int(cur.start_mark.line) + 1
    for i, part in enumerate(loc):
        if i == len(loc) - 1:
            key = key_node(cur, part)
            if key is not None:
                return int(key.start_mark.line) + 1
        nxt = child_node(cur, part)
        if nxt is None:
            return line
        cur = nxt
        line = int(cur.start_mark.line) + 1
    return line


def dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def schema_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    if not loc:
        return RecipeSchema
    if loc[0] in SECTION_SCHEMAS and len(loc) == 1:
        return SECTION_SCHEMAS[loc[0]]
    return None


def step_errors(data: Mapping[str, Any]) -> tuple[list[ConfigStep[Any]], list[dict[str, Any]]]:
    """Every ``prune`` step of ``data`` built by its step class, and the errors (``loc`` from the top)."""
    steps: list[ConfigStep[Any]] = []
    errors: list[dict[str, Any]] = []
    prune = data.get("prune")
    for i, item in enumerate(prune if isinstance(prune, list) else []):
        if not isinstance(item, Mapping):
            continue  # RecipeSchema reports it
        kind = STEP_KINDS.get(item.get("what"))  # type: ignore[arg-type]
        if kind is None:
            msg = f"'what' must be one of {', '.join(STEP_KINDS)} (what to prune)"
            errors.append({"type": "value_error", "loc": ("prune", i), "msg": msg})
            continue
        step, errs = kind.validate(item, kind.what)
        errors += [{**e, "loc": ("prune", i, *e["loc"])} for e in errs]
        if step is not None:
            steps.append(step)
    return steps, errors


def format_errors(errors: list[Any], node: yaml.Node | None, data: Any, source: str) -> str:
    """One line per error: ``file:line: dotted.key: what is wrong`` (joined with "; ")."""
    lines = []
    for err in errors:
        loc = clean_loc(tuple(err["loc"]), data) if data is not None else tuple(err["loc"])
        line = line_of(node, loc)
        where = f"{source}:{line}" if line else (source or "recipe")
        if err["type"] == "extra_forbidden" and "allowed" not in err:
            schema = schema_at(loc[:-1])
            err = {**err, "allowed": list(schema.model_fields) if schema is not None else []}
        lines.append(f"{where}: {dotted(loc)}: {error_text(err)}")
    return "; ".join(lines)


__all__ = [
    "DATA_AWARE",
    "NOT_IN_RECIPES",
    "OneShotStep",
    "ChannelsStep",
    "DataSpec",
    "Finetune",
    "LayersStep",
    "Measure",
    "RecipeResult",
    "RecipeSchema",
    "Schedule",
    "WeightsStep",
    "format_errors",
    "line_of",
    "step_errors",
]
