"""Blocks of a model (children of a ModuleList/Sequential that map hidden states to hidden states), found from one recorded forward; running with blocks skipped; Block Influence scores."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit.core import (
    EvalMode,
    call_model,
    model_device,
    to_device,
)
from prunekit.errors import UnknownModuleError


@dataclass(frozen=True, kw_only=True)
class BlockInfo:
    """One child of a ModuleList/Sequential seen in the recorded forward pass.

    Attributes:
        name: the block's qualified name, e.g. ``"model.layers.3"``.
        container: the qualified name of its ModuleList/Sequential.
        index: its position in the container.
        removable: whether it can be removed (skipping it keeps the model valid).
        reason: why not, when it cannot.
    """

    name: str
    container: str
    index: int
    removable: bool
    reason: str = ""


def hidden_in(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> torch.Tensor | None:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    hidden = kwargs.get("hidden_states")
    if isinstance(hidden, torch.Tensor):
        return hidden
    for v in list(args) + list(kwargs.values()):
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            return v
    return None


def hidden_out(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def replace_hidden(out: Any, hidden: torch.Tensor) -> Any:
    if isinstance(out, torch.Tensor):
        return hidden
    return type(out)((hidden, *out[1:])) if isinstance(out, tuple) else [hidden, *out[1:]]


def containers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, (nn.ModuleList, nn.Sequential)) and len(m) > 0
    ]


def is_composite(module: nn.Module) -> bool:
    return any(any(True for _ in c.parameters()) for c in module.children())


def find_blocks(model: nn.Module, example_inputs: Any) -> list[BlockInfo]:
    """Every composite child of a ModuleList/Sequential, with whether it can be removed.

    Runs one forward pass on ``example_inputs`` (tensor, tuple or kwargs dict) with hooks.
    Blocks nested inside a removable block are not listed.
    """
    records: dict[str, list[tuple[torch.Tensor | None, torch.Tensor | None]]] = {}
    order: list[str] = []
    handles = []
    children: list[tuple[str, str, int, nn.Module]] = []
    for cname, container in containers(model):
        for i, (key, child) in enumerate(container.named_children()):
            if is_composite(child) and not isinstance(child, (nn.ModuleList, nn.Sequential)):
                children.append((f"{cname}.{key}" if cname else key, cname, i, child))

    def hook(name: str) -> Callable[..., None]:
        def fn(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            records.setdefault(name, []).append((hidden_in(args, kwargs), hidden_out(out)))
            order.append(name)

        return fn

    for name, _, _, child in children:
        handles.append(child.register_forward_hook(hook(name), with_kwargs=True))
    try:
        with torch.no_grad(), EvalMode(model):
            call_model(model, to_device(example_inputs, model_device(model)))
    finally:
        for h in handles:
            h.remove()

    by_container: dict[str, list[str]] = {}
    for name, cname, _, _ in children:
        by_container.setdefault(cname, []).append(name)
    infos: list[BlockInfo] = []
    for name, cname, index, _ in children:
        calls = records.get(name, [])
        reason = ""
        if len(calls) != 1:
            reason = f"called {len(calls)} times in one forward pass (expected once)"
        else:
            x_in, x_out = calls[0]
            if x_in is None or x_out is None:
                reason = "its input or output is not a tensor (or a tuple starting with one)"
            elif x_in.shape != x_out.shape or x_in.dtype != x_out.dtype:
                reason = (
                    f"its hidden state changes across it: input {tuple(x_in.shape)} {x_in.dtype}, "
                    f"output {tuple(x_out.shape)} {x_out.dtype}"
                )
            else:
                reason = chain_reason(name, by_container[cname], records, order)
        infos.append(BlockInfo(name=name, container=cname, index=index, removable=not reason, reason=reason))
    removable = [b.name for b in infos if b.removable]
    return [b for b in infos if not any(b.name.startswith(r + ".") for r in removable)]


def chain_reason(
    name: str, siblings: Sequence[str], records: Mapping[str, list[Any]], order: Sequence[str]
) -> str:
    """Empty if the block's siblings around it run as a chain (prev output -> input -> next input)."""
    called = [s for s in order if s in siblings]
    pos = called.index(name)
    x_in, x_out = records[name][0]
    if pos > 0:
        prev_out = records[called[pos - 1]][0][1]
        if prev_out is None or not (
            prev_out is x_in or (prev_out.shape == x_in.shape and torch.equal(prev_out, x_in))
        ):
            return f"its input is not the output of the block before it ({called[pos - 1]!r}); the container is not a chain"
    if pos + 1 < len(called):
        next_in = records[called[pos + 1]][0][0]
        if next_in is None or not (
            next_in is x_out or (next_in.shape == x_out.shape and torch.equal(next_in, x_out))
        ):
            return f"its output is not the input of the block after it ({called[pos + 1]!r}); the container is not a chain"
    return ""


