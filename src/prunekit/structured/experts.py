"""Expert pruning: remove whole experts of mixture-of-experts models, physically.

::

    data ──► scores per block (reap | frequency | random) ──► lowest experts per block
         ──► Plan (router rows + expert slices, expert counts) ──► surgery (atomic) ──► config synced

Removing expert ``e`` computes exactly what the original computes with ``e``'s router logit set to
``-inf``: the softmax over the remaining logits is the softmax of the masked logits, so the top-k
choice and the gate weights of every token are unchanged (as long as top-k <= remaining experts).

The router's rows, every per-expert tensor of the experts container (leading dim E: fused weights,
biases, buffers) and of the router (bias, score-correction buffers) are sliced; the expert-count
attributes of the blocks, routers, experts containers and the model (``num_experts``,
``num_local_experts``) and of a Hugging Face config are updated. Shared experts are kept. The change
is recorded as a structured plan, so ``pk.save`` / ``pk.load`` re-apply it to a freshly built model,
and with the same number of experts in every block, ``pk.save_pretrained`` -> ``from_pretrained``
rebuilds the pruned model.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
from collections.abc import Iterable, Sequence
from typing import Any, Literal, get_args

import torch
from torch import nn

from prunekit.core import take_inputs
from prunekit.errors import ConfigError, PlanError, UnknownModuleError
from prunekit.structured.moe import COUNT_ATTRS, TOPK_ATTRS, MoEBlock, expert_scores, find_moe_blocks
from prunekit.structured.surgery import AttrUpdate, Plan, PlanEntry, record_plan
from prunekit.structured.surgery import apply as apply_surgery

logger = logging.getLogger(__name__)

ExpertCriterion = Literal["reap", "frequency", "random"]
EXPERT_CRITERIA: tuple[str, ...] = get_args(ExpertCriterion)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExpertPruneConfig:
    """How :func:`prune_experts` chooses the experts to remove.

    Attributes:
        ratio: fraction of each block's experts to remove, in [0, 1) (rounded to the nearest count);
            used when ``n`` is None (default 0.25).
        n: number of experts to remove from each block (instead of ``ratio``).
        criterion: ``"reap"`` (router-weighted activation norm), ``"frequency"`` or ``"random"``.
        per_layer: ``False`` (default) removes the same count from every block, so a Hugging Face config
            still describes the model; ``True`` removes the same total but ranks the experts of all
            blocks together (scores divided by their block's mean), so counts may differ per block.
        max_batches: use at most this many calibration batches.
        seed: seed of ``criterion="random"``.

    Example:
        >>> ExpertPruneConfig(ratio=0.5).count(8), ExpertPruneConfig(n=3).count(8)
        (4, 3)
    """

    ratio: float | None = None
    n: int | None = None
    criterion: ExpertCriterion = "reap"
    per_layer: bool = False
    max_batches: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.ratio is not None and self.n is not None:
            raise ConfigError(f"give ratio= or n=, not both (got ratio={self.ratio}, n={self.n})")
        if self.ratio is not None and (
            isinstance(self.ratio, bool)
            or not isinstance(self.ratio, (int, float))
            or not 0 <= self.ratio < 1
        ):
            raise ConfigError(f"ratio must be a fraction of experts in [0, 1), got {self.ratio!r}")
        if self.n is not None and (isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 0):
            raise ConfigError(f"n must be a non-negative number of experts per block, got {self.n!r}")
        if self.criterion not in EXPERT_CRITERIA:
            raise ConfigError(
                f"unknown expert criterion {self.criterion!r}; choose one of {list(EXPERT_CRITERIA)}"
            )
        if self.max_batches is not None and (not isinstance(self.max_batches, int) or self.max_batches < 1):
            raise ConfigError(f"max_batches must be a positive integer or None, got {self.max_batches!r}")

    def count(self, num_experts: int) -> int:
        """Experts to remove from a block of ``num_experts``."""
        if self.n is not None:
            return self.n
        ratio = 0.25 if self.ratio is None else float(self.ratio)
        return int(round(ratio * num_experts))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExpertPruningResult:
    """What :func:`prune_experts` removed.

    Attributes:
        removed: block name -> original indices of the removed experts.
        kept: block name -> original indices of the kept experts (the new expert ``i`` is ``kept[i]``).
        scores: block name -> score of every original expert (higher = more important).
        criterion: the criterion used.
        experts_before: total experts before, over all blocks.
        experts_after: total experts after.
        uniform: every block has the same number of experts (a Hugging Face config can say it).
        config_updated: Hugging Face config fields written.
    """

    removed: dict[str, tuple[int, ...]]
    kept: dict[str, tuple[int, ...]]
    scores: dict[str, tuple[float, ...]]
    criterion: str
    experts_before: int
    experts_after: int
    uniform: bool
    config_updated: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return {
            "removed": {k: list(v) for k, v in self.removed.items()},
            "kept": {k: list(v) for k, v in self.kept.items()},
            "scores": {k: list(v) for k, v in self.scores.items()},
            "criterion": self.criterion,
            "experts_before": self.experts_before,
            "experts_after": self.experts_after,
            "uniform": self.uniform,
            "config_updated": list(self.config_updated),
        }

    def __str__(self) -> str:
        lines = [
            f"Expert pruning ({self.criterion}): {self.experts_before} -> {self.experts_after} experts "
            f"in {len(self.kept)} blocks"
        ]
        lines += [f"  {b:<40} removed {list(r)}" for b, r in self.removed.items()]
        return "\n".join(lines)


def _select_blocks(model: nn.Module, blocks: list[MoEBlock], include: Any, exclude: Any) -> list[MoEBlock]:
    def as_list(sel: Any, arg: str) -> list[str]:
        if sel is None:
            return []
        items = [sel] if isinstance(sel, str) else list(sel) if isinstance(sel, Iterable) else None
        if items is None or not all(isinstance(s, str) for s in items):
            raise ConfigError(f"{arg}= must be a module name, an fnmatch glob or a list of them; got {sel!r}")
        return items

    def hit(name: str, sel: str) -> bool:
        return name == sel or fnmatch.fnmatchcase(name, sel) or name.startswith(sel + ".") or sel == ""

    names = [b.name for b in blocks]
    inc, exc = as_list(include, "include"), as_list(exclude, "exclude")
    for arg, sels in (("include", inc), ("exclude", exc)):
        for s in sels:
            if not any(hit(n, s) for n in names):
                raise UnknownModuleError(
                    f"{arg}= {s!r} matches no mixture-of-experts block of {type(model).__name__}; its MoE "
                    f"blocks are {names[:6]}{' ...' if len(names) > 6 else ''}"
                )
    chosen = [b for b in blocks if (not inc or any(hit(b.name, s) for s in inc))]
    return [b for b in chosen if not any(hit(b.name, s) for s in exc)]


def _ascending(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda e: (scores[e], e))


def _removals(
    blocks: Sequence[MoEBlock], scores: Sequence[torch.Tensor], cfg: ExpertPruneConfig
) -> list[list[int]]:
    """Original indices to remove in each block (lowest score first; ties: lower index removed first)."""
    counts = [cfg.count(b.num_experts) for b in blocks]
    for b, c in zip(blocks, counts, strict=True):
        if b.num_experts - c < b.top_k:
            raise PlanError(
                f"cannot remove {c} of the {b.num_experts} experts of '{b.name}': each token selects top-k = "
                f"{b.top_k} experts, so at most {b.num_experts - b.top_k} can be removed. Lower ratio= or n="
            )
    order = [_ascending(s.tolist()) for s in scores]
    if not cfg.per_layer:
        return [sorted(o[:c]) for o, c in zip(order, counts, strict=True)]
    pool: list[tuple[float, int, int]] = []
    for i, s in enumerate(scores):
        mean = float(s.mean())
        pool += [(float(s[e]) / mean if mean > 0 else float(s[e]), i, e) for e in range(len(s))]
    pool.sort()
    out: list[list[int]] = [[] for _ in blocks]
    budget = sum(counts)
    for _, i, e in pool:
        if budget == 0:
            break
        if blocks[i].num_experts - len(out[i]) > blocks[i].top_k:
            out[i].append(e)
            budget -= 1
    return [sorted(r) for r in out]


def _plan(
    model: nn.Module, blocks: Sequence[MoEBlock], removed: Sequence[Sequence[int]], *, every_block: bool
) -> Plan:
    entries: list[PlanEntry] = []
    attrs: list[AttrUpdate] = []
    inside: set[str] = set()
    for b, rem in zip(blocks, removed, strict=True):
        if not rem:
            continue
        kept = tuple(e for e in range(b.num_experts) if e not in set(rem))
        entries += [PlanEntry(fqn=f, dim=0, size=b.num_experts, kept=kept) for f, _ in b.expert_tensors()]
        for mod_name in (b.name, b.child(b.router), b.child(b.experts)):
            mod = model.get_submodule(mod_name)
            names = COUNT_ATTRS + (("out_features",) if mod_name == b.child(b.router) else ())
            attrs += [
                AttrUpdate(module=mod_name, name=a, old=b.num_experts, new=len(kept))
                for a in names
                if getattr(mod, a, None) == b.num_experts and not isinstance(getattr(mod, a), bool)
            ]
        inside.update(n for n, _ in b.module.named_modules(prefix=b.name))
    new_counts = {b.num_experts - len(r) for b, r in zip(blocks, removed, strict=True)}
    old_counts = {b.num_experts for b in blocks}
    if every_block and len(new_counts) == 1 and len(old_counts) == 1 and new_counts != old_counts:
        old, new = old_counts.pop(), new_counts.pop()
        for name, mod in model.named_modules():  # e.g. MixtralForCausalLM.num_experts (router aux loss)
            if name not in inside:
                attrs += [
                    AttrUpdate(module=name, name=a, old=old, new=new)
                    for a in COUNT_ATTRS
                    if type(vars(mod).get(a)) is int and vars(mod)[a] == old
                ]
    return Plan(entries=tuple(entries), attributes=tuple(attrs))


def sync_expert_config(model: nn.Module) -> tuple[str, ...]:
    """Write the experts count of ``model``'s MoE blocks into its Hugging Face config, in place.

    Called by :func:`prune_experts`; call it yourself after ``pk.load`` into a model built from the
    dense config, before ``save_pretrained``.

    Returns:
        The config fields written (none for a model without ``config`` or already in sync).

    Raises:
        PlanError: the blocks have different numbers of experts (a config holds one count), or top-k
            exceeds the number of experts.
    """
    cfg = getattr(model, "config", None)
    blocks = find_moe_blocks(model)
    if cfg is None or not blocks:
        return ()
    counts = {b.name: b.num_experts for b in blocks}
    if len(set(counts.values())) != 1:
        raise PlanError(
            f"per-block expert counts {counts}: a Hugging Face config holds one number of experts, so it cannot "
            "express this model. Save it with pk.save(model, path) and reload with pk.load(path, fresh_model)"
        )
    new = blocks[0].num_experts
    top_k = [v for a in TOPK_ATTRS if isinstance(v := getattr(cfg, a, None), int) and not isinstance(v, bool)]
    if any(k > new for k in top_k):
        raise PlanError(f"config top-k {max(top_k)} exceeds the {new} experts left in every block")
    aliases = getattr(cfg, "attribute_map", None) or {}
    written: list[str] = []
    for a in COUNT_ATTRS:
        v = getattr(cfg, a, None)
        if type(v) is int and v != new:
            setattr(cfg, a, new)
            written.append(str(aliases.get(a, a)))
    return tuple(written)


def prune_experts(
    model: nn.Module,
    data: Iterable[Any] | Any = None,
    *,
    ratio: float | None = None,
    n: int | None = None,
    criterion: ExpertCriterion = "reap",
    per_layer: bool = False,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    max_batches: int | None = None,
    seed: int = 0,
    config: ExpertPruneConfig | None = None,
) -> ExpertPruningResult:
    """Remove the least important experts of every mixture-of-experts block of ``model``, in place.

    Args:
        model: a model with MoE blocks (e.g. Hugging Face Mixtral, Qwen2/3-MoE, OLMoE), see
            :mod:`prunekit.structured.moe` for how blocks are found.
        data: calibration batches: any iterable of model inputs (token tensors, kwargs dicts with an
            ``attention_mask`` whose zeros are ignored, HF batches, ``(inputs, targets)`` pairs); not
            needed for ``criterion="random"``.
        ratio: fraction of each block's experts to remove, in [0, 1) (default 0.25 when ``n`` is None).
        n: number of experts to remove from each block.
        criterion: ``"reap"`` (router-weighted expert output norm), ``"frequency"`` or ``"random"``.
        per_layer: rank experts across blocks (counts may differ per block, then a Hugging Face config
            cannot describe the model: ``pk.save_pretrained`` raises; use ``pk.save``).
        include: block names / fnmatch globs (or enclosing module names) to prune; default all.
        exclude: block names / globs to leave alone.
        max_batches: use at most this many batches of ``data``.
        seed: seed of ``criterion="random"``.
        config: an :class:`ExpertPruneConfig` instead of the keyword arguments above.

    Returns:
        An :class:`ExpertPruningResult`.

    Raises:
        ConfigError: ratio / n / criterion out of range.
        PlanError: the model has no MoE block, or the removal would leave fewer experts than top-k.
        DataRequiredError: no data for a data criterion, or data that does not fit the model.
        UnknownModuleError: ``include`` / ``exclude`` name no MoE block.
        On any error the model is left unchanged.
    """
    cfg = config or ExpertPruneConfig(
        ratio=ratio, n=n, criterion=criterion, per_layer=per_layer, max_batches=max_batches, seed=seed
    )
    all_blocks = find_moe_blocks(model)
    if not all_blocks:
        raise PlanError(
            f"{type(model).__name__} has no mixture-of-experts block: expected a module with a router (a child "
            "with a 2-D weight of shape (E, hidden)) and an experts container whose parameters have leading dim E "
            "(transformers 5 fused experts such as gate_up_proj (E, 2I, hidden))"
        )
    blocks = _select_blocks(model, all_blocks, include, exclude)
    if not blocks:
        raise ConfigError("include= / exclude= leave no mixture-of-experts block to prune")
    for b in blocks:  # fail on impossible counts before spending a calibration pass
        if b.num_experts - cfg.count(b.num_experts) < b.top_k:
            _removals([b], [torch.zeros(b.num_experts, dtype=torch.float64)], cfg)
    batches = [] if cfg.criterion == "random" else take_inputs(data, cfg.max_batches, "prune_experts")
    scores = expert_scores(model, blocks, batches, cfg.criterion, seed=cfg.seed)
    removed = _removals(blocks, scores, cfg)
    plan = _plan(model, blocks, removed, every_block=len(blocks) == len(all_blocks))
    before = sum(b.num_experts for b in all_blocks)
    written: tuple[str, ...] = ()
    if plan.entries:
        snap = apply_surgery(model, plan)
        hf_config = getattr(model, "config", None)
        saved = dict(vars(hf_config)) if hf_config is not None and hasattr(hf_config, "__dict__") else None
        try:
            if len({b.num_experts for b in find_moe_blocks(model)}) == 1:
                written = sync_expert_config(model)
        except Exception:
            if saved is not None:
                vars(hf_config).clear()
                vars(hf_config).update(saved)
            snap.restore()
            raise
        record_plan(model, plan)
    logger.info(
        "prune_experts(%s): removed %s",
        cfg.criterion,
        {b.name: r for b, r in zip(blocks, removed, strict=True)},
    )
    return ExpertPruningResult(
        removed={b.name: tuple(r) for b, r in zip(blocks, removed, strict=True)},
        kept={
            b.name: tuple(e for e in range(b.num_experts) if e not in r)
            for b, r in zip(blocks, removed, strict=True)
        },
        scores={b.name: tuple(float(v) for v in s) for b, s in zip(blocks, scores, strict=True)},
        criterion=cfg.criterion,
        experts_before=before,
        experts_after=before - sum(len(r) for r in removed),
        uniform=len({b.num_experts for b in find_moe_blocks(model)}) == 1,
        config_updated=written,
    )


__all__ = [
    "EXPERT_CRITERIA",
    "ExpertCriterion",
    "ExpertPruneConfig",
    "ExpertPruningResult",
    "prune_experts",
    "sync_expert_config",
]
