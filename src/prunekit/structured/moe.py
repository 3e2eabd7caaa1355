"""Mixture-of-experts blocks: find them structurally, score their experts on calibration data.

A MoE block is any module with two children, found by shape alone (no class-name lists)::

    block ─┬─ router   a child with a 2-D ``weight`` of shape (E, hidden): one logit row per expert
           │           (an ``nn.Linear`` or Hugging Face's ``*TopKRouter``; optional bias / per-expert buffers)
           ├─ experts  a child whose own parameters all have leading dim E (fused 3-D weights such as
           │           ``gate_up_proj`` (E, 2I, hidden) and ``down_proj`` (E, hidden, I)), called as
           │           ``experts(hidden (N, hidden), top_k_index (N, k), top_k_weights (N, k))``
           └─ anything else (e.g. Qwen2-MoE's ``shared_expert`` and its gate) is left alone

This is the layout of transformers 5 (Mixtral, Qwen2/3-MoE, OLMoE, ...). The experts container's call
convention is what scoring relies on: the routed tokens, their top-k indices and gate weights are read
from its inputs, and one expert's output on its tokens is computed by calling the container with every
token routed to that expert alone, with weight 1.

Scores (higher = more important; the lowest are removed):

* ``reap``: router-weighted expert activation norm (REAP, Lasby et al., Cerebras 2025):
  ``S_e = mean over tokens routed to e of g_e(x) * ||f_e(x)||_2``, with ``g_e`` the gate weight the block
  applies to the expert's output; an expert no token reaches scores 0;
* ``frequency``: the fraction of tokens that select the expert in their top-k;
* ``random``: a seeded random permutation.

Padding tokens (``attention_mask == 0`` in a dict batch) are ignored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit.core import EvalMode, call_model, model_device, to_device
from prunekit.errors import DataRequiredError, PlanError

# Integer attributes that hold an expert count (on the block, router, experts, model or config).
COUNT_ATTRS: tuple[str, ...] = ("num_experts", "num_local_experts", "n_routed_experts", "num_routed_experts")
# Integer attributes that hold the number of experts each token selects.
TOPK_ATTRS: tuple[str, ...] = ("top_k", "num_experts_per_tok", "moe_topk", "router_topk")


@dataclass(frozen=True)
class MoEBlock:
    """One mixture-of-experts block.

    Attributes:
        name: the block's qualified name, e.g. ``"model.layers.0.mlp"``.
        module: the block.
        router: the child name of the router (``"gate"``).
        experts: the child name of the experts container (``"experts"``).
        num_experts: E, the number of experts now.
        top_k: experts per token (the largest top-k attribute found on the block or its router).
    """

    name: str
    module: nn.Module
    router: str
    experts: str
    num_experts: int
    top_k: int

    def child(self, which: str) -> str:
        """Qualified name of a child (``which`` is :attr:`router` or :attr:`experts`)."""
        return f"{self.name}.{which}" if self.name else which

    def expert_tensors(self) -> list[tuple[str, torch.Tensor]]:
        """Qualified names and tensors with one slice per expert (dim 0), router and experts."""
        out: list[tuple[str, torch.Tensor]] = []
        for which in (self.router, self.experts):
            sub = self.module.get_submodule(which)
            for n, t in [*sub.named_parameters(recurse=False), *sub.named_buffers(recurse=False)]:
                if t.dim() >= 1 and t.shape[0] == self.num_experts:
                    out.append((f"{self.child(which)}.{n}", t))
        return out


def _own_tensors(m: nn.Module) -> list[torch.Tensor]:
    return [*m.parameters(recurse=False), *m.buffers(recurse=False)]


def _has_child_params(m: nn.Module) -> bool:
    return any(any(True for _ in c.parameters()) for c in m.children())


def _fused_count(m: nn.Module) -> int | None:
    """E if every own parameter of ``m`` has leading dim E, one is 3-D, and no child has parameters."""
    params = list(m.parameters(recurse=False))
    if not params or _has_child_params(m) or not any(p.dim() == 3 for p in params):
        return None
    leads = {int(p.shape[0]) for p in params}
    return leads.pop() if len(leads) == 1 and min(p.dim() for p in params) >= 2 else None


def _router_count(m: nn.Module) -> int | None:
    w = m._parameters.get("weight")
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or _has_child_params(m):
        return None
    return int(w.shape[0])


def _top_k(*modules: nn.Module) -> int | None:
    found = [v for m in modules for a in TOPK_ATTRS if isinstance(v := getattr(m, a, None), int)]
    return max(found) if found else None


def find_moe_blocks(model: nn.Module) -> list[MoEBlock]:
    """Every mixture-of-experts block of ``model``, in module order (see the module docstring)."""
    blocks: list[MoEBlock] = []
    for name, mod in model.named_modules():
        children = list(mod.named_children())
        experts = [(n, c, e) for n, c in children if (e := _fused_count(c)) is not None and e >= 2]
        for en, ec, e in experts:
            routers = [n for n, c in children if c is not ec and _router_count(c) == e]
            if len(routers) != 1:
                continue
            top_k = _top_k(mod, mod.get_submodule(routers[0]), ec)
            blocks.append(
                MoEBlock(
                    name=name, module=mod, router=routers[0], experts=en, num_experts=e, top_k=top_k or 1
                )
            )
            break
    return blocks


# ----------------------------------------------------------------------------------------------
# Scoring.
# ----------------------------------------------------------------------------------------------


def _experts_args(
    args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    names = ("hidden_states", "top_k_index", "top_k_weights")
    values = list(args[:3]) + [kwargs.get(n) for n in names[len(args[:3]) :]]
    if not all(isinstance(v, torch.Tensor) for v in values):
        raise PlanError(
            "an experts container was not called as experts(hidden_states, top_k_index, top_k_weights) "
            "(the transformers 5 convention), so its routing cannot be read"
        )
    hidden, index, weights = values
    return hidden, index, weights


class _Recorder:
    """Forward hooks on every experts container that accumulate per-expert statistics."""

    def __init__(self, blocks: Sequence[MoEBlock], criterion: str) -> None:
        self.blocks = blocks
        self.criterion = criterion
        self.sums = [torch.zeros(b.num_experts, dtype=torch.float64) for b in blocks]
        self.counts = [torch.zeros(b.num_experts, dtype=torch.float64) for b in blocks]
        self.tokens = [0 for _ in blocks]
        self.valid: torch.Tensor | None = None  # (B*T,) bool, of the batch being run
        self.busy = False

    def hook(self, i: int) -> Any:
        def fn(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            if self.busy:
                return
            hidden, index, weights = _experts_args(args, kwargs)
            hidden = hidden.reshape(-1, hidden.shape[-1])
            index = index.reshape(hidden.shape[0], -1)
            weights = weights.reshape(hidden.shape[0], -1)
            if self.valid is not None and self.valid.numel() == hidden.shape[0]:
                keep = self.valid.to(hidden.device)
                hidden, index, weights = hidden[keep], index[keep], weights[keep]
            self.tokens[i] += int(hidden.shape[0])
            e_count = self.blocks[i].num_experts
            self.counts[i] += torch.bincount(index.flatten().cpu(), minlength=e_count)[:e_count].double()
            if self.criterion == "reap":
                self.busy = True
                try:
                    self._reap(i, module, hidden, index, weights)
                finally:
                    self.busy = False

        return fn

    def _reap(
        self, i: int, experts: nn.Module, hidden: torch.Tensor, index: torch.Tensor, weights: torch.Tensor
    ) -> None:
        for e in torch.unique(index).tolist():
            if not 0 <= e < self.blocks[i].num_experts:
                continue
            tok, slot = torch.nonzero(index == e, as_tuple=True)
            one = torch.full((tok.numel(), 1), e, dtype=index.dtype, device=index.device)
            y = experts(
                hidden[tok], one, torch.ones((tok.numel(), 1), dtype=weights.dtype, device=weights.device)
            )
            gate = weights[tok, slot].double()  # (n,)
            self.sums[i][e] += float((gate * y.double().norm(dim=-1)).sum())

    def scores(self) -> list[torch.Tensor]:
        if self.criterion == "reap":
            return [s / c.clamp(min=1) for s, c in zip(self.sums, self.counts, strict=True)]
        return [c / max(t, 1) for c, t in zip(self.counts, self.tokens, strict=True)]


def _valid_tokens(inputs: Any) -> torch.Tensor | None:
    if isinstance(inputs, Mapping):
        mask = inputs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            return mask.flatten() != 0
    return None


@contextlib.contextmanager
def _hooked(blocks: Sequence[MoEBlock], rec: _Recorder) -> Iterator[None]:
    handles = [
        b.module.get_submodule(b.experts).register_forward_hook(rec.hook(i), with_kwargs=True)
        for i, b in enumerate(blocks)
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def expert_scores(
    model: nn.Module, blocks: Sequence[MoEBlock], batches: Sequence[Any], criterion: str, *, seed: int = 0
) -> list[torch.Tensor]:
    """Per-block expert scores (float64, shape (E,)), higher = more important. The model is not changed.

    Args:
        model: the model holding ``blocks``.
        blocks: from :func:`find_moe_blocks`.
        batches: model inputs (tensors, tuples, kwargs dicts), already taken from the user's data.
        criterion: ``"reap"``, ``"frequency"`` or ``"random"`` (which ignores ``batches``).
        seed: seed of ``"random"``.

    Raises:
        DataRequiredError: a batch does not fit the model, or no (non-padding) token reached a block.
    """
    if criterion == "random":
        gen = torch.Generator().manual_seed(seed)
        return [torch.rand(b.num_experts, generator=gen, dtype=torch.float64) for b in blocks]
    rec = _Recorder(blocks, criterion)
    device = model_device(model)
    with torch.no_grad(), EvalMode(model), _hooked(blocks, rec):
        for k, inputs in enumerate(batches):
            rec.valid = _valid_tokens(inputs)
            try:
                call_model(model, to_device(inputs, device))
            except PlanError:
                raise
            except Exception as e:
                raise DataRequiredError(
                    f"calibration batch {k} does not fit {type(model).__name__}: {type(e).__name__}: {e}. "
                    "Pass batches of model inputs: token tensors (B, T), dicts of keyword inputs (input_ids, "
                    "attention_mask) or (inputs, targets) pairs"
                ) from e
    empty = [b.name or type(model).__name__ for b, t in zip(blocks, rec.tokens, strict=True) if t == 0]
    if empty:
        raise DataRequiredError(
            f"no calibration token reached the MoE block(s) {', '.join(map(repr, empty))} (all padding, or the "
            "blocks are not run by the model's forward); pass batches with non-padding tokens"
        )
    return rec.scores()


__all__ = ["COUNT_ATTRS", "TOPK_ATTRS", "MoEBlock", "expert_scores", "find_moe_blocks"]
