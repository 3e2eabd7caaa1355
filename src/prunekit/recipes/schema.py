"""Recipes: a whole pruning job in YAML, validated, and usable from Python.

.. code-block:: yaml

    version: 1
    name: cnn-90
    model: examples.models:digits_cnn      # optional; the CLI's MODEL argument wins
    data: {source: digits, batch_size: 64}  # built-in name or module:factory
    prune:                                  # applied in order, every round
      - what: weights                       # weights | channels | layers | oneshot
        sparsity: 0.9                       # a step's keys are its verb's config fields
        criterion: magnitude
        exclude: [fc]
    schedule: {kind: iterative, rounds: 3}  # one-shot (default) | iterative
    finetune: {epochs: 1, lr: 0.001, optimizer: adam}

The YAML is checked at the boundary (sections by a pydantic schema; each prune step is its verb's
config, ``WeightPruningConfig`` for ``weights`` etc., see :mod:`prunekit.recipes.config_steps`); errors
name the file, line and key and say what is allowed. The result is a frozen :class:`Recipe`::

    recipe = pk.Recipe.from_yaml("recipe.yaml")
    result = recipe.run(model, example_inputs, data=(train_loader, test_loader))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import ValidationError
from torch import nn

from prunekit.errors import ConfigError
from prunekit.recipes.config_steps import ConfigStep
from prunekit.recipes.oneshot_step import OneShotStep
from prunekit.recipes.steps import (
    DATA_AWARE,
    ChannelsStep,
    DataSpec,
    Finetune,
    LayersStep,
    Measure,
    RecipeResult,
    RecipeSchema,
    Schedule,
    WeightsStep,
    format_errors,
    line_of,
    step_errors,
)
from prunekit.recipes.yaml_checks import RecipeLoader

# ----------------------------------------------------------------------------------------------
# Frozen dataclasses: what Python code uses (a step is its verb's config, see config_steps).
# ----------------------------------------------------------------------------------------------


Step = ConfigStep[Any]  # WeightsStep | ChannelsStep | LayersStep | OneShotStep | any registered kind


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
        prunekit.errors.ConfigError: recipe: prune[0].sparsty: unknown key (did you mean 'sparsity'?); allowed keys: what, sparsity, scope, pattern, max_batches, chunk_elements, criterion, include, exclude
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
            node = yaml.compose(text, Loader=RecipeLoader)
            data = yaml.load(text, Loader=RecipeLoader)  # noqa: S506 - a SafeLoader subclass
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
        errors: list[Any] = []
        try:
            schema = RecipeSchema.model_validate(data)
        except ValidationError as e:
            errors += e.errors()
        steps, step_errs = step_errors(data)  # each step is its verb's config, checked by its class
        errors += step_errs
        if errors:
            errors.sort(key=lambda err: [str(p) for p in err["loc"]][:1] != ["prune"])  # steps first
            raise ConfigError(format_errors(errors, node, data, source)) from None
        try:
            return cls._from_schema(schema, steps, source if source not in ("recipe", "<recipe>") else None)
        except ConfigError as e:
            key = str(e).split(":", 1)[0]
            line = line_of(node, (key,)) if node is not None else None
            prefix = f"{source}:{line}: " if line else f"{source}: "
            raise ConfigError(prefix + str(e)) from None

    @classmethod
    def _from_schema(cls, s: RecipeSchema, steps: list[Step], source_path: str | None) -> Recipe:
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
        out["prune"] = [st.to_dict() for st in self.steps]
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
            st.criterion in DATA_AWARE.get(st.what, ()) for st in self.steps
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
        trust_code: bool = False,
        batch_loss: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    ) -> RecipeResult:
        """Run the recipe on ``model`` in place and return what happened, measured before and after.

        Args:
            model: the model to prune (changed in place; a structured step may replace submodules).
            example_inputs: inputs for MACs, latency and structured pruning; default: one example of ``data``.
            data: a :class:`prunekit.recipes.sources.DataBundle`, a ``(train, test)`` pair of iterables of
                ``(inputs, targets)``, or one iterable used for both; default: the recipe's ``data``.
            progress: show a progress bar on stderr.
            loss_fn: the run's loss ``loss_fn(outputs, targets)`` (criteria, evaluation, fine-tuning); default
                cross-entropy (see :func:`prunekit.recipes.task_loss` for encoders and language models).
            measure: measure latency / memory / file size before and after.
            trust_code: allow a ``data: {source: module:factory}`` named in the recipe to be imported and
                run (a recipe from someone else must not run code unless you say so; CLI: ``--trust-code``),
                and a ``finetune: {loss: module:function}`` too.
            batch_loss: the fine-tuning loss in its general form ``batch_loss(model, batch) -> scalar``
                (overrides ``finetune.loss``; CLI: ``--loss module:function``).

        Raises:
            ConfigError, DataRequiredError: the recipe cannot run on this model or without data.
        """
        from prunekit.recipes.runner import run_recipe

        return run_recipe(
            self, model, example_inputs, data=data, progress=progress, loss_fn=loss_fn, measure=measure,
            trust_code=trust_code, batch_loss=batch_loss,
        )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Error messages with line numbers: map pydantic's error locations onto the YAML node tree.
# ----------------------------------------------------------------------------------------------


def load_recipe(spec: str | Path | Mapping[str, Any] | Recipe) -> Recipe:
    """A :class:`Recipe` from a path, a mapping, or a recipe (returned as is)."""
    if isinstance(spec, Recipe):
        return spec
    if isinstance(spec, Mapping):
        return Recipe.from_dict(spec)
    return Recipe.from_yaml(spec)


__all__ = [
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
