"""Record one eager forward pass: every op, its arguments, shapes, producers and running module.

Why a ``TorchFunctionMode`` recorder and not ``torch.fx`` / ``torch.export`` / an autograd walk (see
the design notes in the README): it sees exactly the path eager PyTorch takes (including keyword
arguments such as SDPA's ``enable_gqa``), reaches frozen parameters and non-differentiable ops, costs
about one forward pass, and gives every op the module it ran in.

::

    model(*inputs) under Recorder
      ├── module pre/post hooks  -> module stack (which module runs each op)
      ├── TorchFunctionMode      -> Node(func, args, input values, output values, shapes)
      └── Function.apply wrapper -> one opaque Node per custom autograd Function

Values are versioned: an in-place op gives its output tensor a new value id, so a later reader sees the
producer that really wrote it. Parameters and buffers are values too, found by identity, so a tied
parameter is one value with several names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from prunekit.graph.rules.custom import module_node_kwargs, module_op_name, opaque_module_type

# Tensor-method names that return non-tensor metadata or that we never need to see.
_SKIP = frozenset(
    {
        "size",
        "dim",
        "numel",
        "stride",
        "is_contiguous",
        "data_ptr",
        "element_size",
        "item",
        "tolist",
        "__len__",
        "__bool__",
        "__format__",
        "__repr__",
        "__index__",
        "__int__",
        "__float__",
        "__hash__",
        "__eq__",
        "dim_order",
        "storage_offset",
        "untyped_storage",
        "has_names",
        "requires_grad_",
        "retain_grad",
        "register_hook",
        "__setstate__",
        "__reduce_ex__",
        "__deepcopy__",
    }
)


@dataclasses.dataclass
class Value:
    """One tensor version seen during the trace.

    Attributes:
        vid: Value id (index into ``Trace.values``).
        shape: Shape of the tensor.
        kind: ``"param"``, ``"buffer"``, ``"input"``, ``"op"`` (produced by a node) or ``"const"``
            (a tensor created outside the trace, e.g. a constant in the user's code).
        producer: Index of the producing node, or -1.
        names: For parameters and buffers, every fully qualified name (more than one when tied).
    """

    vid: int
    shape: tuple[int, ...]
    kind: str
    producer: int = -1
    names: tuple[str, ...] = ()


@dataclasses.dataclass
class Node:
    """One recorded call.

    Attributes:
        index: Position in ``Trace.nodes``.
        name: Short op name (``"conv2d"``, ``"view"``, ``"__getitem__"``, ``"autograd.Function:MyFn"``).
        func: The callable that was invoked.
        args: Positional arguments with every tensor replaced by ``TensorRef``.
        kwargs: Keyword arguments, tensors replaced the same way.
        inputs: Value ids of every tensor argument, in flattening order.
        outputs: Value ids of every tensor output, in flattening order.
        module: Fully qualified name of the innermost running module (``""`` for the root).
        inplace: Whether an output tensor was one of the input tensors.
    """

    index: int
    name: str
    func: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    inputs: list[int]
    outputs: list[int]
    module: str
    inplace: bool = False


@dataclasses.dataclass(frozen=True)
class TensorRef:
    """Placeholder for a tensor argument inside ``Node.args`` (``vid`` indexes ``Trace.values``)."""

    vid: int


@dataclasses.dataclass
class Trace:
    """Result of :func:`record`.

    Attributes:
        nodes: Recorded calls, in execution order.
        values: Every tensor version.
        param_values: Value id of each parameter/buffer, by canonical name.
        input_values: Value ids of the model inputs.
        output_values: Value ids of every tensor in the model output.
        modules_run: Names of modules whose ``forward`` ran.
        module_types: Class name of every module, by name.
    """

    nodes: list[Node]
    values: list[Value]
    param_values: dict[str, int]
    input_values: list[int]
    output_values: list[int]
    modules_run: set[str]
    module_types: dict[str, str]
    outputs: list[torch.Tensor] = dataclasses.field(default_factory=list)


def _op_name(func: Any) -> str:
    name = getattr(func, "__name__", None)
    if name is None:
        name = str(func)
    return str(name)


def flatten_tensors(obj: Any, out: list[torch.Tensor]) -> None:
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            flatten_tensors(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            flatten_tensors(o, out)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            flatten_tensors(getattr(obj, f.name), out)


Substitute = Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any]
_SCALARS = frozenset({int, float, bool, str, type(None), torch.dtype, torch.device})


class _Recorder(TorchFunctionMode):
    def __init__(self, model: nn.Module, substitute: dict[int, tuple[str, Substitute]] | None = None) -> None:
        super().__init__()
        self.substitute = substitute or {}
        self.nodes: list[Node] = []
        self.values: list[Value] = []
        # id(tensor) -> (weak reference, vid): a dead tensor's id may be reused, its entry then no longer
        # matches (the weak reference is dead or names another object); activations are never kept alive
        self.binding: dict[int, tuple[weakref.ref[torch.Tensor], int]] = {}
        self.keep: list[torch.Tensor] = []  # params/buffers are kept alive by the model anyway
        self.module_stack: list[str] = [""]
        self.module_names: dict[int, str] = {}
        self.modules_run: set[str] = set()
        self.opaque_depth = 0
        self.opaque_modules: list[tuple[nn.Module, Any]] = []  # calls of rule-registered module types
        self.param_values: dict[str, int] = {}
        seen: dict[int, int] = {}
        # the order of named_parameters / named_buffers(remove_duplicate=False), without their generators
        mods = list(model.named_modules(remove_duplicate=False))
        for kind, attr in (("param", "_parameters"), ("buffer", "_buffers")):
            for mname, mod in mods:
                for pname, t in getattr(mod, attr).items():
                    if t is None:
                        continue
                    name = f"{mname}.{pname}" if mname else pname
                    if id(t) in seen:
                        v = self.values[seen[id(t)]]
                        v.names = (*v.names, name)
                        continue
                    vid = self._new_value(t, kind)
                    self.values[vid].names = (name,)
                    seen[id(t)] = vid
                    self.param_values[name] = vid
        for name, m in mods:
            self.module_names.setdefault(id(m), name)

    # -- values -------------------------------------------------------------------------------
    def _new_value(self, t: torch.Tensor, kind: str, producer: int = -1) -> int:
        vid = len(self.values)
        self.values.append(Value(vid=vid, shape=tuple(t.shape), kind=kind, producer=producer))
        self.binding[id(t)] = (weakref.ref(t), vid)
        return vid

    def bound(self, t: torch.Tensor) -> int | None:
        """The value id of ``t`` if this trace has seen it."""
        ent = self.binding.get(id(t))
        return ent[1] if ent is not None and ent[0]() is t else None

    def value_of(self, t: torch.Tensor) -> int:
        vid = self.bound(t)
        if vid is None:
            vid = self._new_value(t, "const")
        return vid

    def _replace(self, obj: Any, inputs: list[int], tensors: list[torch.Tensor]) -> Any:
        """``obj`` with every tensor replaced by its :class:`TensorRef`; the value ids go to ``inputs``,
        and every tensor found (dataclass fields too, which stay as they are) to ``tensors``."""
        if type(obj) in _SCALARS:  # most arguments (strides, paddings, flags): nothing to look into
            return obj
        if isinstance(obj, torch.Tensor):
            vid = self.value_of(obj)
            inputs.append(vid)
            tensors.append(obj)
            return TensorRef(vid)
        if isinstance(obj, (list, tuple)):
            scalars = _SCALARS
            rep = [o if type(o) in scalars else self._replace(o, inputs, tensors) for o in obj]
            return tuple(rep) if isinstance(obj, tuple) else rep
        if isinstance(obj, dict):
            return {k: self._replace(v, inputs, tensors) for k, v in obj.items()}
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            flatten_tensors(obj, tensors)
        return obj

    # -- module stack ---------------------------------------------------------------------------
    def pre_hook(self, module: nn.Module, args: Any) -> None:
        name = self.module_names.get(id(module))
        if name is None:
            name = f"{self.module_stack[-1]}.<{type(module).__name__}>".lstrip(".")
        self.module_stack.append(name)
        self.modules_run.add(name)
        if not self.opaque_depth and opaque_module_type(module):
            self.opaque_modules.append((module, args))
            self.opaque_depth += 1

    def post_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.opaque_modules and self.opaque_modules[-1][0] is module:
            _, call_args = self.opaque_modules.pop()
            self.opaque_depth -= 1
            tensors, meta = module_node_kwargs(module)
            self.record(module_op_name(type(module)), module, (*call_args, *tensors), meta, output)
        if len(self.module_stack) > 1:
            self.module_stack.pop()

    # -- ops ------------------------------------------------------------------------------------
    def record(self, name: str, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        outs: list[torch.Tensor] = []
        flatten_tensors(out, outs)
        if not outs:
            return
        inputs: list[int] = []
        in_tensors: list[torch.Tensor] = []
        rargs = self._replace(args, inputs, in_tensors)
        rkwargs = self._replace(kwargs, inputs, in_tensors)
        index = len(self.nodes)
        inplace = any(o is t for o in outs for t in in_tensors)
        node = Node(index, name, func, rargs, rkwargs, inputs, [], self.module_stack[-1], inplace)
        self.nodes.append(node)
        for o in outs:
            base = o._base if o._base is not None else None
            node.outputs.append(self._new_value(o, "op", index))
            old = None if base is None or not inplace or base.numel() == o.numel() else self.bound(base)
            if base is not None and old is not None:
                # An in-place write into a partial view modifies its base: the base gets a new version
                # produced by a synthetic node that reads the old base and the written view.
                w = len(self.nodes)
                wnode = Node(w, "view_write", None, (), {}, [old, node.outputs[-1]], [], node.module, True)
                self.nodes.append(wnode)
                wnode.outputs.append(self._new_value(base, "op", w))

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        sub = self.substitute.get(len(self.nodes)) if self.substitute and not self.opaque_depth else None
        if sub is not None and sub[0] == _op_name(func):
            out = sub[1](func, args, kwargs)
        else:
            out = func(*args, **kwargs)
        if self.opaque_depth:
            return out
        name = _op_name(func)
        if name == "__get__":  # a property: Tensor.T, .mT, .data, .shape ...
            name = str(getattr(getattr(func, "__self__", None), "__name__", "__get__"))
            if not isinstance(out, torch.Tensor):
                return out
        if name in _SKIP:
            return out
        if name == "__setitem__" and args and isinstance(args[0], torch.Tensor):
            out = None
            self.record(name, func, args, kwargs, args[0])
            return out
        self.record(name, func, args, kwargs, out)
        return out


@contextlib.contextmanager
def _patched_function_apply(rec: _Recorder) -> Iterator[None]:
    """Make every custom ``torch.autograd.Function`` one opaque node (its inner ops are not recorded)."""
    original_attr = torch.autograd.Function.__dict__["apply"]  # the classmethod object itself
    original = torch.autograd.Function.apply

    def apply(cls: Any, *args: Any, **kwargs: Any) -> Any:
        if rec.opaque_depth:
            return original.__func__(cls, *args, **kwargs)  # type: ignore[attr-defined]
        rec.opaque_depth += 1
        try:
            out = original.__func__(cls, *args, **kwargs)  # type: ignore[attr-defined]
        finally:
            rec.opaque_depth -= 1
        rec.record(f"autograd.Function:{cls.__name__}", None, args, kwargs, out)
        return out

    torch.autograd.Function.apply = classmethod(apply)  # type: ignore[assignment, method-assign]
    try:
        yield
    finally:
        torch.autograd.Function.apply = original_attr  # type: ignore[method-assign]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` for the block, every module's ``training`` flag restored afterwards.

    A model already in eval mode whose modules keep ``nn.Module.train`` is left alone (no flag is set).
    """
    modes = [(m, m.training) for m in model.modules()]
    if any(t or type(m).train is not nn.Module.train for m, t in modes):
        model.eval()
    try:
        yield
    finally:
        for m, t in modes:
            if m.training != t:
                m.training = t


def as_args(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Split ``example_inputs`` (a tensor, a tuple/list of positional args, or a kwargs dict)."""
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def record(
    model: nn.Module, example_inputs: Any, substitute: dict[int, tuple[str, Substitute]] | None = None
) -> Trace:
    """Run ``model`` once on ``example_inputs`` in eval mode without gradients and record every op.

    The model is left exactly as it was (mode restored; eval mode keeps BatchNorm statistics unchanged).

    Args:
        model: Any ``nn.Module``.
        example_inputs: A tensor, a tuple/list of positional arguments, or a dict of keyword arguments.
        substitute: Node index -> (op name, function(func, args, kwargs)) computing that call instead
            (used to replay a trace with statistics over kept channels).

    Returns:
        The recorded :class:`Trace`.

    Example:
        >>> import torch
        >>> t = record(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU()), torch.randn(2, 3))
        >>> [n.name for n in t.nodes]
        ['linear', 'relu']
    """
    args, kwargs = as_args(example_inputs)
    rec = _Recorder(model, substitute)
    input_tensors: list[torch.Tensor] = []
    flatten_tensors((args, kwargs), input_tensors)
    input_values = [rec._new_value(t, "input") for t in input_tensors]
    h1 = nn.modules.module.register_module_forward_pre_hook(rec.pre_hook)
    h2 = nn.modules.module.register_module_forward_hook(rec.post_hook)
    try:
        with eval_mode(model), torch.no_grad(), _patched_function_apply(rec), rec:
            out = model(*args, **kwargs)
    finally:
        h1.remove()
        h2.remove()
    outs: list[torch.Tensor] = []
    flatten_tensors(out, outs)
    if hasattr(out, "to_tuple") and not outs:  # Hugging Face ModelOutput
        flatten_tensors(out.to_tuple(), outs)
    output_values = [rec.value_of(o) for o in outs]
    module_types = {name: type(m).__name__ for name, m in model.named_modules()}
    return Trace(
        nodes=rec.nodes,
        values=rec.values,
        param_values=rec.param_values,
        input_values=input_values,
        output_values=output_values,
        modules_run=rec.modules_run,
        module_types=module_types,
        outputs=outs,
    )


__all__ = ["Node", "Trace", "TensorRef", "Value", "as_args", "eval_mode", "record"]
