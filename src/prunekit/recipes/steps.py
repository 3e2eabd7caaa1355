"""What a recipe is made of: the validated schema of each YAML section (pydantic), the steps as plain frozen data that the runner executes, and the result of a run."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import nn

from prunekit.errors import ConfigError
from prunekit.recipes.heads_step import HeadsStepSchema
from prunekit.recipes.oneshot_step import OneShotStepSchema

if TYPE_CHECKING:
    from prunekit.recipes.schema import Recipe


DATA_AWARE = {
    "weights": ("taylor", "snip", "wanda"),
    "channels": ("taylor", "activation", "wanda"),
    "layers": ("loss",),
    "oneshot": ("magnitude", "wanda", "sparsegpt", "refit"),  # every one-shot method calibrates
    "heads": (),  # named heads (or a sensitivity file): no data
}


PATTERN = re.compile(r"^\d+:\d+$")


def check_criterion(granularity: str, name: str) -> str:
    """``name`` if it is registered for ``granularity`` (looked up at run time, so user criteria work)."""
    import prunekit.analysis  # noqa: F401  (registers the built-in criteria of every granularity)
    import prunekit.structured  # noqa: F401
    import prunekit.weights  # noqa: F401
    from prunekit.core import criterion_registry

    registry = criterion_registry(granularity)
    if name.lower() not in registry:
        valid = ", ".join(repr(n) for n in registry.names())
        raise ValueError(f"unknown {registry.what} {name!r}; valid names are {valid}")
    return name


def renamed_step_keys(step: Any, renames: Mapping[str, str], where: str) -> Any:
    """Map a deprecated step key onto its new name (with a DeprecationWarning naming it)."""
    if not isinstance(step, dict):
        return step
    from prunekit.compat import warn

    for old, new in renames.items():
        if old in step and new not in step:
            warn(f"the recipe key {where}.{old}", f"{new}", stacklevel=4)
            step = {**{k: v for k, v in step.items() if k != old}, new: step[old]}
    return step


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WeightsSchema(StrictModel):
    what: Literal["weights"]
    sparsity: float | None = Field(
        default=None, ge=0.0, lt=1.0, description="total fraction of zeros, in [0, 1)"
    )
    criterion: str = "magnitude"
    scope: Literal["global", "layer", "row"] | None = None  # None: the criterion's default (wanda: row)
    pattern: str | None = Field(default=None, description="N:M pattern such as '2:4'")
    include: list[str] | None = None
    exclude: list[str] | None = None

    @field_validator("criterion")
    @classmethod
    def _criterion(cls, v: str) -> str:
        return check_criterion("weight", v)

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        if v is not None:
            if (
                not PATTERN.match(v)
                or int(v.split(":")[0]) >= int(v.split(":")[1])
                or int(v.split(":")[0]) < 1
            ):
                raise ValueError(f"pattern must be 'N:M' with 1 <= N < M (e.g. '2:4'), got {v!r}")
        return v

    @model_validator(mode="after")
    def _amount(self) -> WeightsSchema:
        if self.sparsity is None and self.pattern is None:
            raise ValueError("give sparsity (e.g. 0.9) or pattern (e.g. '2:4'), or both")
        return self


class ChannelsSchema(StrictModel):
    what: Literal["channels"]
    ratio: float | None = Field(default=None, ge=0.0, lt=1.0)
    target_macs: float | None = Field(default=None, gt=0.0, le=1.0)
    target_params: float | None = Field(default=None, gt=0.0, le=1.0)
    criterion: str = "l2"
    scope: Literal["layer", "global"] = "layer"
    exclude: list[str] | None = None
    round_to: int | None = Field(default=None, ge=1)
    prune_heads: bool | Literal["auto"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        return renamed_step_keys(data, {"ignore": "exclude"}, "channels")

    @field_validator("criterion")
    @classmethod
    def _criterion(cls, v: str) -> str:
        return check_criterion("channel", v)

    @model_validator(mode="after")
    def _one_amount(self) -> ChannelsSchema:
        given = [k for k in ("ratio", "target_macs", "target_params") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of ratio, target_macs, target_params (got {given or 'none'})")
        return self


class LayersSchema(StrictModel):
    what: Literal["layers"]
    n: int = Field(ge=1, description="how many blocks to remove")
    criterion: Literal["block_influence", "loss", "position"] = "block_influence"
    include: str | list[str] | None = Field(
        default=None, description="container name or block names to choose from"
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        return renamed_step_keys(data, {"blocks": "include"}, "layers")


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


StepSchema = Annotated[
    WeightsSchema | ChannelsSchema | LayersSchema | OneShotStepSchema | HeadsStepSchema,
    Field(discriminator="what"),
]


class RecipeSchema(StrictModel):
    version: Literal[1] = 1
    name: str | None = None
    description: str | None = None
    model: str | None = None
    seed: int = 0
    data: DataSchema | None = None
    prune: list[StepSchema] = Field(min_length=1)
    schedule: ScheduleSchema = ScheduleSchema()
    finetune: FinetuneSchema | None = None
    measure: MeasureSchema = MeasureSchema()


@dataclass(frozen=True, kw_only=True)
class WeightsStep:
    """Prune individual weights to a total ``sparsity`` and/or an N:M ``pattern`` (see ``prune_weights``)."""

    sparsity: float | None = None
    criterion: str = "magnitude"
    scope: str | None = None
    pattern: str | None = None
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] | None = None
    what: Literal["weights"] = "weights"

    def __post_init__(self) -> None:
        validate_section(WeightsSchema, asdict(self))


@dataclass(frozen=True, kw_only=True)
class ChannelsStep:
    """Remove channels/neurons/heads physically (see ``prunekit.prune_channels``)."""

    ratio: float | None = None
    target_macs: float | None = None
    target_params: float | None = None
    criterion: str = "l2"
    scope: str = "layer"
    exclude: tuple[str, ...] | None = None
    round_to: int | None = None
    prune_heads: bool | Literal["auto"] = "auto"
    what: Literal["channels"] = "channels"

    def __post_init__(self) -> None:
        validate_section(ChannelsSchema, asdict(self))


@dataclass(frozen=True, kw_only=True)
class LayersStep:
    """Remove the ``n`` least important blocks (see ``prunekit.prune_layers``)."""

    n: int
    criterion: str = "block_influence"
    include: str | tuple[str, ...] | None = None
    what: Literal["layers"] = "layers"

    def __post_init__(self) -> None:
        validate_section(LayersSchema, asdict(self))


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


def tuple_or_none(v: list[str] | None) -> tuple[str, ...] | None:
    return tuple(v) if v is not None else None


def validate_section(schema: type[BaseModel], data: Mapping[str, Any]) -> BaseModel:
    clean = {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}
    try:
        return schema.model_validate(clean)
    except ValidationError as e:
        raise ConfigError(format_errors(e, None, None, "")) from None


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


STEP_SCHEMAS: dict[str, type[BaseModel]] = {
    "weights": WeightsSchema,
    "channels": ChannelsSchema,
    "layers": LayersSchema,
    "oneshot": OneShotStepSchema,
    "heads": HeadsStepSchema,
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
    """Drop pydantic's union tags (``prune.0.weights.sparsity`` -> ``prune.0.sparsity``)."""
    out: list[Any] = []
    cur = data
    for i, part in enumerate(loc):
        at_step = i >= 2 and loc[i - 2] == "prune" and isinstance(loc[i - 1], int)  # the union's tag
        if (
            isinstance(cur, dict)
            and (part not in cur or at_step)
            and part in STEP_SCHEMAS
            and cur.get("what") == part
        ):
            continue
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


