"""``accelerate``: turn the pruning a model carries into its fastest inference form, and prove it.

::

    masked model ──► one forward on example_inputs (hooks record each Linear's and Conv2d's input
                     shape, the outputs are the reference)
                 ──► per layer: time dense vs every candidate kernel on that shape, alternating
                     rounds, this thread count; keep the winner only if it beats dense by `margin`
                 ──► check each replaced layer against F.linear / F.conv2d(x, W * mask, b) on random inputs
                 ──► one forward with hooks: layers feeding another sparse layer (through GELU,
                     Dropout, ...) return transposed views (the next one reads x.T without a copy)
                 ──► check the whole model against the reference outputs; roll back on mismatch

Layers that are not plain ``nn.Linear`` / ``nn.Conv2d`` (subclasses, ``MultiheadAttention``'s projection,
tied weights, grouped or non-zero-padded convs) are left alone and listed in ``skipped``. Convs run
:class:`~prunekit.kernels.SparseConv2d` (dense / CSR on the im2col patches / CSR per kernel tap /
compact), always with contiguous outputs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal

import torch
from torch import nn

from prunekit.accel.choice import (
    AccelerateConfig,
    AccelerationError,
    InputKind,
    InputSource,
    LayerCase,
    Timer,
    choose_layer,
    close,
    conv_layers,
    linear_layers,
    linear_mask,
    plan_kernel,
)
from prunekit.core import hardware_info
from prunekit.errors import ConfigError
from prunekit.kernels import (
    AccelerationResult,
    LayerChoice,
    SparseConv2d,
    SparseLinear,
    attach_plan,
    fingerprint,
    interleaved_ms,
    num_threads,
)

logger = logging.getLogger(__name__)


def as_args(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def output_tensors(y: Any) -> list[torch.Tensor]:
    """The tensors of a model output (tensor, tuple, list, dict or Hugging Face ModelOutput)."""
    if isinstance(y, torch.Tensor):
        return [y]
    if isinstance(y, dict):
        return [t for v in y.values() for t in output_tensors(v)]
    if isinstance(y, (list, tuple)):
        return [t for v in y for t in output_tensors(v)]
    return []


def record_input_shapes(model: nn.Module, layers: list[tuple[str, nn.Module]], example_inputs: Any
                        ) -> tuple[dict[str, tuple[int, ...]], list[torch.Tensor]]:  # fmt: skip
    """One eval no-grad forward: each layer's first input shape, and the model's output tensors."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in layers:

        def hook(mod: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            if name not in shapes and args and isinstance(args[0], torch.Tensor):
                shapes[name] = tuple(args[0].shape)

        handles.append(module.register_forward_pre_hook(hook))
    pos, kw = as_args(example_inputs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(*pos, **kw)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return shapes, [t.detach().clone() for t in output_tensors(out)]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``name`` in ``model``; return the module that was there."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old: nn.Module = getattr(parent, child)
    setattr(parent, child, new)
    return old


def view_feeders(model: nn.Module, example_inputs: Any, sparse: Mapping[str, nn.Module]) -> set[str]:
    """The sparse layers whose output reaches another sparse layer through parameter-free, shape-keeping
    modules only (``GELU``, ``Dropout``, ...): these keep the transposed view (the next layer reads
    it without a copy); every other output is made contiguous (attention's fused kernel and views
    that merge dimensions want it, and a copy costs the same wherever it happens).
    """
    return view_links(model, example_inputs, sparse)[0]


def view_links(
    model: nn.Module, example_inputs: Any, sparse: Mapping[str, nn.Module]
) -> tuple[set[str], set[str]]:
    """``(feeders, receivers)``: the layers of ``sparse`` (name -> module) whose output reaches another one
    through parameter-free, shape-keeping modules only (:func:`view_feeders`), and the layers so reached
    (they read a transposed view: no input copy). See :func:`input_links`."""
    feeders, receivers, _ = input_links(model, example_inputs, sparse)
    return feeders, receivers


def input_links(
    model: nn.Module, example_inputs: Any, sparse: Mapping[str, nn.Module]
) -> tuple[set[str], set[str], set[str]]:
    """``(feeders, receivers, sharers)`` of the layers of ``sparse`` (name -> module): feeders and receivers
    as in :func:`view_links`; sharers read the very tensor an earlier one of them read (attention's k and v
    after q: one ``x.T`` copy serves them all). See :func:`traced_sources`."""
    sources = traced_sources(model, example_inputs, sparse)
    feeders = {f for src in sources.values() for f in src.feeders}
    return (
        feeders,
        {n for n, src in sources.items() if src.feeders},
        {n for n, src in sources.items() if src.readers},
    )


def traced_sources(
    model: nn.Module, example_inputs: Any, layers: Mapping[str, nn.Module]
) -> dict[str, InputSource]:
    """The :class:`InputSource` of each of ``layers`` (name -> module) called in one forward with hooks:
    which of them feed its input through parameter-free, shape-keeping modules, and which read the same
    tensor before it. Tensors are told apart by ``id``, kept alive until the end (so no id is reused)."""
    producers: dict[int, frozenset[str]] = {}  # id(tensor) -> layers it derives from
    readers: dict[int, list[str]] = {}  # id(tensor) -> the layers that read it so far
    alive: list[torch.Tensor] = []
    sources: dict[str, InputSource] = {}
    names = {id(m): n for n, m in layers.items()}
    handles = []

    def pre(mod: nn.Module, args: tuple[Any, ...]) -> None:
        if id(mod) in names and args and isinstance(args[0], torch.Tensor):
            x, name = args[0], names[id(mod)]
            earlier = readers.setdefault(id(x), [])
            sources.setdefault(name, InputSource(producers.get(id(x), frozenset()), frozenset(earlier)))
            earlier.append(name)
            alive.append(x)

    def post(mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if not isinstance(out, torch.Tensor):
            return
        if id(mod) in names:
            producers[id(out)] = frozenset((names[id(mod)],))
            alive.append(out)
        elif (len(args) == 1 and isinstance(args[0], torch.Tensor) and id(args[0]) in producers
              and args[0].shape == out.shape and next(mod.parameters(recurse=False), None) is None
              and not list(mod.children())):  # fmt: skip
            producers[id(out)] = producers[id(args[0])]
            alive.append(out)

    for m in model.modules():
        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    pos, kw = as_args(example_inputs)
    try:
        model(*pos, **kw)
    finally:
        for h in handles:
            h.remove()
    return sources


def input_sources(model: nn.Module, example_inputs: Any, linears: Sequence[tuple[str, nn.Module]]
                  ) -> dict[str, InputSource]:  # fmt: skip
    """The :class:`InputSource` of each pruned Linear of ``linears`` among the pruned ones (what it will read
    depends on which of them go sparse: :meth:`InputSource.kind`). One eval, no-grad forward."""
    pruned = {n: m for n, m in linears if isinstance(m, nn.Linear) and not bool(linear_mask(m).all())}
    if not pruned:
        return {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return traced_sources(model, example_inputs, pruned)
    finally:
        model.train(was_training)


def input_kind(name: str, sources: Mapping[str, InputSource], swaps: Mapping[str, tuple[nn.Module, nn.Module]],
               transposed_outputs: bool = True) -> InputKind:  # fmt: skip
    """What ``name``'s input will be given the layers swapped so far (:func:`choose_layer`'s ``input_kind``):
    a view only where its feeders run a sparse kernel (and outputs may be views), a shared ``x.T`` only
    where an earlier reader of the same tensor made that copy."""
    src = sources.get(name)
    if src is None:
        return "fresh"
    sparse = {n for n, (_, new) in swaps.items() if isinstance(new, SparseLinear) and new.inner != "dense"}
    copying = {n for n in sparse if getattr(swaps[n][1], "col_index", None) is None}
    return src.kind(sparse if transposed_outputs else (), copying)


def end_to_end_ms(model: nn.Module, example_inputs: Any, swaps: Mapping[str, tuple[nn.Module, nn.Module]],
                  rounds: int) -> tuple[float, float]:  # fmt: skip
    """Median latency of the model with the original modules and with the new ones, alternating."""
    pos, kw = as_args(example_inputs)

    def run(use_new: bool) -> Callable[[], object]:
        def fn() -> object:
            for name, (old, new) in swaps.items():
                replace_module(model, name, new if use_new else old)
            return model(*pos, **kw)

        return fn

    ms = interleaved_ms({"before": run(False), "after": run(True)}, rounds=rounds, warmup=1, target_s=0.0)
    for name, (_, new) in swaps.items():
        replace_module(model, name, new)
    return ms["before"], ms["after"]


def accelerate(
    model: nn.Module,
    example_inputs: Any,
    target: Literal["cpu"] = "cpu",
    *,
    margin: float = 1.1,
    threads: int | None = None,
    kernels: tuple[str, ...] | None = None,
    measure_model: bool = True,
    config: AccelerateConfig | None = None,
    timer: Timer | None = None,
) -> AccelerationResult:
    """Replace pruned ``nn.Linear`` and ``nn.Conv2d`` layers by their fastest measured kernel, in place;
    return the choices.

    Each Linear and Conv2d layer (groups 1, zero padding) is timed on its real input shape (recorded on ``example_inputs``), at this
    thread count, with dense and every sparse candidate (CSR, block-sparse where tiles are full,
    and both after removing whole zero rows/columns). A layer changes only if the winner beats
    dense by ``margin``; outputs are then checked against the masked model and everything is rolled
    back if they differ. The accelerated model is for inference and is left in ``eval()`` mode
    (in train mode its :class:`SparseLinear` / :class:`SparseConv2d` layers raise); use :func:`deaccelerate`
    to train again. Conv kernels: dense, CSR on the im2col patches (a 1x1 stride-1 conv multiplies
    the input as it is), both also after dropping whole zero channels.

    Args:
        model: a model pruned with prunekit masks (or with baked zeros); changed in place.
        example_inputs: a tensor, tuple of positional inputs or dict of keyword inputs with the
            batch size and sequence length you will run (timings depend on them).
        target: ``"cpu"``.
        margin: minimum dense/kernel speed ratio to switch a layer.
        threads: threads to measure with (default: the current ``torch.get_num_threads()``).
        kernels: restrict candidates (e.g. ``("csr",)``); dense is always a candidate.
        measure_model: time the whole model before and after (adds a few seconds).
        config: an :class:`AccelerateConfig` instead of the keyword arguments.
        timer: ``timer(case, fns) -> {kernel: ms}`` to replace the measurement (tests, or a
            kernel table).

    Returns:
        An :class:`AccelerationResult`; its ``to_dict()`` is the plan saved by :func:`prunekit.accel.save`.

    Raises:
        AccelerationError: the accelerated model's outputs differ from the masked model's (the
            model is restored first).
        ConfigError: bad arguments.

    Example:
        >>> import torch, prunekit as pk
        >>> from prunekit.accel import accelerate
        >>> model = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.ReLU(), torch.nn.Linear(512, 8))
        >>> _ = pk.prune_weights(model, 0.95, scope="layer")
        >>> result = accelerate(model, torch.randn(1, 512), measure_model=False)
        >>> [c.kernel in ("dense", "csr", "compact+csr", "compact+dense") for c in result.layers]
        [True, True]
    """
    if config is None:
        config = AccelerateConfig(target=target, margin=margin, threads=threads, kernels=kernels,
                                  measure_model=measure_model)  # fmt: skip
    elif not isinstance(config, AccelerateConfig):
        raise ConfigError(f"config must be an AccelerateConfig, got {type(config).__name__}")
    with num_threads(config.threads) as used_threads:
        return run_accelerate(model, example_inputs, config, timer, used_threads)


def run_accelerate(model: nn.Module, example_inputs: Any, cfg: AccelerateConfig, timer: Timer | None,
                   threads: int) -> AccelerationResult:  # fmt: skip
    linears, skipped = linear_layers(model)
    convs, conv_skipped = conv_layers(model)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    layers: list[tuple[str, nn.Module]] = sorted([*linears, *convs], key=lambda nm: order[nm[0]])
    skipped = sorted([*skipped, *conv_skipped], key=lambda nr: order.get(nr[0], 0))
    shapes, reference = record_input_shapes(model, layers, example_inputs)
    sources = input_sources(model, example_inputs, linears)
    choices: list[LayerChoice] = []
    swaps: dict[str, tuple[nn.Module, nn.Module]] = {}
    for name, module in layers:
        if name not in shapes:
            skipped.append((name, "not called on example_inputs"))
            continue
        assert isinstance(module, (nn.Linear, nn.Conv2d))
        kind = input_kind(name, sources, swaps, cfg.transposed_outputs)  # given the layers chosen before it
        choice, fast = choose_layer(name, module, shapes[name], cfg, timer, kind)
        choices.append(choice)
        if fast is not None:
            swaps[name] = (module, fast)
    for name, (_, new) in swaps.items():
        replace_module(model, name, new)
    pos, kw = as_args(example_inputs)
    was_training = model.training
    worst = 0.0
    sparse = {
        n: new for n, (_, new) in swaps.items() if isinstance(new, SparseLinear) and new.inner != "dense"
    }
    try:
        model.eval()
        with torch.no_grad():
            views = view_feeders(model, example_inputs, sparse) if cfg.transposed_outputs else set()
            for n in views:
                sparse[n].transposed_output = True
            try:
                outs = output_tensors(model(*pos, **kw))
            except RuntimeError:
                if not views:
                    raise
                for n in views:  # the view broke something after all (e.g. a .view merging dims)
                    sparse[n].transposed_output = False
                outs = output_tensors(model(*pos, **kw))
        if len(outs) != len(reference):
            raise AccelerationError(f"the accelerated model returns {len(outs)} tensors, the masked model "
                                    f"{len(reference)}; rolled back")  # fmt: skip
        for got, want in zip(outs, reference, strict=True):
            ok, err = close(got, want, cfg.rtol, cfg.atol)
            worst = max(worst, err)
            if not ok:
                raise AccelerationError(
                    f"the accelerated model's output differs from the masked model's by {err:.3g} "
                    f"(rtol={cfg.rtol}, atol={cfg.atol}); the model was rolled back. Raise rtol/atol in "
                    "AccelerateConfig if this is float rounding, or report the model"
                )
        choices = [replace(c, transposed_output=sparse[c.name].transposed_output) if c.name in sparse else c
                   for c in choices]  # fmt: skip
        dense_ms = acc_ms = None
        if cfg.measure_model and swaps and timer is None:
            with torch.no_grad():
                dense_ms, acc_ms = end_to_end_ms(model, example_inputs, swaps, max(5, cfg.rounds // 2))
    except BaseException:
        _put_back(model, swaps)
        model.train(was_training)
        raise
    if dense_ms is not None and acc_ms is not None and acc_ms > dense_ms:
        # each layer won alone, the model as a whole did not (caches, memory traffic): keep it as it was
        _put_back(model, swaps)
        why = (f"the whole model ran slower with its {len(swaps)} sparse layers ({acc_ms:.3g} ms against "
               f"{dense_ms:.3g} ms dense), so every layer was kept dense")  # fmt: skip
        choices = [replace(c, kernel="dense", reason=why, transposed_output=False) if c.name in swaps else c
                   for c in choices]  # fmt: skip
        logger.info("accelerate: %s", why)  # the reason is in each layer's choice; no warning: timing noise
        acc_ms = dense_ms
    info = hardware_info(threads)
    result = AccelerationResult(layers=tuple(choices), skipped=tuple(skipped), hardware=info,
                                fingerprint=fingerprint(info), dense_ms=dense_ms, accelerated_ms=acc_ms,
                                max_abs_error=worst)  # fmt: skip
    attach_plan(model, result)
    return result


def _put_back(model: nn.Module, swaps: Mapping[str, tuple[nn.Module, nn.Module]]) -> None:
    """The original module at every name of ``swaps`` (name -> (original, replacement))."""
    for name, (old, _) in swaps.items():
        replace_module(model, name, old)


def apply_choices(
    model: nn.Module, plan: AccelerationResult, *, rtol: float = 1e-4, atol: float = 1e-5
) -> int:
    """Install the kernels of a plan without timing (same machine); return how many layers changed.

    Raises:
        AccelerationError: a layer of the plan is missing, or a kernel's output differs (nothing is
            changed then).
    """
    staged: dict[str, tuple[nn.Module, nn.Module]] = {}
    for choice in plan.layers:
        if choice.kernel == "dense":
            continue
        try:
            module = model.get_submodule(choice.name)
        except AttributeError as e:
            raise AccelerationError(f"plan names {choice.name!r}, which is not in {type(model).__name__}; "
                                    "re-run accelerate() on this model") from e  # fmt: skip
        fast = plan_kernel(choice, module, rtol, atol)
        staged[choice.name] = (module, fast)
    for name, (_, new) in staged.items():
        replace_module(model, name, new)
    return len(staged)


def sparse_linears(model: nn.Module) -> Iterator[tuple[str, SparseLinear]]:
    for name, module in model.named_modules():
        if isinstance(module, SparseLinear):
            yield name, module


def sparse_layers(model: nn.Module) -> Iterator[tuple[str, SparseLinear | SparseConv2d]]:
    """Every :class:`SparseLinear` and :class:`SparseConv2d` of ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, (SparseLinear, SparseConv2d)):
            yield name, module


def masked_form(module: SparseLinear | SparseConv2d) -> nn.Module:
    """The masked ``nn.Linear`` / ``nn.Conv2d`` an accelerated layer came from."""
    return module.to_linear() if isinstance(module, SparseLinear) else module.to_conv()


def deaccelerate(model: nn.Module) -> int:
    """Put masked ``nn.Linear`` / ``nn.Conv2d`` layers back in place of every :class:`SparseLinear` /
    :class:`SparseConv2d`; return how many.

    The function, weights and masks are those the model had before :func:`accelerate`, so it
    trains (and saves with :func:`prunekit.save`) again.
    """
    found = list(sparse_layers(model))
    for name, module in found:
        replace_module(model, name, masked_form(module))
    return len(found)


__all__ = [
    "AccelerateConfig",
    "AccelerationError",
    "LayerCase",
    "Timer",
    "accelerate",
    "apply_choices",
    "choose_layer",
    "input_kind",
    "input_links",
    "input_sources",
    "traced_sources",
    "close",
    "conv_layers",
    "deaccelerate",
    "linear_layers",
    "linear_mask",
    "masked_form",
    "output_tensors",
    "sparse_layers",
    "sparse_linears",
]
