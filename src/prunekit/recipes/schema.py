"""Recipes: a whole pruning job in YAML, validated, and usable from Python.

.. code-block:: yaml

    version: 1
    name: cnn-90
    model: examples.models:digits_cnn      # optional; the CLI's MODEL argument wins
    data: {source: digits, batch_size: 64}  # built-in name or module:factory
    prune:                                  # applied in order, every round
      - what: weights                       # weights | channels | layers
        sparsity: 0.9
        criterion: magnitude
        exclude: [fc]
    schedule: {kind: iterative, rounds: 3}  # one-shot (default) | iterative
    finetune: {epochs: 1, lr: 0.001, optimizer: adam}

The YAML is checked by a pydantic schema at the boundary; errors name the file, line and key and
say what is allowed. The result is a frozen :class:`Recipe` (plain dataclasses)::

    recipe = pk.Recipe.from_yaml("recipe.yaml")
    result = recipe.run(model, example_inputs, data=(train_loader, test_loader))
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import nn

from prunekit.errors import ConfigError
from prunekit.recipes.oneshot_step import OneShotStep, OneShotStepSchema

DATA_AWARE = {
    "weights": ("taylor", "snip", "wanda"),
    "channels": ("taylor", "activation", "wanda"),
    "layers": ("loss",),
    "oneshot": ("magnitude", "wanda", "sparsegpt", "refit"),  # every one-shot method calibrates
}
_PATTERN = re.compile(r"^\d+:\d+$")

# ----------------------------------------------------------------------------------------------
# Schema (pydantic): the YAML boundary. Unknown keys are errors.
# ----------------------------------------------------------------------------------------------


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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _WeightsSchema(_Strict):
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
                not _PATTERN.match(v)
                or int(v.split(":")[0]) >= int(v.split(":")[1])
                or int(v.split(":")[0]) < 1
            ):
                raise ValueError(f"pattern must be 'N:M' with 1 <= N < M (e.g. '2:4'), got {v!r}")
        return v

    @model_validator(mode="after")
    def _amount(self) -> _WeightsSchema:
        if self.sparsity is None and self.pattern is None:
            raise ValueError("give sparsity (e.g. 0.9) or pattern (e.g. '2:4'), or both")
        return self


class _ChannelsSchema(_Strict):
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
    def _one_amount(self) -> _ChannelsSchema:
        given = [k for k in ("ratio", "target_macs", "target_params") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of ratio, target_macs, target_params (got {given or 'none'})")
        return self


class _LayersSchema(_Strict):
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


_StepSchema = Annotated[
    _WeightsSchema | _ChannelsSchema | _LayersSchema | OneShotStepSchema, Field(discriminator="what")
]


class _DataSchema(_Strict):
    source: str = Field(description="digits, mnist, fashion-mnist or module:factory")
    dir: str | None = None
    batch_size: int = Field(default=64, ge=1)
    limit: int | None = Field(default=None, ge=1)
    calibration_batches: int = Field(default=4, ge=1)


class _FinetuneSchema(_Strict):
    epochs: float = Field(default=1.0, ge=0.0)
    lr: float = Field(default=1e-3, gt=0.0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=0.0, ge=0.0)


class _ScheduleSchema(_Strict):
    kind: Literal["one-shot", "iterative"] = "one-shot"
    rounds: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _rounds(self) -> _ScheduleSchema:
        if self.kind == "one-shot" and self.rounds != 1:
            raise ValueError("a one-shot schedule has rounds: 1; use kind: iterative for several rounds")
        return self


class _MeasureSchema(_Strict):
    latency: bool = True
    latency_repeats: int = Field(default=30, ge=1)
    threads: int = Field(default=1, ge=1)


class _RecipeSchema(_Strict):
    version: Literal[1] = 1
    name: str | None = None
    description: str | None = None
    model: str | None = None
    seed: int = 0
    data: _DataSchema | None = None
    prune: list[_StepSchema] = Field(min_length=1)
    schedule: _ScheduleSchema = _ScheduleSchema()
    finetune: _FinetuneSchema | None = None
    measure: _MeasureSchema = _MeasureSchema()


_SECTION_SCHEMAS: dict[str, type[BaseModel]] = {
    "data": _DataSchema,
    "finetune": _FinetuneSchema,
    "schedule": _ScheduleSchema,
    "measure": _MeasureSchema,
}
_STEP_SCHEMAS: dict[str, type[BaseModel]] = {
    "weights": _WeightsSchema,
    "channels": _ChannelsSchema,
    "layers": _LayersSchema,
    "oneshot": OneShotStepSchema,
}


class _RecipeLoader(yaml.SafeLoader):  # type: ignore[misc]
    """SafeLoader without YAML 1.1 base-60 numbers (``pattern: 2:4`` stays '2:4'), refusing duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        from prunekit.recipes.yaml_checks import check_duplicate_keys

        check_duplicate_keys(node)
        return dict(super().construct_mapping(node, deep=deep))


