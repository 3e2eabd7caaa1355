"""Physical surgery: apply a structured plan by slicing tensors in place, atomically.

A plan is data (JSON-able)::

    {"version": 1,
     "entries":    [{"fqn": "layer1.0.conv1.weight", "dim": 0, "size": 64, "kept": [0, 2, 3, ...]}, ...],
     "attributes": [{"module": "layer1.0.conv1", "name": "out_channels", "old": 64, "new": 32}, ...],
     "layers":     [{"container": "encoder.layer", "size": 6, "kept": [0, 1, 2, 4, 5]}]}   # optional

``layers`` records whole blocks removed from a ModuleList/Sequential (``prune_layers``): applying it
deletes the other children (re-indexed) and updates a Hugging Face config's layer count, so a plan
list replays channel, head and layer pruning in the order it happened.

``apply`` validates the whole plan first, then swaps ``tensor.data`` (parameter identities, ties and
optimizer references to the objects survive) and sets module attributes. The old tensors are kept as the
snapshot, so a failure at any point restores the model exactly (no copy is made).
"""

from __future__ import annotations

import copy
import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.errors import FormatError, PlanError

PLAN_VERSION = 1
PLAN_ATTR = "_prunekit_plan"


@dataclasses.dataclass(frozen=True, kw_only=True)
class PlanEntry:
    """Keep ``kept`` indices of dimension ``dim`` (old size ``size``) of tensor ``fqn``."""

    fqn: str
    dim: int
    size: int
    kept: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"fqn": self.fqn, "dim": self.dim, "size": self.size, "kept": list(self.kept)}

    def kept_array(self) -> np.ndarray:
        """``kept`` as an int64 array, made once per entry and shared by validate / apply / check (do not write)."""
        arr: np.ndarray | None = self.__dict__.get("_kept_array")
        if arr is None:
            arr = np.asarray(self.kept, dtype=np.int64)
            object.__setattr__(self, "_kept_array", arr)
        return arr

    @classmethod
    def from_kept_array(cls, fqn: str, dim: int, size: int, kept: np.ndarray) -> PlanEntry:
        """An entry whose ``kept_array`` is (a copy of) ``kept``."""
        arr = np.array(kept, dtype=np.int64)
        e = cls(fqn=fqn, dim=dim, size=size, kept=tuple(arr.tolist()))
        object.__setattr__(e, "_kept_array", arr)
        return e


