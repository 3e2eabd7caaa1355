"""``accelerate``: turn the pruning a model carries into its fastest inference form, and prove it.

::

    masked model ──► one forward on example_inputs (hooks record each Linear's input shape,
                     the outputs are the reference)
                 ──► per Linear: time dense vs every candidate kernel on that shape, alternating
                     rounds, this thread count; keep the winner only if it beats dense by `margin`
                 ──► check each replaced layer against F.linear(x, W * mask, b) on random inputs
                 ──► one forward with hooks: layers feeding another sparse layer (through GELU,
                     Dropout, ...) return transposed views (the next one reads x.T without a copy)
                 ──► check the whole model against the reference outputs; roll back on mismatch

Layers that are not plain ``nn.Linear`` (subclasses, ``MultiheadAttention``'s projection, tied
weights) are left alone and listed in ``skipped``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.core import get_mask, hardware_info
from prunekit.errors import ConfigError, PrunekitError
from prunekit.kernels import (
    AccelerationResult,
    LayerChoice,
    SparseLinear,
    attach_plan,
    candidate_kernels,
    fingerprint,
    interleaved_ms,
    num_threads,
    parse_kernel,
)


class AccelerationError(PrunekitError, RuntimeError):
    """The accelerated model does not compute what the masked model computes (it was rolled back)."""


@dataclass(frozen=True, kw_only=True)
class AccelerateConfig:
    """How :func:`accelerate` chooses kernels.

    Attributes:
        target: only ``"cpu"`` for now.
        margin: a kernel replaces dense only if ``dense_ms / kernel_ms >= margin`` (timing noise
            must not make a layer slower).
        rounds: alternating timing rounds per layer.
        threads: intra-op threads to measure (and run) with; ``None`` = ``torch.get_num_threads()``.
        kernels: restrict the candidates to these names (``None`` = all that fit the mask).
        min_weights: layers with fewer weights stay dense without timing (overhead dominates).
        rtol: relative tolerance of the output checks.
        atol: absolute tolerance of the output checks, relative to the output's largest magnitude.
        measure_model: also time the whole model before and after (alternating).
        screen: after 3 rounds, kernels slower than ``screen`` x the fastest one stop being timed
            (most of the search time goes to clear losers); ``None``: time all for every round.
        transposed_outputs: let a sparse layer return its output as a transposed view where it
            feeds another sparse layer (through GELU, Dropout, ...), saving two copies; see
            :func:`view_feeders`. ``False``: every output contiguous.
    """

    target: Literal["cpu"] = "cpu"
    margin: float = 1.1
    rounds: int = 15
    threads: int | None = None
    kernels: tuple[str, ...] | None = None
    min_weights: int = 4096
    rtol: float = 1e-4
    atol: float = 1e-5
    measure_model: bool = True
    screen: float | None = 1.5
    transposed_outputs: bool = True

    def __post_init__(self) -> None:
        if self.target != "cpu":
            raise ConfigError(f"target must be 'cpu' (the only measured target so far), got {self.target!r}")
        if not isinstance(self.margin, (int, float)) or not self.margin >= 1.0:
            raise ConfigError(f"margin must be a float >= 1.0 (e.g. 1.1 = 10% faster), got {self.margin!r}")
        if not isinstance(self.rounds, int) or self.rounds < 1:
            raise ConfigError(f"rounds must be a positive int, got {self.rounds!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"threads must be None or a positive int, got {self.threads!r}")
        for k in self.kernels or ():
            parse_kernel(k)
        if self.screen is not None and not (isinstance(self.screen, (int, float)) and self.screen >= 1.0):
            raise ConfigError(f"screen must be None or a time ratio >= 1.0 (e.g. 1.5), got {self.screen!r}")
        if self.rtol < 0 or self.atol < 0:
            raise ConfigError(f"rtol and atol must be >= 0, got {self.rtol}, {self.atol}")


@dataclass(frozen=True)
class LayerCase:
    """What a timer is asked: time these kernels for this layer (``tokens`` rows of input)."""

    name: str
    shape: tuple[int, int]
    tokens: int
    sparsity: float
    kernels: tuple[str, ...]


Timer = Callable[[LayerCase, Mapping[str, Callable[[], object]]], Mapping[str, float]]
"""``timer(case, fns) -> {kernel: ms}``; ``fns`` runs each kernel once (a stub may ignore it)."""


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


def linear_mask(module: nn.Linear) -> torch.Tensor:
    """The layer's prunekit mask, or (for baked models) ``weight != 0``."""
    mask = get_mask(module, "weight")
    return mask if mask is not None else module.weight.detach() != 0