_RecipeLoader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
        r"|\.[0-9_]+(?:[eE][-+][0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)

# ----------------------------------------------------------------------------------------------
# Frozen dataclasses: what Python code uses.
# ----------------------------------------------------------------------------------------------


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
        _validate(_WeightsSchema, asdict(self))


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
        _validate(_ChannelsSchema, asdict(self))


@dataclass(frozen=True, kw_only=True)
class LayersStep:
    """Remove the ``n`` least important blocks (see ``prunekit.prune_layers``)."""

    n: int
    criterion: str = "block_influence"
    include: str | tuple[str, ...] | None = None
    what: Literal["layers"] = "layers"

    def __post_init__(self) -> None:
        _validate(_LayersSchema, asdict(self))


Step = WeightsStep | ChannelsStep | LayersStep | OneShotStep


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
    """Fine-tuning after each pruning round."""

    epochs: float = 1.0
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0


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


def _tuple_or_none(v: list[str] | None) -> tuple[str, ...] | None:
    return tuple(v) if v is not None else None


def _validate(schema: type[BaseModel], data: Mapping[str, Any]) -> BaseModel:
    clean = {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}
    try:
        return schema.model_validate(clean)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, None, None, "")) from None


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """A validated pruning job. Build it with :meth:`from_yaml`, :meth:`from_dict` or directly.

    Example:
        >>> r = Recipe.from_dict({"prune": [{"what": "weights", "sparsity": 0.5}]})
        >>> r.steps[0].sparsity, r.schedule.kind
        (0.5, 'one-shot')
        >>> Recipe.from_dict({"prune": [{"what": "weights", "sparsty": 0.5}]})
        Traceback (most recent call last):
        ...
        prunekit.errors.ConfigError: recipe: prune[0].sparsty: unknown key (did you mean 'sparsity'?); allowed keys: what, sparsity, criterion, scope, pattern, include, exclude
    """

    steps: tuple[Step, ...]
    name: str | None = None
    description: str | None = None
    model: str | None = None
    seed: int = 0
    data: DataSpec | None = None
    schedule: Schedule = field(default_factory=Schedule)
    finetune: Finetune | None = None
    measure: Measure = field(default_factory=Measure)
    source_path: str | None = None

    def __post_init__(self) -> None:
        if not self.steps:
            raise ConfigError("a recipe needs at least one step under 'prune'")
        if self.schedule.kind == "iterative" and self.schedule.rounds > 1 and self.finetune is None:
            raise ConfigError(
                "schedule: an iterative schedule fine-tunes between rounds; add a 'finetune' section"
            )

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_yaml(cls, path: str | Path) -> Recipe:
        """Read and validate a YAML recipe; errors name the file, line and key.

        Raises:
            ConfigError: missing file, malformed YAML, unknown key, or a value that is not allowed.
        """
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ConfigError(f"recipe {path} not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read recipe {path}: {e}") from None
        return cls.from_string(text, source=str(path))

    @classmethod
    def from_string(cls, text: str, source: str = "<recipe>") -> Recipe:
        """Parse and validate YAML text (``source`` names it in errors)."""
        from prunekit.recipes.yaml_checks import DuplicateKeyError, check_depth

        try:
            check_depth(text, source)
            node = yaml.compose(text, Loader=_RecipeLoader)
            data = yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass
        except DuplicateKeyError as e:
            raise ConfigError(f"{source}:{e.line}: {e}") from None
        except RecursionError:
            raise ConfigError(f"{source}: the YAML is nested too deeply to be a recipe") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            context, context_mark = getattr(e, "context", None), getattr(e, "context_mark", None)
            problem = getattr(e, "problem", None) or " ".join(str(e).split())
            if context and context_mark is not None:  # e.g. an unclosed '[' opened on this line
                where = f"{source}:{context_mark.line + 1}:{context_mark.column + 1}"
                at = f" (at line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
                raise ConfigError(
                    f"{where}: malformed YAML: {context} starting here: {problem}{at}"
                ) from None
            where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
            raise ConfigError(f"{where}: malformed YAML: {problem}") from None
        if not isinstance(data, dict):
            raise ConfigError(
                f"{source}:1: a recipe is a YAML mapping with at least a 'prune' list; got {type(data).__name__}"
            )
        recipe = cls._from_mapping(data, node, source)
        return recipe

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        """Validate a plain dict (as parsed from YAML or JSON).

        Raises:
            ConfigError: ``data`` is not a mapping, is nested too deeply, or holds a value not allowed.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"a recipe is a mapping (dict) with at least a 'prune' list; got {type(data).__name__}"
            )
        try:
            return cls._from_mapping(dict(data), None, "recipe")
        except RecursionError:
            raise ConfigError("recipe: the dict is nested too deeply to be a recipe") from None

    @classmethod
    def _from_mapping(cls, data: dict[str, Any], node: yaml.Node | None, source: str) -> Recipe:
        try:
            schema = _RecipeSchema.model_validate(data)
        except ValidationError as e:
            raise ConfigError(_format_errors(e, node, data, source)) from None
        try:
            return cls._from_schema(schema, source if source not in ("recipe", "<recipe>") else None)
        except ConfigError as e:
            key = str(e).split(":", 1)[0]
            line = _line_of(node, (key,)) if node is not None else None
            prefix = f"{source}:{line}: " if line else f"{source}: "
            raise ConfigError(prefix + str(e)) from None

    @classmethod
    def _from_schema(cls, s: _RecipeSchema, source_path: str | None) -> Recipe:
        steps: list[Step] = []
        for st in s.prune:
            if isinstance(st, _WeightsSchema):
                steps.append(
                    WeightsStep(
                        sparsity=st.sparsity,
                        criterion=st.criterion,
                        scope=st.scope,
                        pattern=st.pattern,
                        include=_tuple_or_none(st.include),
                        exclude=_tuple_or_none(st.exclude),
                    )
                )
            elif isinstance(st, _ChannelsSchema):
                steps.append(
                    ChannelsStep(
                        ratio=st.ratio,
                        target_macs=st.target_macs,
                        target_params=st.target_params,
                        criterion=st.criterion,
                        scope=st.scope,
                        exclude=_tuple_or_none(st.exclude),
                        round_to=st.round_to,
                        prune_heads=st.prune_heads,
                    )
                )
            elif isinstance(st, OneShotStepSchema):
                steps.append(OneShotStep(config=st.to_config()))
            else:
                blocks = (
                    st.include if isinstance(st.include, str) or st.include is None else tuple(st.include)
                )
                steps.append(LayersStep(n=st.n, criterion=st.criterion, include=blocks))
        return cls(
            steps=tuple(steps),
            name=s.name,
            description=s.description,
            model=s.model,
            seed=s.seed,
            data=DataSpec(**s.data.model_dump()) if s.data else None,
            schedule=Schedule(**s.schedule.model_dump()),
            finetune=Finetune(**s.finetune.model_dump()) if s.finetune else None,
            measure=Measure(**s.measure.model_dump()),
            source_path=source_path,
        )

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data (the YAML it would be written as)."""
        out: dict[str, Any] = {"version": 1}
        for key in ("name", "description", "model"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["seed"] = self.seed
        if self.data is not None:
            out["data"] = asdict(self.data)
        out["prune"] = [
            st.to_dict()
            if isinstance(st, OneShotStep)
            else {
                "what": st.what,
                **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(st).items()},
            }
            for st in self.steps
        ]
        out["schedule"] = asdict(self.schedule)
        if self.finetune is not None:
            out["finetune"] = asdict(self.finetune)
        out["measure"] = asdict(self.measure)
        return out

    def to_yaml(self) -> str:
        """The recipe as YAML text; ``Recipe.from_string(r.to_yaml()) == r`` (up to ``source_path``)."""
        return str(yaml.safe_dump(self.to_dict(), sort_keys=False))

    # -- running --------------------------------------------------------------------------

    def needs_data(self) -> bool:
        """Whether running this recipe needs data (fine-tuning or a data-aware criterion)."""
        return self.finetune is not None or any(
            st.criterion in DATA_AWARE[st.what] for st in self.steps
        )  # layers by block_influence use the data when given, else the example inputs; position needs none

    def run(
        self,
        model: nn.Module,
        example_inputs: Any = None,
        *,
        data: Any = None,
        progress: bool = False,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        measure: bool = True,
    ) -> RecipeResult:
        """Run the recipe on ``model`` in place and return what happened, measured before and after.

        Args:
            model: the model to prune (changed in place; a structured step may replace submodules).
            example_inputs: inputs for MACs, latency and structured pruning; default: one example of ``data``.
            data: a :class:`prunekit.recipes.sources.DataBundle`, a ``(train, test)`` pair of iterables of
                ``(inputs, targets)``, or one iterable used for both; default: the recipe's ``data``.
            progress: show a progress bar on stderr.
            loss_fn: default cross-entropy.
            measure: measure latency / memory / file size before and after.

        Raises:
            ConfigError, DataRequiredError: the recipe cannot run on this model or without data.
        """
        from prunekit.recipes.runner import run_recipe

        return run_recipe(
            self, model, example_inputs, data=data, progress=progress, loss_fn=loss_fn, measure=measure
        )


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