@contextlib.contextmanager
def skip_blocks(model: nn.Module, names: Iterable[str]) -> Iterator[None]:
    """Within the context, the named blocks return their input unchanged (as if removed).

    The blocks still run (their output is discarded); used to score a block by its loss and as the
    reference for what removal must compute.
    """
    modules = dict(model.named_modules())
    handles = []

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Any:
        hidden = hidden_in(args, kwargs)
        return replace_hidden(out, hidden) if hidden is not None else out

    try:
        for n in names:
            if n not in modules:
                raise UnknownModuleError(f"no module named {n!r} in {type(model).__name__}")
            handles.append(modules[n].register_forward_hook(hook, with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


def token_cosine(
    x_in: torch.Tensor, x_out: torch.Tensor, token_mask: torch.Tensor | None
) -> tuple[float, float]:
    """(sum of per-token cosine similarities, number of tokens)."""
    a, b = x_in.float(), x_out.float()
    if a.ndim >= 4:  # (B, C, H, W): a token is one spatial position, its features the channels
        a, b = a.movedim(1, -1), b.movedim(1, -1)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-8)  # (B, T) or (B,)
    if token_mask is not None and token_mask.shape == cos.shape:
        w = token_mask.to(cos.dtype)
        return float((cos * w).sum()), float(w.sum())
    return float(cos.sum()), float(cos.numel())


def token_mask(inputs: Any) -> torch.Tensor | None:
    if isinstance(inputs, Mapping) and isinstance(inputs.get("attention_mask"), torch.Tensor):
        mask: torch.Tensor = inputs["attention_mask"]
        return mask if mask.ndim == 2 else None
    return None


def block_influence(model: nn.Module, names: Sequence[str], inputs_list: Sequence[Any]) -> dict[str, float]:
    """Block Influence ``1 - mean cos(x_in, x_out)`` of each named block over the given inputs."""
    modules = dict(model.named_modules())
    sums = {n: [0.0, 0.0] for n in names}
    current_mask: list[torch.Tensor | None] = [None]

    def hook(name: str) -> Callable[..., None]:
        def fn(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            x_in, x_out = hidden_in(args, kwargs), hidden_out(out)
            if x_in is not None and x_out is not None:
                s, c = token_cosine(x_in, x_out, current_mask[0])
                sums[name][0] += s
                sums[name][1] += c

        return fn

    handles = [modules[n].register_forward_hook(hook(n), with_kwargs=True) for n in names]
    device = model_device(model)
    try:
        with torch.no_grad(), EvalMode(model):
            for inputs in inputs_list:
                inputs = to_device(inputs, device)
                current_mask[0] = token_mask(inputs)
                call_model(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return {n: 1.0 - s / max(c, 1.0) for n, (s, c) in sums.items()}


def owning_config(model: nn.Module, container: str) -> Any:
    """The ``config`` of the nearest module above ``container`` that has one (HF models), else None."""
    parts = container.split(".") if container else []
    for i in range(len(parts) - 1, -1, -1):
        owner = model.get_submodule(".".join(parts[:i])) if i else model
        config = getattr(owner, "config", None)
        if config is not None and hasattr(config, "num_hidden_layers"):
            return config
    return None


def update_hf_config(config: Any, old_len: int, removed_idx: Sequence[int], new_len: int) -> tuple[str, ...]:
    if config is None:
        return ()
    updated: list[str] = []
    if getattr(config, "num_hidden_layers", None) == old_len:
        config.num_hidden_layers = new_len
        updated.append("num_hidden_layers")
    for key in ("layer_types", "sliding_window_pattern_list"):  # per-layer lists
        values = getattr(config, key, None)
        if isinstance(values, (list, tuple)) and len(values) == old_len:
            setattr(config, key, [t for i, t in enumerate(values) if i not in set(removed_idx)])
            updated.append(key)
    return tuple(updated)


def drop_children(container: nn.Module, drop: set[int]) -> None:
    """Delete children at positions ``drop`` in place; integer keys are renumbered 0..n-1."""
    items = [(k, m) for i, (k, m) in enumerate(container._modules.items()) if i not in drop]
    renumber = all(k.isdigit() for k, _ in items)
    container._modules = OrderedDict((str(i) if renumber else k, m) for i, (k, m) in enumerate(items))


def remove_blocks(model: nn.Module, blocks: Sequence[BlockInfo]) -> tuple[str, ...]:
    """Delete ``blocks`` from their containers in place; update HF config and ``layer_idx``.

    The containers stay the same objects (their children are re-indexed). Returns the names of the
    updated config fields.
    """
    updated, _ = remove_blocks_undoable(model, blocks)
    return updated


def remove_blocks_undoable(
    model: nn.Module, blocks: Sequence[BlockInfo]
) -> tuple[tuple[str, ...], Callable[[], None]]:
    """:func:`remove_blocks`, also returning a function that puts every block, index and config back."""
    by_container: dict[str, set[int]] = {}
    for b in blocks:
        by_container.setdefault(b.container, set()).add(b.index)
    containers = {c: model.get_submodule(c) if c else model for c in by_container}
    saved = {c: OrderedDict(m._modules) for c, m in containers.items()}
    saved_idx = [
        (sub, sub.layer_idx) for sub in model.modules() if isinstance(getattr(sub, "layer_idx", None), int)
    ]
    configs = {id(cfg): cfg for cfg in (owning_config(model, c) for c in by_container) if cfg is not None}
    keys = ("num_hidden_layers", "layer_types", "sliding_window_pattern_list")
    saved_cfg = [(cfg, k, getattr(cfg, k)) for cfg in configs.values() for k in keys if hasattr(cfg, k)]

    def undo() -> None:
        for c, container in containers.items():
            container._modules = saved[c]
        for sub, idx in saved_idx:
            setattr(sub, "layer_idx", idx)  # noqa: B010
        for cfg, k, v in saved_cfg:
            setattr(cfg, k, v)

    updated: list[str] = []
    try:
        for c, container in containers.items():
            old = list(container.children())
            kept = [i for i in range(len(old)) if i not in by_container[c]]
            drop_children(container, by_container[c])
            for new_i, old_i in enumerate(kept):
                for sub in old[old_i].modules():
                    if isinstance(getattr(sub, "layer_idx", None), int) and sub.layer_idx == old_i:
                        setattr(sub, "layer_idx", new_i)  # noqa: B010  (typed as Tensor | Module)
            config = owning_config(model, c)
            for f in update_hf_config(config, len(old), sorted(by_container[c]), len(kept)):
                if f not in updated:
                    updated.append(f)
    except Exception:
        undo()
        raise
    return tuple(updated), undo


def layer_removals(model: nn.Module, blocks: Sequence[BlockInfo]) -> list[dict[str, Any]]:
    """The plan records of removing ``blocks``: ``{"container", "size", "kept"}`` per container."""
    by_container: dict[str, set[int]] = {}
    for b in blocks:
        by_container.setdefault(b.container, set()).add(b.index)
    out = []
    for c, drop in by_container.items():
        size = len(list((model.get_submodule(c) if c else model).children()))
        out.append({"container": c, "size": size, "kept": [i for i in range(size) if i not in drop]})
    return out


__all__ = [
    "drop_children",
    "layer_removals",
    "owning_config",
    "remove_blocks",
    "remove_blocks_undoable",
    "update_hf_config",
    "BlockInfo",
    "block_influence",
    "chain_reason",
    "containers",
    "find_blocks",
    "hidden_in",
    "hidden_out",
    "is_composite",
    "replace_hidden",
    "skip_blocks",
    "token_cosine",
    "token_mask",
]
