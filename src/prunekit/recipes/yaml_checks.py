"""Checks on recipe YAML before it becomes data: duplicate keys and absurd nesting are refused.

PyYAML keeps the last of two equal keys (``sparsity: 0.5`` then ``sparsity: 0.9`` silently means 0.9),
and a deeply nested document exhausts Python's recursion limit. Both become clear errors naming the
file and line.
"""

from __future__ import annotations

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


__all__ = ["DuplicateKeyError", "MAX_DEPTH", "check_depth", "check_duplicate_keys"]