def linear_layers(model: nn.Module) -> tuple[list[tuple[str, nn.Linear]], list[tuple[str, str]]]:
    """Plain ``nn.Linear`` layers that can be replaced, and ``(name, reason)`` of those that cannot."""
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    ok: list[tuple[str, nn.Linear]] = []
    skipped: list[tuple[str, str]] = []
    parents = {name: m for name, m in model.named_modules()}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        parent = parents.get(name.rpartition(".")[0])
        if isinstance(parent, nn.MultiheadAttention):
            skipped.append((name, "MultiheadAttention reads this projection's weight directly"))
        elif type(module) is not nn.Linear:
            skipped.append((name, f"{type(module).__name__} is a Linear subclass (its forward may differ)"))
        elif counts.get(id(module.weight), 0) > 1:
            skipped.append((name, "weight is tied to another module"))
        elif module.weight.dtype not in (torch.float32, torch.float64) or module.weight.device.type != "cpu":
            skipped.append((name, f"{module.weight.dtype} on {module.weight.device}: only float CPU weights"))
        else:
            ok.append((name, module))
    return ok, skipped


def record_input_shapes(model: nn.Module, layers: list[tuple[str, nn.Linear]], example_inputs: Any
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


def close(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> tuple[bool, float]:
    """Outputs equal to float tolerance (``atol`` scaled by the reference's largest magnitude)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False, math.inf
    if not torch.is_floating_point(b):
        return bool(torch.equal(a, b)), 0.0 if torch.equal(a, b) else math.inf
    err = float((a - b).abs().max()) if a.numel() else 0.0
    scale = float(b.abs().max()) if b.numel() else 0.0
    ok = bool(torch.allclose(a, b, rtol=rtol, atol=atol * max(1.0, scale), equal_nan=True))
    return ok, err


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``name`` in ``model``; return the module that was there."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old: nn.Module = getattr(parent, child)
    setattr(parent, child, new)
    return old


def choose_layer(name: str, module: nn.Linear, in_shape: tuple[int, ...], cfg: AccelerateConfig,
                 timer: Timer | None) -> tuple[LayerChoice, SparseLinear | None]:  # fmt: skip
    """Time the candidates of one layer; return the choice and the module to install (``None``: dense)."""
    mask = linear_mask(module)
    out_f, in_f = module.out_features, module.in_features
    tokens = math.prod(in_shape[:-1]) if len(in_shape) > 1 else 1
    nnz = int(mask.sum())
    sparsity = 1.0 - nnz / mask.numel() if mask.numel() else 0.0

    def made(kernel: str, reason: str, timings: dict[str, float] | None = None) -> LayerChoice:
        return LayerChoice(name=name, kernel=kernel, shape=(out_f, in_f), tokens=int(tokens), sparsity=sparsity,
                           timings_ms=timings or {}, reason=reason)  # fmt: skip

    if nnz == mask.numel():
        return made("dense", "no pruned weights"), None
    if mask.numel() < cfg.min_weights and timer is None:
        return made("dense", f"fewer than {cfg.min_weights} weights"), None
    names = [k for k in candidate_kernels(mask) if cfg.kernels is None or k in cfg.kernels or k == "dense"]
    weight, bias = module.weight.detach(), None if module.bias is None else module.bias.detach()
    masked = torch.where(mask, weight, weight.new_zeros(()))
    modules = {k: SparseLinear(weight, bias, mask, kernel=k).eval() for k in names if k != "dense"}
    x = torch.randn(int(tokens), in_f, dtype=weight.dtype, generator=torch.Generator().manual_seed(0))
    fns: dict[str, Callable[[], object]] = {"dense": lambda: F.linear(x, masked, bias)}
    for k, m in modules.items():
        fns[k] = lambda m=m: m(x)  # type: ignore[misc]
    case = LayerCase(name, (out_f, in_f), int(tokens), sparsity, tuple(fns))
    if timer is not None:
        timings = {k: float(v) for k, v in timer(case, fns).items() if k in fns}
    else:
        timings = interleaved_ms(fns, rounds=cfg.rounds, screen=cfg.screen, keep=("dense",))
    if "dense" not in timings:
        raise ConfigError(
            f"timer returned no 'dense' time for {name!r}; it must time every kernel in case.kernels"
        )
    best = min(timings, key=lambda k: timings[k])
    gain = timings["dense"] / timings[best] if timings[best] > 0 else math.inf
    if best == "dense" or gain < cfg.margin:
        why = "dense is fastest" if best == "dense" else f"{best} only {gain:.2f}x (< margin {cfg.margin})"
        return made("dense", why, timings), None
    chosen = modules[best]
    with torch.no_grad():
        ref = F.linear(x, masked, bias)
        ok, err = close(chosen(x), ref, cfg.rtol, cfg.atol)
    if not ok:
        return made("dense", f"{best} output differs by {err:.3g}; kept dense", timings), None  # fmt: skip
    return made(best, f"{best} {gain:.2f}x faster", timings), chosen


def view_feeders(model: nn.Module, example_inputs: Any, sparse: Mapping[str, SparseLinear]) -> set[str]:
    """The sparse layers whose output reaches another sparse layer through parameter-free, shape-keeping
    modules only (``GELU``, ``Dropout``, ...): these keep the transposed view (the next layer reads
    it without a copy); every other output is made contiguous (attention's fused kernel and views
    that merge dimensions want it, and a copy costs the same wherever it happens).

    One forward with hooks; outputs are told apart by ``id``, kept alive until the end (so no id is reused).
    """
    producers: dict[int, set[str]] = {}  # id(tensor) -> sparse layers it derives from
    alive: list[torch.Tensor] = []
    feeders: set[str] = set()
    names = {id(m): n for n, m in sparse.items()}
    handles = []

    def pre(mod: nn.Module, args: tuple[Any, ...]) -> None:
        if id(mod) in names and args and isinstance(args[0], torch.Tensor):
            feeders.update(producers.get(id(args[0]), ()))

    def post(mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if not isinstance(out, torch.Tensor):
            return
        if id(mod) in names:
            producers[id(out)] = {names[id(mod)]}
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
    return feeders


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
    """Replace pruned ``nn.Linear`` layers by their fastest measured kernel, in place; return the choices.

    Each Linear layer is timed on its real input shape (recorded on ``example_inputs``), at this
    thread count, with dense and every sparse candidate (CSR, block-sparse where tiles are full,
    and both after removing whole zero rows/columns). A layer changes only if the winner beats
    dense by ``margin``; outputs are then checked against the masked model and everything is rolled
    back if they differ. The accelerated model is for inference and is left in ``eval()`` mode
    (in train mode its :class:`SparseLinear` layers raise); use :func:`deaccelerate` to train again.

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
    layers, skipped = linear_layers(model)
    shapes, reference = record_input_shapes(model, layers, example_inputs)
    choices: list[LayerChoice] = []
    swaps: dict[str, tuple[nn.Module, nn.Module]] = {}
    for name, module in layers:
        if name not in shapes:
            skipped.append((name, "not called on example_inputs"))
            continue
        choice, fast = choose_layer(name, module, shapes[name], cfg, timer)
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
        for name, (old, _) in swaps.items():
            replace_module(model, name, old)
        model.train(was_training)
        raise
    info = hardware_info(threads)
    result = AccelerationResult(layers=tuple(choices), skipped=tuple(skipped), hardware=info,
                                fingerprint=fingerprint(info), dense_ms=dense_ms, accelerated_ms=acc_ms,
                                max_abs_error=worst)  # fmt: skip
    attach_plan(model, result)
    return result


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
        if type(module) is not nn.Linear or (module.out_features, module.in_features) != choice.shape:
            raise AccelerationError(f"plan expects {choice.name!r} to be a Linear {choice.shape}, found "
                                    f"{type(module).__name__}; re-run accelerate() on this model")  # fmt: skip
        mask = linear_mask(module)
        w, b = module.weight.detach(), None if module.bias is None else module.bias.detach()
        fast = SparseLinear(w, b, mask, kernel=choice.kernel).eval()
        fast.transposed_output = choice.transposed_output
        x = torch.randn(min(choice.tokens, 64), module.in_features, dtype=w.dtype)
        with torch.no_grad():
            ok, err = close(fast(x), F.linear(x, torch.where(mask, w, w.new_zeros(())), b), rtol, atol)
        if not ok:
            raise AccelerationError(
                f"kernel {choice.kernel!r} of {choice.name!r} differs by {err:.3g}; nothing changed"
            )
        staged[choice.name] = (module, fast)
    for name, (_, new) in staged.items():
        replace_module(model, name, new)
    return len(staged)


def sparse_linears(model: nn.Module) -> Iterator[tuple[str, SparseLinear]]:
    for name, module in model.named_modules():
        if isinstance(module, SparseLinear):
            yield name, module


def deaccelerate(model: nn.Module) -> int:
    """Put masked ``nn.Linear`` layers back in place of every :class:`SparseLinear`; return how many.

    The function, weights and masks are those the model had before :func:`accelerate`, so it
    trains (and saves with :func:`prunekit.save`) again.
    """
    found = list(sparse_linears(model))
    for name, module in found:
        replace_module(model, name, module.to_linear())
    return len(found)


__all__ = [
    "AccelerateConfig",
    "AccelerationError",
    "LayerCase",
    "Timer",
    "accelerate",
    "apply_choices",
    "deaccelerate",
    "linear_layers",
    "linear_mask",
    "output_tensors",
    "sparse_linears",
]
