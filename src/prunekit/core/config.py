"""One config policy for every verb.

Every verb has a typed, frozen, ``kw_only`` config dataclass that holds every option of the verb
(``WeightPruningConfig`` for ``prune_weights``, ``ChannelPruneConfig`` for ``prune_channels``, ...).
The verb also takes those options as keyword arguments for the common case. Its keyword defaults are
the sentinel :data:`UNSET`, so the verb knows which keywords the caller really gave (never by comparing
with literal defaults):

- keywords only: ``config_cls(**given)`` (the dataclass supplies the defaults);
- ``config=`` only: that config;
- both, for the same option: :class:`~prunekit.errors.ConfigError` naming the option.

Configs serialise to JSON-able dicts with a ``kind`` (the class name) and a ``version``, and back::

    >>> import prunekit as pk
    >>> from prunekit.core.config import config_from_dict, config_to_dict
    >>> cfg = pk.WeightPruningConfig(sparsity=0.5, pattern="2:4")
    >>> d = config_to_dict(cfg)
    >>> d["kind"], d["version"], d["sparsity"]
    ('WeightPruningConfig', 1, 0.5)
    >>> config_from_dict(d) == cfg
    True
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Mapping
from typing import Any, Final, TypeVar

from prunekit.errors import ConfigError

CONFIG_VERSION: Final = 1
C = TypeVar("C")


class UnsetType:
    """The type of :data:`UNSET`: "the caller did not give this keyword"."""

    _instance: UnsetType | None = None

    def __new__(cls) -> UnsetType:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "UNSET"


#: Default of every verb keyword that mirrors a config field (typed ``Any`` so it fits any annotation).
UNSET: Final[Any] = UnsetType()

#: kind (class name) -> config class, for :func:`config_from_dict` (filled by :func:`register_config`).
CONFIG_KINDS: dict[str, type[Any]] = {}


def register_config(cls: type[C]) -> type[C]:
    """Class decorator: make a config dataclass known to :func:`config_from_dict` by its class name."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} must be a dataclass to be registered as a config")
    CONFIG_KINDS[cls.__name__] = cls
    return cls


def given(**options: Any) -> dict[str, Any]:
    """The keyword arguments that are not :data:`UNSET`."""
    return {k: v for k, v in options.items() if v is not UNSET}


def merge_config(config_cls: type[C], config: C | None, /, *, verb: str, **options: Any) -> C:
    """The config a verb runs with: ``config`` or one built from the keywords given, never both.

    Args:
        config_cls: the verb's config class.
        config: the ``config=`` argument (``None`` when not given).
        verb: the verb's name, for error messages.
        **options: the verb's keyword arguments that mirror config fields (:data:`UNSET` = not given).

    Raises:
        ConfigError: ``config`` is not a ``config_cls``, or it is given together with a keyword that sets
            one of its options (the error names the option).

    Example:
        >>> import prunekit as pk
        >>> merge_config(pk.WeightPruningConfig, None, verb="prune_weights", sparsity=0.5, scope=UNSET).scope
        'global'
        >>> merge_config(pk.WeightPruningConfig, pk.WeightPruningConfig(sparsity=0.5), verb="prune_weights",
        ...              sparsity=0.9)
        Traceback (most recent call last):
        ...
        prunekit.errors.ConfigError: prune_weights: option 'sparsity' is set by both config= and sparsity=; pass one or the other, not both (dataclasses.replace(config, sparsity=...) makes a variant)
    """
    kwargs = given(**options)
    fields = {f.name for f in dataclasses.fields(config_cls)}  # type: ignore[arg-type]
    unknown = sorted(set(kwargs) - fields)
    if unknown:  # a programming error in the verb, not the user's
        raise TypeError(f"{verb}: {unknown} are not fields of {config_cls.__name__}")
    if config is None:
        return config_cls(**kwargs)
    if not isinstance(config, config_cls):
        raise ConfigError(f"{verb}: config must be a {config_cls.__name__}, got {type(config).__name__}")
    if kwargs:
        name = sorted(kwargs)[0]
        others = f" (also: {', '.join(sorted(kwargs)[1:])})" if len(kwargs) > 1 else ""
        raise ConfigError(
            f"{verb}: option {name!r} is set by both config= and {name}={others}; pass one or the other, "
            f"not both (dataclasses.replace(config, {name}=...) makes a variant)"
        )
    return config


