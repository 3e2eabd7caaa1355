"""Checks on recipe YAML before it becomes data: duplicate keys and absurd nesting are refused.

PyYAML keeps the last of two equal keys (``sparsity: 0.5`` then ``sparsity: 0.9`` silently means 0.9),
and a deeply nested document exhausts Python's recursion limit. Both become clear errors naming the
file and line.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

MAX_DEPTH = 64


class DuplicateKeyError(yaml.YAMLError):  # type: ignore[misc]
    """A mapping holds the same key twice (``line`` is 1-based)."""

    def __init__(self, key: object, line: int, first: int) -> None:
        super().__init__(f"key {key!r} appears twice in the same mapping (first on line {first}); keep one")
        self.line = line


def check_duplicate_keys(node: yaml.MappingNode) -> None:
    """Raise :class:`DuplicateKeyError` if two keys of ``node`` are equal scalars."""
    seen: dict[object, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            continue
        key = key_node.value
        line = key_node.start_mark.line + 1
        if key in seen:
            raise DuplicateKeyError(key, line, seen[key])
        seen[key] = line


def check_depth(text: str, source: str, limit: int = MAX_DEPTH) -> None:
    """Refuse flow or block nesting deeper than ``limit`` before PyYAML recurses into it.

    Raises:
        RecursionError: the text nests deeper than ``limit`` (the caller turns it into a ConfigError).
    """
    depth = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            if depth > limit:
                raise RecursionError(f"{source}: nesting deeper than {limit}")
        elif ch in "]}":
            depth = max(0, depth - 1)
    indents = {len(line) - len(line.lstrip(" -")) for line in text.splitlines() if line.strip()}
    if len(indents) > limit:
        raise RecursionError(f"{source}: nesting deeper than {limit}")


class RecipeLoader(yaml.SafeLoader):  # type: ignore[misc]
    """SafeLoader without YAML 1.1 base-60 numbers (``pattern: 2:4`` stays '2:4'), refusing duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        check_duplicate_keys(node)
        return dict(super().construct_mapping(node, deep=deep))


RecipeLoader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
        r"|\.[0-9_]+(?:[eE][-+][0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def yaml_value(text: str) -> Any:
    """One value read as a recipe reads it (``2:4`` stays the pattern '2:4'; ``0.5``, ``true``, ``null``).

    Example:
        >>> yaml_value("2:4"), yaml_value("0.5"), yaml_value("fc")
        ('2:4', 0.5, 'fc')
    """
    try:
        return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError:
        return text  # not YAML on its own (e.g. "a: b: c"): the text itself


__all__ = [
    "DuplicateKeyError",
    "MAX_DEPTH",
    "RecipeLoader",
    "check_depth",
    "check_duplicate_keys",
    "yaml_value",
]
