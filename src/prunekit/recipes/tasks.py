"""What "loss" means for a model that is not a classifier: tasks for recipes and the command line.

A task turns a model's raw output into a scalar loss ``loss_fn(outputs, targets)`` (used for fine-tuning,
Taylor/SNIP criteria and the before/after evaluation)::

    classification   cross-entropy of the scores (``.logits``) against class targets (the default)
    embedding        1 - cosine similarity of the mean-pooled hidden states to the dense model's, on the
                     same batch (a sentence-embedding model such as all-MiniLM-L6-v2); no labels needed;
                     fine-tuning with it distils the pruned model to the dense teacher (cosine or MSE)
    causal-lm        next-token cross-entropy on the real tokens (``exp(loss)`` is the perplexity)
    masked-lm        token reconstruction cross-entropy of the MLM head on the real tokens
    module:fn        your own ``fn(outputs, targets) -> scalar tensor``

For the label-free tasks the batches are ``(inputs, inputs)`` pairs: the "targets" are the inputs
themselves (a dict with ``input_ids`` and ``attention_mask``), which :func:`text_batches` produces from
a text file with the model's tokenizer (``prunekit prune ... --calibration sentences.txt``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.core import LossFn
from prunekit.errors import ConfigError

TASKS = ("classification", "embedding", "causal-lm", "masked-lm")


def _hidden(outputs: Any) -> torch.Tensor:
    if isinstance(outputs, torch.Tensor):
        return outputs
    for key in ("last_hidden_state", "logits"):
        t = getattr(outputs, key, None)
        if isinstance(t, torch.Tensor):
            return t
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        return outputs[0]
    raise ConfigError(f"cannot find hidden states in a model output of type {type(outputs).__name__}")


def _mask(targets: Any, like: torch.Tensor) -> torch.Tensor:
    if isinstance(targets, Mapping) and isinstance(targets.get("attention_mask"), torch.Tensor):
        mask: torch.Tensor = targets["attention_mask"]
        return mask.to(like.device, like.dtype)
    return torch.ones(like.shape[:2], device=like.device, dtype=like.dtype)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (B, T, D) over the tokens where ``mask`` (B, T) is 1."""
    m = mask.unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


DISTANCES = ("cosine", "mse")


class EmbeddingLoss:
    """Distillation to a frozen dense teacher: ``loss(outputs, targets)`` on ``(inputs, inputs)`` batches.

    ``distance="cosine"``: ``1 - cos(mean_pool(outputs), mean_pool(teacher(**targets)))`` (mean over the
    batch); ``"mse"``: the mean squared difference of the two mean-pooled embeddings. The teacher is
    computed on the fly, without gradients, in eval mode.
    """

    def __init__(self, teacher: nn.Module, distance: str = "cosine") -> None:
        if distance not in DISTANCES:
            raise ConfigError(f"unknown embedding distance {distance!r}; valid: {', '.join(DISTANCES)}")
        self.teacher = teacher
        self.distance = distance

    def with_distance(self, distance: str) -> EmbeddingLoss:
        """The same teacher compared with another distance (no second copy of the model)."""
        return self if distance == self.distance else EmbeddingLoss(self.teacher, distance)

    def __call__(self, outputs: Any, targets: Any) -> torch.Tensor:
        if not isinstance(targets, Mapping):
            raise ConfigError(
                "task 'embedding' needs batches of (inputs, inputs) with dict inputs (input_ids, ...)"
            )
        h = _hidden(outputs)
        mask = _mask(targets, h)
        with torch.no_grad():
            ref = _hidden(self.teacher(**{k: v.to(h.device) for k, v in targets.items()}))
        a, b = mean_pool(h, mask), mean_pool(ref, mask)
        if self.distance == "mse":
            return nn.functional.mse_loss(a.float(), b.float())
        return 1.0 - nn.functional.cosine_similarity(a, b, dim=-1).mean()


def embedding_loss(dense: nn.Module, distance: str = "cosine") -> EmbeddingLoss:
    """Distillation to ``dense`` as it is now (a frozen copy is kept): see :class:`EmbeddingLoss`."""
    reference = copy.deepcopy(dense).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    return EmbeddingLoss(reference, distance)


def causal_lm_loss(outputs: Any, targets: Any) -> torch.Tensor:
    """Next-token cross-entropy over the real tokens (``targets``: the input dict)."""
    logits = _hidden(outputs)
    ids = targets["input_ids"].to(logits.device)
    mask = _mask(targets, logits)[:, 1:]
    ce = nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none"
    )
    return (ce * mask.flatten()).sum() / mask.sum().clamp_min(1)


def masked_lm_loss(outputs: Any, targets: Any) -> torch.Tensor:
    """Cross-entropy of the MLM logits against the input tokens, over the real tokens."""
    logits = _hidden(outputs)
    ids = targets["input_ids"].to(logits.device)
    mask = _mask(targets, logits)
    ce = nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids.flatten(), reduction="none")
    return (ce * mask.flatten()).sum() / mask.sum().clamp_min(1)


def task_loss(task: str, model: nn.Module, *, distance: str = "cosine") -> LossFn | None:
    """The loss of ``task`` for ``model`` (``None`` for classification: prunekit's default cross-entropy).

    ``embedding`` keeps a frozen copy of ``model`` as it is now (the dense teacher), compared by
    ``distance`` (``"cosine"`` or ``"mse"``).

    Raises:
        ConfigError: an unknown task name or a ``module:fn`` that cannot be imported.
    """
    if task == "classification":
        return None
    if task == "embedding":
        return embedding_loss(model, distance)
    if task == "causal-lm":
        return causal_lm_loss
    if task == "masked-lm":
        return masked_lm_loss
    if ":" in task:
        from prunekit.recipes.sources import import_object

        fn = import_object(task, "loss function")
        if not callable(fn):
            raise ConfigError(
                f"task {task!r} is not callable; expected fn(outputs, targets) -> scalar tensor"
            )
        return fn  # type: ignore[no-any-return]
    raise ConfigError(f"unknown task {task!r}; valid: {', '.join(TASKS)}, or module:fn (a loss function)")


def text_batches(
    path: str | Path, tokenizer: Any, *, batch_size: int = 32, max_length: int = 128, limit: int | None = None
) -> list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """``(inputs, inputs)`` batches of the non-empty lines of a text file, tokenised with padding."""
    lines = [s for s in Path(path).read_text(encoding="utf-8").splitlines() if s.strip()]
    if limit is not None:
        lines = lines[:limit]
    if not lines:
        raise ConfigError(f"{path}: no text lines to calibrate on")
    out = []
    for i in range(0, len(lines), batch_size):
        enc = tokenizer(lines[i : i + batch_size], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")  # fmt: skip
        inputs = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        out.append((inputs, inputs))
    return out


def hf_tokenizer(directory: str | Path) -> Any:
    """The tokenizer saved in a Hugging Face directory.

    Raises:
        ConfigError: transformers is missing or the directory has no tokenizer files.
    """
    try:
        import transformers
    except ImportError as e:  # pragma: no cover
        raise ConfigError("--calibration with a text file needs transformers (for the tokenizer)") from e
    try:
        return transformers.AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read a tokenizer from {directory}: {' '.join(str(e).split())}") from e


__all__ = ["DISTANCES", "EmbeddingLoss", "TASKS", "causal_lm_loss", "embedding_loss", "hf_tokenizer", "masked_lm_loss", "mean_pool",
           "task_loss", "text_batches"]  # fmt: skip
