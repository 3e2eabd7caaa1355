"""A prune step *is* its verb's config: one generic mechanism turns a config dataclass into a YAML step.

A step class names its verb's config class; its YAML keys are that config's fields (less ``not_in_yaml``,
which the run decides, e.g. ``progress``), generated, never listed by hand::

    @register_step
    @dataclass(frozen=True, init=False)
    class LayersStep(ConfigStep[LayerPruningConfig]):
        what: ClassVar[str] = "layers"
        config_cls: ClassVar[type[Any]] = LayerPruningConfig

The YAML type of each key comes from the field's annotation: ``Literal``, numbers, strings and ``None``
as they are; tuples and sequences as lists; mappings as mappings; an object type (a criterion object, a
module type) drops out of the union, so a criterion is given by its registered name; an ``Any`` field
(the configs' module selections) holds a name, a glob or a list of them. Values are checked in two
passes, both reported with the key (and, from a file, the line): the YAML types (a pydantic model built
from the fields with ``create_model``), then the config's own ``__post_init__``, whose ``ConfigError`` is
reported at the key it names. A step class may also declare:

- ``renamed``: old key -> new key (a ``DeprecationWarning`` names the new one);
- ``deprecated``: keys the config still takes as init-only spellings (``target_macs``), warned about;
- ``required``: keys a recipe must spell out although the config has a default (``layers: n``);
- ``one_of``: exactly one of these keys (``channels``: ``ratio`` or a ``reduce_*`` cost goal); the first
  is the config's default amount, a later one that is set replaces it (and only it is written back);
- ``fill(values)``: defaults that depend on other keys (``weights``: the criterion's own ``scope``), with
  ``default_notes`` saying so in ``--help``.

``step.config`` is the config the runner passes to the verb; ``step.<field>`` reads the config's field.
A new kind also overrides :meth:`ConfigStep.apply` (one call of its verb with ``config=self.config``); the
module holding it must be imported by ``prunekit.recipes`` so that it registers.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Generic, Literal, TypeVar, Union, cast

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from prunekit.errors import ConfigError

C = TypeVar("C")
S = TypeVar("S", bound="ConfigStep[Any]")
K = TypeVar("K", bound="type[ConfigStep[Any]]")

#: what -> step class, filled by :func:`register_step` (the ``what:`` values a recipe accepts).
STEP_KINDS: dict[str, type[ConfigStep[Any]]] = {}

_NO_YAML = object()  # a type with no YAML form (criterion objects, module types)
_PLAIN = (bool, int, float, str, type(None))


def yaml_type(hint: Any) -> Any:
    """The type a YAML value of a config field with annotation ``hint`` must have (for pydantic)."""
    if isinstance(hint, dataclasses.InitVar):  # a deprecated init-only spelling
        return yaml_type(hint.type)
    if hint is Any:
        return Union[str, list[str], None]  # noqa: UP007 - a module selection: names and globs in YAML
    origin = typing.get_origin(hint)
    if origin is Literal or hint in _PLAIN:
        return hint
    if origin in (Union, types.UnionType):
        parts = [yaml_type(a) for a in typing.get_args(hint)]
        kept = tuple(dict.fromkeys(p for p in parts if p is not _NO_YAML))
        return Union[kept] if kept else _NO_YAML  # noqa: UP007
    if origin in (tuple, list, set, frozenset, Sequence, Iterable):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        elem = yaml_type(args[0]) if args else str
        return list[str if elem is _NO_YAML or args[0] is Any else elem]  # type: ignore[misc]
    if origin in (dict, Mapping):
        key, value = typing.get_args(hint) or (str, Any)
        return dict[yaml_type(key), yaml_type(value)]  # type: ignore[misc]
    return _NO_YAML


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepRun:
    """What a round of a recipe run gives a step's :meth:`ConfigStep.apply`.

    Attributes:
        round: this round, 1-based.
        rounds: rounds in the schedule (a step reaches ``round / rounds`` of its amount in this round).
        example_inputs: one batch of inputs (for tracing), or None.
        calibration: the run's calibration batches (``(inputs, targets)``), or None without data.
        loss_fn: ``loss_fn(outputs, targets)``.
        data: the run's :class:`~prunekit.recipes.sources.DataBundle`, or None.
        index: the step's position in the recipe's ``prune`` list (for error messages).
        source_path: the recipe file, or None (errors name its line; relative paths are read beside it).
    """

    round: int
    rounds: int
    example_inputs: Any = None
    calibration: list[Any] | None = None
    loss_fn: Any = None
    data: Any = None
    index: int = 0
    source_path: str | None = None


@dataclasses.dataclass(frozen=True, init=False)
class ConfigStep(Generic[C]):
    """One prune step: ``config`` is the verb's config (see the module docstring for the class attributes).

    ``Step(config=Config(...))`` or ``Step.from_mapping({...})`` (the YAML path); ``Step(**options)``, the
    spelling before 0.3, still works with a ``DeprecationWarning``.
    """

    config: C
    what: ClassVar[str] = ""
    config_cls: ClassVar[type[Any]]
    not_in_yaml: ClassVar[tuple[str, ...]] = ()
    renamed: ClassVar[Mapping[str, str]] = {}
    deprecated: ClassVar[Mapping[str, str]] = {}
    required: ClassVar[tuple[str, ...]] = ()
    one_of: ClassVar[tuple[str, ...]] = ()
    default_notes: ClassVar[Mapping[str, str]] = {}  # key -> its default in words, where ``fill`` sets it

    def __init__(self, config: C | None = None, **options: Any) -> None:
        cls = type(self)
        if options:
            if config is not None:
                raise ConfigError(f"{cls.__name__}: give config= or the options, not both")
            from prunekit.compat import warn

            warn(
                f"{cls.__name__}({'=, '.join(options)}=)",
                f"{cls.__name__}(config={cls.config_cls.__name__}(...)) or {cls.__name__}.from_mapping({{...}})",
            )
            config = cls.from_mapping(options).config
        if config is None:
            config = cls.config_cls()
        if not isinstance(config, cls.config_cls):
            raise ConfigError(
                f"{cls.__name__}.config must be a {cls.config_cls.__name__}, got {type(config).__name__}"
            )
        object.__setattr__(self, "config", config)
        self.check()

    def check(self) -> None:
        """Checks of the step beyond its config's (override; raise ``ConfigError``)."""

    def apply(self, model: Any, run: StepRun) -> str | None:
        """Prune ``model`` by this step in round ``run.round`` of ``run.rounds``; a note for the report, or None.

        The built-in kinds are applied by the runner; a new kind overrides this (typically one call of its
        verb with ``config=self.config``), so registering it is all the runner needs.
        """
        raise ConfigError(
            f"the runner has no way to apply a {self.what!r} step: its class defines no apply()"
        )

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "config":  # copy/pickle probe before config is set
            raise AttributeError(name)
        try:
            return getattr(self.config, name)
        except AttributeError:
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}") from None

    # -- the YAML keys ---------------------------------------------------------------------

    @classmethod
    def keys(cls) -> list[str]:
        """The keys this step accepts besides ``what``: the config's fields less ``not_in_yaml``."""
        return [f.name for f in dataclasses.fields(cls.config_cls) if f.name not in cls.not_in_yaml]

    @classmethod
    def yaml_model(cls) -> type[BaseModel]:
        """The pydantic model of the YAML types of :meth:`keys` (generated from the config's fields)."""
        cached = cls.__dict__.get("_yaml_model")
        if cached is not None:
            return cast("type[BaseModel]", cached)
        hints = typing.get_type_hints(cls.config_cls)
        spec: dict[str, Any] = {}
        for name in (*cls.keys(), *cls.deprecated):
            t = yaml_type(hints.get(name, Any))
            spec[name] = (Any if t is _NO_YAML else t, ... if name in cls.required else None)
        model = cast(
            "type[BaseModel]",
            create_model(f"{cls.__name__}Yaml", __config__=ConfigDict(extra="forbid", frozen=True), **spec),
        )
        setattr(cls, "_yaml_model", model)  # noqa: B010 - a cache on the class, not a field
        return model

    @classmethod
    def fill(cls, values: dict[str, Any]) -> dict[str, Any]:
        """Defaults that depend on other keys (override); ``values`` holds the keys given, not yet checked."""
        return values

    @classmethod
    def validate(
        cls, data: Mapping[str, Any], where: str
    ) -> tuple[ConfigStep[Any] | None, list[dict[str, Any]]]:
        """The step for ``data`` (``what`` optional), or ``None`` and pydantic-like errors (``loc`` = key).

        ``where`` names the step in deprecation warnings (``channels`` -> "the recipe key channels.ignore").
        """
        from prunekit.compat import warn

        values = {k: v for k, v in data.items() if k != "what"}
        for old, new in cls.renamed.items():
            if old in values:
                if new in values:
                    return None, [
                        _err((old,), f"give {new} (the new name of {old}), not both", "value_error")
                    ]
                warn(f"the recipe key {where}.{old}", new, stacklevel=5)
                values = {(new if k == old else k): v for k, v in values.items()}
        for old, new in cls.deprecated.items():
            if old in values and values[old] is None:
                del values[old]  # a recipe.yaml written before 0.3 lists it as null
            elif old in values:
                warn(f"the recipe key {where}.{old}", new, stacklevel=5)
        values = cls.fill(values)
        try:
            checked = cls.yaml_model().model_validate(values)
        except ValidationError as e:
            return None, _per_key(e, ["what", *cls.keys()])
        given = checked.model_dump(exclude_unset=True)
        errors = cls.check_one_of(given)
        if errors:
            return None, errors
        try:
            with warnings.catch_warnings():  # the deprecated key was warned about above, as a recipe key
                warnings.simplefilter("ignore", DeprecationWarning)
                config = cls.config_cls(**{k: _from_yaml(v) for k, v in given.items()})
            return cls(config=config), []
        except (ConfigError, ValueError, TypeError) as e:
            return None, [_err(_key_named(str(e), list(given), cls.keys()), str(e), "value_error")]

    @classmethod
    def check_one_of(cls, given: Mapping[str, Any]) -> list[dict[str, Any]]:
        if not cls.one_of:
            return []
        said = [
            k
            for k, v in given.items()
            if v is not None and (k in cls.one_of or cls.alias_of(k) in cls.one_of)
        ]
        if len(said) == 1:
            return []
        got = ", ".join(said) or "none"
        return [_err((), f"give exactly one of {', '.join(cls.one_of)} (got {got})", "value_error")]

    @classmethod
    def alias_of(cls, key: str) -> str:
        """The field a deprecated key stands for (its new spelling's first word)."""
        new = cls.deprecated.get(key, key)
        return re.split(r"[\s(=]", new, maxsplit=1)[0]

    @classmethod
    def from_mapping(cls: type[S], data: Mapping[str, Any], label: Callable[[str], str] | None = None) -> S:
        """Validate a plain mapping of the config's options (``what`` optional), as a recipe step.

        Args:
            data: ``{key: value}`` as in a recipe step.
            label: how errors name a key (``""``: the whole step); default ``<what>.<key>``.

        Raises:
            ConfigError: an unknown key, a missing key or a value the config refuses (all of them, joined).
        """
        name = label or (lambda key: f"{cls.what}.{key}" if key else cls.what)
        step, errors = cls.validate(dict(data), cls.what)
        if step is None:
            raise ConfigError(
                "; ".join(f"{name(str(e['loc'][0]) if e['loc'] else '')}: {error_text(e)}" for e in errors)
            )
        return cast(S, step)

    @classmethod
    def parse_option(cls, name: str, text: str) -> Any:
        """A command-line value of key ``name`` read as YAML (``0.9``, ``2:4``, ``true``); a list key splits on commas.

        Example:
            >>> STEP_KINDS["weights"].parse_option("exclude", "fc,conv1"), STEP_KINDS["weights"].parse_option("pattern", "2:4")
            (['fc', 'conv1'], '2:4')
        """
        from prunekit.recipes.yaml_checks import yaml_value

        t = yaml_type(typing.get_type_hints(cls.config_cls).get(name, Any))
        parts = typing.get_args(t) if typing.get_origin(t) in (Union, types.UnionType) else (t,)
        lists = [a for a in parts if typing.get_origin(a) is list]

        def scalar(value: str, allowed: tuple[Any, ...]) -> Any:
            out = yaml_value(value)
            fits = type(out) in allowed or (type(out) is int and float in allowed)
            return value if str in allowed and not fits else out  # --exclude 5: the module named "5"

        if lists and ("," in text or str not in parts):
            elem = typing.get_args(lists[0])[0] if typing.get_args(lists[0]) else str
            return [scalar(v.strip(), (elem,)) for v in text.split(",") if v.strip()]
        return scalar(text, parts)

    def to_dict(self) -> dict[str, Any]:
        """The step as recipe data: ``what`` and every key (a later ``one_of`` key that is set replaces the first)."""
        from prunekit.core import config_to_dict

        data = config_to_dict(self.config)
        out: dict[str, Any] = {"what": self.what}
        group = [k for k in self.one_of if data.get(k) is not None]
        skip = set(self.one_of) - set(group[-1:])
        out.update({k: data[k] for k in self.keys() if k not in skip})
        return out