@dataclasses.dataclass(frozen=True, kw_only=True)
class AttrUpdate:
    """Set ``module.name`` from ``old`` to ``new``."""

    module: str
    name: str
    old: Any
    new: Any

    def to_dict(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "name": self.name,
            "old": _jsonable(self.old),
            "new": _jsonable(self.new),
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class LayerRemoval:
    """Keep the children ``kept`` (old count ``size``) of the ModuleList/Sequential ``container``."""

    container: str
    size: int
    kept: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"container": self.container, "size": self.size, "kept": list(self.kept)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LayerRemoval:
        return cls(container=str(d["container"]), size=int(d["size"]), kept=tuple(int(i) for i in d["kept"]))


def _jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


@dataclasses.dataclass(frozen=True, kw_only=True)
class Plan:
    """A structured pruning plan: tensor slices to keep and module attributes to update."""

    entries: tuple[PlanEntry, ...]
    attributes: tuple[AttrUpdate, ...] = ()
    layers: tuple[LayerRemoval, ...] = ()
    version: int = PLAN_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the format saved by ``pk.save``)."""
        d: dict[str, Any] = {
            "version": self.version,
            "entries": [e.to_dict() for e in self.entries],
            "attributes": [a.to_dict() for a in self.attributes],
        }
        if self.layers:
            d["layers"] = [r.to_dict() for r in self.layers]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Plan:
        """Parse and check the structure of a plan dict.

        Raises:
            FormatError: when the dict is not a plan of a known version.
        """
        if not isinstance(d, Mapping) or "entries" not in d:
            raise FormatError(
                f"not a prunekit structured plan: expected a dict with 'version' and 'entries', got {type(d).__name__}"
            )
        if d.get("version") != PLAN_VERSION:
            raise FormatError(
                f"structured plan version {d.get('version')!r} is not supported; expected {PLAN_VERSION}"
            )
        try:
            entries = tuple(
                PlanEntry(
                    fqn=str(e["fqn"]),
                    dim=int(e["dim"]),
                    size=int(e["size"]),
                    kept=tuple(int(i) for i in e["kept"]),
                )
                for e in d["entries"]
            )
            attrs = tuple(
                AttrUpdate(
                    module=str(a["module"]),
                    name=str(a["name"]),
                    old=tuple(a["old"]) if isinstance(a["old"], list) else a["old"],
                    new=tuple(a["new"]) if isinstance(a["new"], list) else a["new"],
                )
                for a in d.get("attributes", [])
            )
            layers = tuple(LayerRemoval.from_dict(r) for r in d.get("layers", []))
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"malformed structured plan entry: {e}") from e
        return cls(entries=entries, attributes=attrs, layers=layers)


def get_tensor(model: nn.Module, fqn: str, modules: Mapping[str, nn.Module] | None = None) -> torch.Tensor:
    mod_name, _, attr = fqn.rpartition(".")
    mod = modules.get(mod_name) if modules is not None else None
    if mod is None:
        try:
            mod = model.get_submodule(mod_name)
        except AttributeError as e:
            raise PlanError(f"plan names tensor '{fqn}', but the model has no module '{mod_name}'") from e
    t = getattr(mod, attr, None)
    if not isinstance(t, torch.Tensor):
        raise PlanError(
            f"plan names tensor '{fqn}', but '{mod_name or type(model).__name__}' has no parameter or buffer '{attr}'"
        )
    return t


def validate(model: nn.Module, plan: Plan) -> None:
    """Check every entry and attribute of ``plan`` against ``model`` without changing it.

    Raises:
        PlanError: naming the tensor or module, what was found and what was expected.
    """
    seen: set[tuple[int, int]] = set()
    modules = dict(model.named_modules())
    for e in plan.entries:
        t = get_tensor(model, e.fqn, modules)
        if e.dim < 0 or e.dim >= t.dim():
            raise PlanError(f"plan slices dim {e.dim} of '{e.fqn}', which has shape {tuple(t.shape)}")
        if t.shape[e.dim] != e.size:
            raise PlanError(
                f"plan expects '{e.fqn}' dim {e.dim} of size {e.size}, the model has {t.shape[e.dim]} "
                f"(shape {tuple(t.shape)}); was the plan made for another model or applied twice?"
            )
        if not e.kept:
            raise PlanError(
                f"plan removes all {e.size} indices of '{e.fqn}' dim {e.dim}; at least one must be kept"
            )
        key = (id(t), e.dim)
        if key in seen:
            raise PlanError(f"plan slices '{e.fqn}' dim {e.dim} twice (a tied parameter must appear once)")
        seen.add(key)
    bad = _unsorted_or_out_of_range(plan.entries)
    if bad is not None:
        raise PlanError(
            f"plan's kept indices for '{bad.fqn}' dim {bad.dim} must be sorted, unique and in [0, {bad.size})"
        )
    for a in plan.attributes:
        try:
            mod = modules[a.module] if a.module in modules else model.get_submodule(a.module)
        except AttributeError as e:
            raise PlanError(f"plan updates '{a.name}' of module '{a.module}', which does not exist") from e
        if not hasattr(mod, a.name):
            raise PlanError(
                f"plan updates '{a.module}.{a.name}', but {type(mod).__name__} has no attribute '{a.name}'"
            )
        cur = getattr(mod, a.name)
        if _norm(cur) != _norm(a.old):
            raise PlanError(f"plan expects '{a.module}.{a.name}' == {a.old!r}, the model has {cur!r}")
    if plan.layers and (plan.entries or plan.attributes):
        raise PlanError("a plan removes layers or slices tensors, not both; record them as two plans")
    for r in plan.layers:
        try:
            container = model.get_submodule(r.container) if r.container else model
        except AttributeError as e:
            raise PlanError(f"plan removes blocks of '{r.container}', which does not exist") from e
        if not isinstance(container, (nn.ModuleList, nn.Sequential)):
            raise PlanError(f"plan removes blocks of '{r.container}', a {type(container).__name__}, "
                            "not a ModuleList/Sequential")  # fmt: skip
        if len(container) != r.size:
            raise PlanError(
                f"plan expects '{r.container}' to hold {r.size} blocks, the model has {len(container)}; "
                "build the model with its original number of layers (the plan removes them)"
            )
        if not r.kept or len(set(r.kept)) != len(r.kept) or min(r.kept) < 0 or max(r.kept) >= r.size:
            raise PlanError(f"plan's kept blocks for '{r.container}' must be unique and in [0, {r.size})")


def _unsorted_or_out_of_range(entries: tuple[PlanEntry, ...]) -> PlanEntry | None:
    """The first entry (all non-empty) whose kept indices are not strictly increasing within [0, size), or
    None: every entry checked with one pass over all indices laid end to end."""
    if not entries:
        return None
    arrs = [e.kept_array() for e in entries]
    flat = np.concatenate(arrs)
    lengths = np.array([len(a) for a in arrs], dtype=np.int64)
    ends = np.cumsum(lengths)
    sizes = np.array([e.size for e in entries], dtype=np.int64)
    ok = (flat[ends - lengths] >= 0) & (flat[ends - 1] < sizes)
    rising = flat[1:] > flat[:-1]
    rising[ends[:-1] - 1] = True  # an entry's first index is not compared with the previous entry's last
    if not rising.all():
        seg = np.searchsorted(ends, np.flatnonzero(~rising) + 1, side="right")
        ok[seg] = False
    if ok.all():
        return None
    return entries[int(np.flatnonzero(~ok)[0])]


def _norm(v: Any) -> Any:
    return tuple(v) if isinstance(v, (list, tuple, torch.Size)) else v


@dataclasses.dataclass
class Snapshot:
    """What ``apply`` changed, to restore it (the old tensors themselves, not copies)."""

    tensors: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = dataclasses.field(
        default_factory=list
    )
    attrs: list[tuple[nn.Module, str, Any]] = dataclasses.field(default_factory=list)
    undo: list[Any] = dataclasses.field(default_factory=list)  # callables putting removed layers back

    def restore(self) -> None:
        """Put every tensor and attribute back, in reverse order."""
        for fn in reversed(self.undo):
            fn()
        for mod, name, old in reversed(self.attrs):
            setattr(mod, name, old)
        for t, old, grad in reversed(self.tensors):
            t.data = old
            if isinstance(t, nn.Parameter) or t.requires_grad:
                t.grad = grad


def apply(model: nn.Module, plan: Plan) -> Snapshot:
    """Validate ``plan`` and apply it to ``model`` in place; return the snapshot to undo it.

    On any failure during the mutation the model is restored before the error propagates.
    """
    validate(model, plan)
    snap = Snapshot()
    by_tensor: dict[int, list[PlanEntry]] = defaultdict(list)
    tensors: dict[int, torch.Tensor] = {}
    modules = dict(model.named_modules())
    for e in plan.entries:
        t = get_tensor(model, e.fqn, modules)
        by_tensor[id(t)].append(e)
        tensors[id(t)] = t
        # a weight mask (prunekit.core.masks: buffer `<name>_mask` beside it) is re-sliced with its weight;
        # read from _buffers: a missing name through nn.Module.__getattr__ costs an exception per entry
        module_name, _, pname = e.fqn.rpartition(".")
        owner = modules.get(module_name)
        mask = owner._buffers.get(pname + "_mask") if owner is not None else None
        if isinstance(mask, torch.Tensor) and mask.shape == t.shape and mask is not t:
            by_tensor[id(mask)].append(e)
            tensors[id(mask)] = mask
    try:
        with torch.no_grad():
            for key, entries in by_tensor.items():
                t = tensors[key]
                new = t.data
                for e in entries:
                    idx = torch.from_numpy(e.kept_array()).to(new.device)
                    new = new.index_select(e.dim, idx)
                old_grad = t.grad if t.requires_grad else None
                snap.tensors.append((t, t.data, old_grad))
                t.data = new.contiguous()
                if t.requires_grad:
                    t.grad = None  # stale: the optimizer state must be rebuilt after pruning
        for a in plan.attributes:
            mod = modules[a.module] if a.module in modules else model.get_submodule(a.module)
            snap.attrs.append((mod, a.name, getattr(mod, a.name)))
            setattr(mod, a.name, a.new)
        if plan.layers:
            from prunekit.structured.blocks import BlockInfo, remove_blocks_undoable  # blocks imports us

            blocks = [
                BlockInfo(name=f"{r.container}.{i}" if r.container else str(i), container=r.container,
                          index=i, removable=True)
                for r in plan.layers for i in range(r.size) if i not in set(r.kept)
            ]  # fmt: skip
            _, undo = remove_blocks_undoable(model, blocks)
            snap.undo.append(undo)
    except Exception:
        snap.restore()
        raise
    return snap


def _as_plans(plan: Plan | Mapping[str, Any] | Iterable[Any]) -> list[Plan]:
    if isinstance(plan, Plan):
        return [plan]
    if isinstance(plan, Mapping):
        return [Plan.from_dict(plan)]
    return [p if isinstance(p, Plan) else Plan.from_dict(p) for p in plan]  # type: ignore[arg-type]


def record_plan(model: nn.Module, plan: Plan) -> None:
    """Append ``plan`` (as a dict) to ``model._prunekit_plan``."""
    plans = list(getattr(model, PLAN_ATTR, []))
    plans.append(plan.to_dict())
    object.__setattr__(model, PLAN_ATTR, plans)


def apply_plan(model: nn.Module, plan: Plan | Mapping[str, Any] | Iterable[Any]) -> nn.Module:
    """Re-apply a saved plan (or a list of plans, in order) to a freshly built unpruned model, in place.

    Used by ``pk.load`` before loading the pruned weights: it gives every tensor its pruned shape (the
    values are the kept slices of the fresh tensors) and sets the module attributes. All plans are applied
    or none: on failure the model is restored.

    Args:
        model: The unpruned model, built exactly as the one that was pruned (may be on ``meta``).
        plan: A plan dict, a :class:`Plan`, or a list of them (``model._prunekit_plan`` of the pruned model).

    Returns:
        ``model``.

    Raises:
        FormatError: the plan is malformed or of an unknown version.
        PlanError: the plan does not fit the model.

    Example:
        >>> import torch
        >>> m = torch.nn.Linear(4, 3)
        >>> p = {"version": 1, "entries": [{"fqn": "weight", "dim": 0, "size": 3, "kept": [0, 2]},
        ...      {"fqn": "bias", "dim": 0, "size": 3, "kept": [0, 2]}],
        ...      "attributes": [{"module": "", "name": "out_features", "old": 3, "new": 2}]}
        >>> apply_plan(m, p).weight.shape
        torch.Size([2, 4])
    """
    plans = _as_plans(plan)
    snaps: list[Snapshot] = []
    try:
        for p in plans:
            snaps.append(apply(model, p))
    except Exception:
        for s in reversed(snaps):
            s.restore()
        raise
    for p in plans:
        record_plan(model, p)
    return model


def compose_kept(plans: list[Plan]) -> dict[tuple[str, int], tuple[int, list[int]]]:
    """For each (tensor, dim): original size and the original indices kept after all ``plans``."""
    cur: dict[tuple[str, int], tuple[int, list[int]]] = {}
    for p in plans:
        for e in p.entries:
            key = (e.fqn, e.dim)
            if key in cur:
                size, kept = cur[key]
                cur[key] = (size, [kept[i] for i in e.kept])
            else:
                cur[key] = (e.size, list(e.kept))
    return cur


def masked_reference(original: nn.Module, plan: Plan | Mapping[str, Any] | Iterable[Any]) -> nn.Module:
    """The oracle: a deep copy of the UNPRUNED ``original`` with every removed slice set to zero.

    A correct physical prune computes exactly what this model computes (removed conv filters, their
    BatchNorm weight/bias/statistics, the next layer's input columns, whole attention heads... are zero).

    Args:
        original: The model before pruning (not modified).
        plan: The plan(s) applied, e.g. ``pruned._prunekit_plan``.

    Returns:
        A new model with the same shapes as ``original``.
    """
    ref = copy.deepcopy(original)
    for (fqn, dim), (size, kept) in compose_kept(_as_plans(plan)).items():
        t = get_tensor(ref, fqn)
        mask = torch.ones(size, dtype=torch.bool)
        mask[kept] = False
        with torch.no_grad():
            t.data.index_fill_(dim, torch.nonzero(mask).flatten().to(t.device), 0)
    return ref


__all__ = [
    "AttrUpdate",
    "LayerRemoval",
    "Plan",
    "PlanEntry",
    "Snapshot",
    "apply",
    "apply_plan",
    "masked_reference",
    "record_plan",
    "validate",
]