def option_names(config_cls: type[Any]) -> tuple[str, ...]:
    """The option (field) names of a config class, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(config_cls))


def option_help(config_cls: type[Any]) -> dict[str, str]:
    """``{field: one-line help}`` parsed from the ``Attributes:``/``Args:`` section of the class docstring.

    Inline-literal markup is dropped (````x```` -> ``x``), so the text reads well in ``--help``.
    """
    doc = config_cls.__doc__ or ""
    out: dict[str, str] = {}
    names = set(option_names(config_cls))
    current: str | None = None
    in_section = False
    for raw in doc.splitlines():
        line = raw.strip()
        if line in ("Attributes:", "Args:"):
            in_section = True
            continue
        if not in_section:
            continue
        head, sep, rest = line.partition(":")
        if sep and head.strip() in names and " " not in head.strip():
            current = head.strip()
            out[current] = rest.strip()
        elif line and current is not None:
            out[current] += " " + line
        elif not line:
            current = None
    return {k: re.sub(r":\w+:`~?([^`]*)`", r"\1", v).replace("``", "") for k, v in out.items()}


def to_plain(value: Any, where: str) -> Any:
    """A JSON-able form of one config value (tuples -> lists, configs -> dicts)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [to_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {str(k): to_plain(v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    raise ConfigError(
        f"{where}: a {type(value).__name__} cannot be written to a config dict; "
        "use a registered name (e.g. a criterion name, a module name or glob) instead of an object"
    )


def config_to_dict(config: Any) -> dict[str, Any]:
    """``{"kind": <class name>, "version": 1, <field>: <value>, ...}`` (JSON-able).

    Raises:
        ConfigError: a field holds an object that has no plain form (a criterion object, a module type).
    """
    kind = type(config).__name__
    out: dict[str, Any] = {"kind": kind, "version": CONFIG_VERSION}
    for f in dataclasses.fields(config):
        out[f.name] = to_plain(getattr(config, f.name), f"{kind}.{f.name}")
    return out


def from_plain(value: Any) -> Any:
    """Inverse of :func:`to_plain`: lists -> tuples, dicts with a ``kind`` -> configs."""
    if isinstance(value, list):
        return tuple(from_plain(v) for v in value)
    if isinstance(value, Mapping):
        if "kind" in value and value["kind"] in CONFIG_KINDS:
            return config_from_dict(value)
        return {k: from_plain(v) for k, v in value.items()}
    return value


def check_keys(keys: Any, allowed: tuple[str, ...], where: str) -> None:
    """Raise ``ConfigError`` for the first key not in ``allowed``, with the closest match."""
    for key in keys:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}.{key}: unknown key{hint}; allowed keys: {', '.join(allowed)}")


def config_from_dict(data: Mapping[str, Any], config_cls: type[C] | None = None) -> C:
    """Rebuild a config written by :func:`config_to_dict`.

    Args:
        data: the dict (``kind`` and ``version`` optional when ``config_cls`` is given).
        config_cls: the expected class; default: the registered class named by ``data["kind"]``.

    Raises:
        ConfigError: unknown kind, a newer version, an unknown key (with the closest match) or a bad value.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"a config dict must be a mapping, got {type(data).__name__}")
    kind = data.get("kind")
    if config_cls is None:
        if kind not in CONFIG_KINDS:
            raise ConfigError(f"unknown config kind {kind!r}; known kinds: {', '.join(sorted(CONFIG_KINDS))}")
        config_cls = CONFIG_KINDS[kind]
    elif kind is not None and kind != config_cls.__name__:
        raise ConfigError(f"expected a {config_cls.__name__} dict, got kind {kind!r}")
    version = data.get("version", CONFIG_VERSION)
    if not isinstance(version, int) or version > CONFIG_VERSION:
        raise ConfigError(
            f"{config_cls.__name__} dict has version {version!r}; this prunekit reads version <= {CONFIG_VERSION}"
        )
    body = {k: v for k, v in data.items() if k not in ("kind", "version")}
    old_spellings = getattr(config_cls, "DEPRECATED_OPTIONS", {})  # init-only names a dict may still hold
    body = {k: v for k, v in body.items() if not (k in old_spellings and v is None)}
    check_keys(
        body, (*option_names(config_cls), *(k for k in old_spellings if k in body)), config_cls.__name__
    )
    try:
        return config_cls(**{k: from_plain(v) for k, v in body.items()})
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{config_cls.__name__}: {e}") from None


class ConfigMixin:
    """``to_dict()`` / ``from_dict()`` for config dataclasses (see :func:`config_to_dict`)."""

    def to_dict(self) -> dict[str, Any]:
        """This config as a JSON-able dict with ``kind`` and ``version``."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """The config written by :meth:`to_dict` (unknown keys raise ``ConfigError``)."""
        return config_from_dict(data, cls)


__all__ = [
    "CONFIG_KINDS",
    "CONFIG_VERSION",
    "UNSET",
    "ConfigMixin",
    "UnsetType",
    "check_keys",
    "config_from_dict",
    "config_to_dict",
    "from_plain",
    "given",
    "merge_config",
    "option_help",
    "option_names",
    "register_config",
    "to_plain",
]