def register_step(cls: K) -> K:
    """Class decorator: make a :class:`ConfigStep` subclass a recipe step kind (``what: <cls.what>``)."""
    if not cls.what or not dataclasses.is_dataclass(cls.config_cls):
        raise TypeError(f"{cls.__name__} needs a 'what' and a dataclass 'config_cls'")
    STEP_KINDS[cls.what] = cls
    return cls


def _from_yaml(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_from_yaml(v) for v in value)
    if isinstance(value, dict):
        return {k: _from_yaml(v) for k, v in value.items()}
    return value


def _per_key(e: ValidationError, allowed: list[str]) -> list[dict[str, Any]]:
    """pydantic's errors, one per key (the members of a union that all refused a value become one)."""
    out: dict[Any, dict[str, Any]] = {}
    for err in e.errors():
        loc = tuple(err["loc"])[:1]
        if loc in out and out[loc]["type"] not in ("extra_forbidden", "missing"):
            msg = str(err["msg"]).removeprefix("Input should be ")
            if msg.split(",")[0] not in out[loc]["msg"]:
                out[loc]["msg"] += f" or {msg}"
            continue
        out[loc] = {**dict(err), "loc": loc, "allowed": allowed}
    return list(out.values())


def _err(loc: tuple[Any, ...], msg: str, kind: str) -> dict[str, Any]:
    return {"type": kind, "loc": loc, "msg": msg}


def _key_named(message: str, given: list[str], fields: list[str]) -> tuple[str, ...]:
    """The key a config's error message is about: the first key given (else field) it names as a word."""
    for names in (given, fields):
        hits = [(m.start(), n) for n in names if (m := re.search(rf"(?<![\w.'\"]){re.escape(n)}\b", message))]
        if hits:
            return (min(hits)[1],)
    return ()


def error_text(err: Mapping[str, Any]) -> str:
    """What one error says (without the file, line and key)."""
    kind = err["type"]
    loc = tuple(err["loc"])
    if kind == "extra_forbidden":
        allowed = list(err.get("allowed") or [])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1) if loc else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown key{hint}; allowed keys: {', '.join(allowed)}"
    if kind == "missing":
        return "required key is missing"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if (
        "input" in err
        and kind not in ("literal_error", "value_error")
        and not isinstance(err["input"], (dict, list))
    ):
        msg += f" (got {err['input']!r})"
    return msg


__all__ = ["STEP_KINDS", "ConfigStep", "StepRun", "error_text", "register_step", "yaml_type"]