def schema_at(loc: tuple[Any, ...], data: Any) -> type[BaseModel] | None:
    if not loc:
        return RecipeSchema
    if loc[0] in SECTION_SCHEMAS and len(loc) == 1:
        return SECTION_SCHEMAS[loc[0]]
    if loc[0] == "prune" and len(loc) == 2 and isinstance(loc[1], int) and isinstance(data, dict):
        steps = data.get("prune")
        if isinstance(steps, list) and loc[1] < len(steps) and isinstance(steps[loc[1]], dict):
            return STEP_SCHEMAS.get(steps[loc[1]].get("what"))
    return None


def format_errors(e: ValidationError, node: yaml.Node | None, data: Any, source: str) -> str:
    lines = []
    for err in e.errors():
        loc = clean_loc(tuple(err["loc"]), data) if data is not None else tuple(err["loc"])
        line = line_of(node, loc)
        where = f"{source}:{line}" if line else (source or "recipe")
        key = dotted(loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            schema = schema_at(loc[:-1], data)
            allowed = [f.alias or k for k, f in schema.model_fields.items()] if schema is not None else []
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            msg = f"unknown key{hint}; allowed keys: {', '.join(allowed)}"
        elif kind == "missing":
            msg = "required key is missing"
        elif kind == "union_tag_invalid" or kind == "union_tag_not_found":
            msg = f"'what' must be one of {', '.join(STEP_SCHEMAS)} (what to prune)"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if (
                "input" in err
                and kind not in ("literal_error", "value_error")
                and not isinstance(err["input"], (dict, list))
            ):
                msg += f" (got {err['input']!r})"
        lines.append(f"{where}: {key}: {msg}")
    return "; ".join(lines)
