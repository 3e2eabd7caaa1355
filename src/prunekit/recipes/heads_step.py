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

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

import prunekit.recipes.steps  # noqa: F401  (the built-in kinds register first: their order in --help)
from prunekit.errors import ConfigError, PlanError, UnknownModuleError
from prunekit.recipes.config_steps import ConfigStep, StepRun, register_step
from prunekit.structured import HeadPruneConfig

STEP_ONLY = ("from", "n")  # keys of the step that are not HeadPruneConfig fields (read when the step runs)


@dataclasses.dataclass(frozen=True, init=False)
class _HeadConfigKeys(ConfigStep[HeadPruneConfig]):
    """The ``HeadPruneConfig`` keys of a heads step, validated alone (not a step kind: not registered)."""

    what: ClassVar[str] = "heads"
    config_cls: ClassVar[type[Any]] = HeadPruneConfig


@register_step
@dataclasses.dataclass(frozen=True, init=False)
class HeadsStep(ConfigStep[HeadPruneConfig]):
    """Remove attention heads by name, or the ``n`` least sensitive of ``source`` (``prunekit.prune_heads``).

    Its keys are ``HeadPruneConfig``'s fields (``heads``, ``gqa``) plus ``from``/``n``.

    Example:
        >>> step = HeadsStep.from_mapping({"heads": {"encoder.layer.0.attention": [0, 3]}})
        >>> step.config.heads
        {'encoder.layer.0.attention': (0, 3)}
    """

    what: ClassVar[str] = "heads"
    config_cls: ClassVar[type[Any]] = HeadPruneConfig
    source: str | None = None
    n: int | None = None

    def __init__(
        self, config: HeadPruneConfig | None = None, *, source: str | None = None, n: int | None = None
    ) -> None:
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "n", n)
        super().__init__(config)

    def check(self) -> None:
        if (self.source is None) != (self.n is None):
            raise ConfigError(
                "give 'from' (a sensitivity.json of `prunekit analyze --granularity head`) with 'n'"
            )
        if self.n is not None and (isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1):
            raise ConfigError(f"n: how many heads to take from 'from', an integer >= 1; got {self.n!r}")
        if self.source is not None and not isinstance(self.source, str):
            raise ConfigError(f"from: a path to a sensitivity.json; got {self.source!r}")
        if not self.config.heads and self.source is None:
            raise ConfigError("give heads: {module: [indices]} and/or from: sensitivity.json with n")

    @property
    def criterion(self) -> str:
        """``"named"``: the heads are chosen by the recipe, not by a data-aware score."""
        return "named"

    @classmethod
    def validate(
        cls, data: Mapping[str, Any], where: str
    ) -> tuple[ConfigStep[Any] | None, list[dict[str, Any]]]:
        values = dict(data)
        extra = {k: values.pop(k) for k in STEP_ONLY if k in values}
        step, errors = _HeadConfigKeys.validate(values, where)
        for err in errors:
            if err.get("allowed"):
                err["allowed"] = [*err["allowed"], *STEP_ONLY]
        if step is None:
            return None, errors
        try:
            return cls(config=step.config, source=extra.get("from"), n=extra.get("n")), []
        except ConfigError as e:
            key = next((k for k in (*STEP_ONLY, "heads") if f"{k}:" in str(e) or f"'{k}'" in str(e)), None)
            loc = (key,) if key in extra or key == "heads" and "heads" in values else ()
            return None, [{"type": "value_error", "loc": loc, "msg": str(e)}]

    @classmethod
    def parse_option(cls, name: str, text: str) -> Any:
        """``--heads 'a.attention:0,3;b.attention:2'``; other options as every step kind reads them."""
        return parse_heads(text) if name == "heads" else super().parse_option(name, text)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if not self.config.heads:
            out.pop("heads", None)
        if self.source is not None:
            out["from"], out["n"] = self.source, self.n
        return out

    def apply(self, model: Any, run: StepRun) -> str | None:
        """Run whole in the last round of the schedule (errors name the recipe line)."""
        done = apply_heads(
            model,
            self,
            run.round / run.rounds,
            run.example_inputs,
            index=run.index,
            source_path=run.source_path,
        )
        if not done:
            return None
        return "heads removed: " + "; ".join(f"{k}: {v}" for k, v in done["heads"].items())

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


def parse_heads(text: str) -> dict[str, list[int]]:
    """``'a.attention:0,3;b.attention:2'`` -> ``{'a.attention': [0, 3], 'b.attention': [2]}``.

    Raises:
        ConfigError: an entry is not ``module:i,j,...`` with integer indices.
    """
    out: dict[str, list[int]] = {}
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        name, sep, idx = part.rpartition(":")
        try:
            heads = [int(v) for v in idx.split(",") if v.strip()]
        except ValueError:
            heads = []
        if not sep or not name.strip() or not heads:
            raise ConfigError(
                f"--heads: {part!r} must be MODULE:i,j (e.g. 'encoder.layer.0.attention.self:0,3'); "
                "separate modules with ';'"
            )
        out.setdefault(name.strip(), []).extend(heads)
    if not out:
        raise ConfigError("--heads names no head, e.g. 'encoder.layer.0.attention.self:0,3'")
    return out


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


__all__ = ["STEP_ONLY", "HeadsStep", "apply_heads", "least_sensitive_heads", "parse_heads", "step_line"]
