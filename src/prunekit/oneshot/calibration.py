"""``calibration_batches``: a list of strings and a tokenizer -> calibration batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prunekit.errors import ConfigError, DataRequiredError


def calibration_batches(
    texts: Sequence[str],
    tokenizer: Any,
    *,
    batch_size: int = 32,
    max_length: int = 128,
    sort_by_length: bool = True,
) -> list[dict[str, Any]]:
    """Tokenize ``texts`` into padded batches (dicts of tensors) for :func:`prune_oneshot`.

    Padding tokens carry ``attention_mask == 0`` and are left out of every calibration statistic.

    Args:
        texts: the calibration sentences or documents.
        tokenizer: a Hugging Face tokenizer (anything called as ``tokenizer(list, padding=True,
            truncation=True, max_length=..., return_tensors="pt")``).
        batch_size: texts per batch.
        max_length: tokens per text at most (longer texts are truncated).
        sort_by_length: batch texts of similar length together (less padding, faster).

    Returns:
        A list of tokenizer outputs as plain dicts (``input_ids``, ``attention_mask``, ...).

    Raises:
        DataRequiredError: ``texts`` is empty.
        ConfigError: bad ``batch_size`` / ``max_length`` or ``texts`` not strings.
    """
    if isinstance(texts, str):
        raise ConfigError("texts must be a list of strings, got one string; wrap it in a list")
    items = list(texts)
    if not items:
        raise DataRequiredError("calibration_batches needs at least one text")
    bad = next((t for t in items if not isinstance(t, str)), None)
    if bad is not None:
        raise ConfigError(f"texts must all be strings, got {type(bad).__name__}")
    for name, value in (("batch_size", batch_size), ("max_length", max_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive int, got {value!r}")
    if sort_by_length:
        items = sorted(items, key=len)
    out: list[dict[str, Any]] = []
    for i in range(0, len(items), batch_size):
        enc = tokenizer(
            items[i : i + batch_size],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        out.append(dict(enc))
    return out


__all__ = ["calibration_batches"]