# ----------------------------------------------------------------------------------------------
# Error messages with line numbers: map pydantic's error locations onto the YAML node tree.
# ----------------------------------------------------------------------------------------------


def _child(node: yaml.Node | None, key: Any) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if k.value == key:
                return v
    if isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
        return node.value[key]
    return None


def _key_node(node: yaml.Node | None, key: Any) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, _ in node.value:
            if k.value == key:
                return k
    return None


def _clean_loc(loc: tuple[Any, ...], data: Any) -> tuple[Any, ...]:
    """Drop pydantic's union tags (``prune.0.weights.sparsity`` -> ``prune.0.sparsity``)."""
    out: list[Any] = []
    cur = data
    for part in loc:
        if isinstance(cur, dict) and part not in cur and part in _STEP_SCHEMAS and cur.get("what") == part:
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


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the value at ``loc`` (or of its key, or of the deepest parent found)."""
    if node is None:
        return None
    cur = node
    line = int(cur.start_mark.line) + 1
    for i, part in enumerate(loc):
        if i == len(loc) - 1:
            key = _key_node(cur, part)
            if key is not None:
                return int(key.start_mark.line) + 1
        nxt = _child(cur, part)
        if nxt is None:
            return line
        cur = nxt
        line = int(cur.start_mark.line) + 1
    return line


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _schema_at(loc: tuple[Any, ...], data: Any) -> type[BaseModel] | None:
    if not loc:
        return _RecipeSchema
    if loc[0] in _SECTION_SCHEMAS and len(loc) == 1:
        return _SECTION_SCHEMAS[loc[0]]
    if loc[0] == "prune" and len(loc) == 2 and isinstance(loc[1], int) and isinstance(data, dict):
        steps = data.get("prune")
        if isinstance(steps, list) and loc[1] < len(steps) and isinstance(steps[loc[1]], dict):
            return _STEP_SCHEMAS.get(steps[loc[1]].get("what"))
    return None


def _format_errors(e: ValidationError, node: yaml.Node | None, data: Any, source: str) -> str:
    lines = []
    for err in e.errors():
        loc = _clean_loc(tuple(err["loc"]), data) if data is not None else tuple(err["loc"])
        line = _line_of(node, loc)
        where = f"{source}:{line}" if line else (source or "recipe")
        key = _dotted(loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            schema = _schema_at(loc[:-1], data)
            allowed = list(schema.model_fields) if schema is not None else []
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            msg = f"unknown key{hint}; allowed keys: {', '.join(allowed)}"
        elif kind == "missing":
            msg = "required key is missing"
        elif kind == "union_tag_invalid" or kind == "union_tag_not_found":
            msg = f"'what' must be one of {', '.join(_STEP_SCHEMAS)} (what to prune)"
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


def load_recipe(spec: str | Path | Mapping[str, Any] | Recipe) -> Recipe:
    """A :class:`Recipe` from a path, a mapping, or a recipe (returned as is)."""
    if isinstance(spec, Recipe):
        return spec
    if isinstance(spec, Mapping):
        return Recipe.from_dict(spec)
    return Recipe.from_yaml(spec)


__all__ = [
    "check_criterion",
    "ChannelsStep",
    "DataSpec",
    "Finetune",
    "LayersStep",
    "Measure",
    "OneShotStep",
    "Recipe",
    "RecipeResult",
    "Schedule",
    "Step",
    "WeightsStep",
    "load_recipe",
]
