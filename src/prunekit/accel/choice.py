"""Which layers ``accelerate`` may replace, and which kernel each one gets (measured, checked).

Per layer: the candidates (:func:`~prunekit.kernels.candidate_kernels` for Linear,
:func:`~prunekit.kernels.conv_candidate_kernels` for Conv2d) are timed on an input of the layer's
recorded shape (or a stub ``timer`` says how fast they are), the fastest replaces dense only if it
wins by ``margin``, and its output is checked against the masked layer (``F.linear`` /
``F.conv2d`` with ``W * mask``). :func:`plan_kernel` rebuilds a saved choice without timing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.core import get_mask
from prunekit.errors import ConfigError, PrunekitError
from prunekit.kernels import (
    LayerChoice,
    SparseConv2d,
    SparseLinear,
    candidate_kernels,
    conv_candidate_kernels,
    fresh_inputs,
    interleaved_ms,
    parse_conv_kernel,
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
        kernels: restrict the candidates to these names (``None`` = all that fit the mask), Linear and
            conv names alike (e.g. ``("csr", "taps")``; a layer keeps only the names it has).
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
            try:
                parse_conv_kernel(k)
            except ConfigError:
                parse_kernel(k)  # neither a conv nor a linear kernel: raises
        if self.screen is not None and not (isinstance(self.screen, (int, float)) and self.screen >= 1.0):
            raise ConfigError(f"screen must be None or a time ratio >= 1.0 (e.g. 1.5), got {self.screen!r}")
        if self.rtol < 0 or self.atol < 0:
            raise ConfigError(f"rtol and atol must be >= 0, got {self.rtol}, {self.atol}")


@dataclass(frozen=True)
class LayerCase:
    """What a timer is asked: time these kernels for this layer (``tokens`` rows of input; a conv:
    ``shape`` is its weight as an ``(out, in * kh * kw)`` matrix, ``tokens`` its output positions)."""

    name: str
    shape: tuple[int, int]
    tokens: int
    sparsity: float
    kernels: tuple[str, ...]
    kind: str = "linear"


Timer = Callable[[LayerCase, Mapping[str, Callable[[], object]]], Mapping[str, float]]
"""``timer(case, fns) -> {kernel: ms}``; ``fns`` runs each kernel once (a stub may ignore it)."""


def linear_mask(module: nn.Linear | nn.Conv2d) -> torch.Tensor:
    """The layer's prunekit mask, or (for baked models) ``weight != 0``."""
    mask = get_mask(module, "weight")
    return mask if mask is not None else module.weight.detach() != 0


def _use_counts(model: nn.Module) -> dict[int, int]:
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    return counts


def _weight_problem(module: nn.Linear | nn.Conv2d, counts: Mapping[int, int]) -> str | None:
    """Why a layer's weight cannot be replaced (tied, not float on CPU), or ``None``."""
    if counts.get(id(module.weight), 0) > 1:
        return "weight is tied to another module"
    if module.weight.dtype not in (torch.float32, torch.float64) or module.weight.device.type != "cpu":
        return f"{module.weight.dtype} on {module.weight.device}: only float CPU weights"
    return None


L = TypeVar("L", nn.Linear, nn.Conv2d)


def _replaceable(model: nn.Module, cls: type[L], why_not: Callable[[str, L], str | None]
                 ) -> tuple[list[tuple[str, L]], list[tuple[str, str]]]:  # fmt: skip
    counts = _use_counts(model)
    ok: list[tuple[str, L]] = []
    skipped: list[tuple[str, str]] = []
    for name, module in model.named_modules():
        if isinstance(module, cls):
            why = why_not(name, module) or _weight_problem(module, counts)
            if why is None:
                ok.append((name, module))
            else:
                skipped.append((name, why))
    return ok, skipped


def linear_layers(model: nn.Module) -> tuple[list[tuple[str, nn.Linear]], list[tuple[str, str]]]:
    """Plain ``nn.Linear`` layers that can be replaced, and ``(name, reason)`` of those that cannot."""
    parents = dict(model.named_modules())

    def why_not(name: str, module: nn.Linear) -> str | None:
        if isinstance(parents.get(name.rpartition(".")[0]), nn.MultiheadAttention):
            return "MultiheadAttention reads this projection's weight directly"
        if type(module) is not nn.Linear:
            return f"{type(module).__name__} is a Linear subclass (its forward may differ)"
        return None

    return _replaceable(model, nn.Linear, why_not)


def conv_layers(model: nn.Module) -> tuple[list[tuple[str, nn.Conv2d]], list[tuple[str, str]]]:
    """Plain ``nn.Conv2d`` layers that can be replaced, and ``(name, reason)`` of those that cannot."""

    def why_not(name: str, module: nn.Conv2d) -> str | None:
        if type(module) is not nn.Conv2d:
            return f"{type(module).__name__} is a Conv2d subclass (its forward may differ)"
        if module.groups != 1:
            return f"grouped conv (groups={module.groups}): only groups=1 has a sparse kernel"
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r}: only 'zeros' has a sparse kernel"
        return None

    return _replaceable(model, nn.Conv2d, why_not)


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


def pick(case: LayerCase, fns: Mapping[str, Callable[[], object]], cfg: AccelerateConfig,
         timer: Timer | None) -> tuple[dict[str, float], str, float]:  # fmt: skip
    """Time the candidates (or ask the stub); return the timings, the fastest and its gain over dense."""
    if timer is not None:
        timings = {k: float(v) for k, v in timer(case, fns).items() if k in fns}
    else:
        timings = interleaved_ms(fns, rounds=cfg.rounds, screen=cfg.screen, keep=("dense",))
    if "dense" not in timings:
        raise ConfigError(
            f"timer returned no 'dense' time for {case.name!r}; it must time every kernel in case.kernels"
        )
    best = min(timings, key=lambda k: timings[k])
    gain = timings["dense"] / timings[best] if timings[best] > 0 else math.inf
    return timings, best, gain


InputKind = Literal["fresh", "view", "shared"]


@dataclass(frozen=True)
class InputSource:
    """Where a pruned Linear's input comes from in the model (:func:`~prunekit.accel.engine.input_sources`):
    ``feeders`` are the layers whose output reaches it through parameter-free, shape-keeping modules only
    (GELU, Dropout, ...), ``readers`` the earlier layers that read the very same tensor."""

    feeders: frozenset[str] = frozenset()
    readers: frozenset[str] = frozenset()

    def kind(self, returning: Container[str], copying: Container[str]) -> InputKind:
        """The input kind once the layers in ``returning`` run a sparse kernel (they can return their output
        as a transposed view) and those in ``copying`` make an ``x.T`` copy others can share: ``"view"``
        when every feeder returns one, ``"shared"`` when an earlier reader of the tensor made the copy,
        else ``"fresh"`` (the layer pays its own copy)."""
        if self.feeders and all(f in returning for f in self.feeders):
            return "view"
        if any(r in copying for r in self.readers):
            return "shared"
        return "fresh"


def choose_layer(name: str, module: nn.Linear | nn.Conv2d, in_shape: tuple[int, ...], cfg: AccelerateConfig,
                 timer: Timer | None, input_kind: InputKind = "shared"
                 ) -> tuple[LayerChoice, SparseLinear | SparseConv2d | None]:  # fmt: skip
    """Time the candidates of one layer; return the choice and the module to install (``None``: dense).

    ``input_kind`` says what a Linear's input is in the model, so that the sparse kernels are timed with
    the ``x.T`` copy they will really make: ``"fresh"`` a new tensor on every call (the copy is paid:
    :func:`~prunekit.kernels.fresh_inputs`), ``"view"`` the transposed view a sparse layer before it
    returns (no copy), ``"shared"`` a tensor an earlier sparse layer read too (attention's k and v after
    q: the copy is shared). Timed on one tensor over and over, as ``"shared"``, the copy is left out.
    """
    if isinstance(module, nn.Conv2d):
        return choose_conv(name, module, in_shape, cfg, timer)
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
    names = [
        k
        for k in candidate_kernels(mask, dtype=module.weight.dtype)
        if cfg.kernels is None or k in cfg.kernels or k == "dense"
    ]
    weight, bias = module.weight.detach(), None if module.bias is None else module.bias.detach()
    masked = torch.where(mask, weight, weight.new_zeros(()))
    modules = {k: SparseLinear(weight, bias, mask, kernel=k).eval() for k in names if k != "dense"}
    x = torch.randn(int(tokens), in_f, dtype=weight.dtype, generator=torch.Generator().manual_seed(0))
    if input_kind == "view":
        x = x.t().contiguous().t()
    case = LayerCase(name, (out_f, in_f), int(tokens), sparsity, ("dense", *modules))
    return decide(case, lambda: F.linear(x, masked, bias), modules, x, cfg, timer, made,
                  fresh=input_kind == "fresh")  # fmt: skip


M = TypeVar("M", SparseLinear, SparseConv2d)


def decide(case: LayerCase, dense: Callable[[], torch.Tensor], modules: Mapping[str, M], x: torch.Tensor,
           cfg: AccelerateConfig, timer: Timer | None, made: Callable[..., LayerChoice], fresh: bool = False
           ) -> tuple[LayerChoice, M | None]:  # fmt: skip
    """Time dense and every candidate on ``x`` (``fresh``: on ``x`` and a copy in turn); keep the fastest
    only if it wins by the margin and its output equals dense's to tolerance. ``made(kernel, reason,
    timings)`` builds the choice."""
    fns: dict[str, Callable[[], object]] = {"dense": dense}
    for k, m in modules.items():
        fns[k] = fresh_inputs(m, x) if fresh else partial(m, x)
    timings, best, gain = pick(case, fns, cfg, timer)
    if best == "dense" or gain < cfg.margin:
        why = "dense is fastest" if best == "dense" else f"{best} only {gain:.2f}x (< margin {cfg.margin})"
        return made("dense", why, timings), None
    chosen = modules[best]
    with torch.no_grad():
        ok, err = close(chosen(x), dense(), cfg.rtol, cfg.atol)
    if not ok:
        return made("dense", f"{best} output differs by {err:.3g}; kept dense", timings), None  # fmt: skip
    return made(best, f"{best} {gain:.2f}x faster", timings), chosen


def masked_conv(module: nn.Conv2d, mask: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> F.conv2d(x, W * mask, b, ...)`` with the module's geometry (the reference a kernel must match)."""
    weight = module.weight.detach()
    masked = torch.where(mask, weight, weight.new_zeros(()))
    bias = None if module.bias is None else module.bias.detach()
    stride, padding, dilation = module.stride, module.padding, module.dilation
    return lambda x: F.conv2d(x, masked, bias, stride, padding, dilation)


def conv_candidates(module: nn.Conv2d, mask: torch.Tensor, only: tuple[str, ...] | None = None
                    ) -> dict[str, SparseConv2d]:  # fmt: skip
    """The sparse candidates :func:`accelerate` times for a conv (``dense`` is the masked ``F.conv2d``):
    :func:`~prunekit.kernels.conv_candidate_kernels` of ``mask``, restricted to ``only`` if given."""
    names = [
        k
        for k in conv_candidate_kernels(mask, module.weight.dtype)
        if k != "dense" and (only is None or k in only)
    ]
    return {k: SparseConv2d.from_conv(module, mask, k) for k in names}


def choose_conv(name: str, module: nn.Conv2d, in_shape: tuple[int, ...], cfg: AccelerateConfig,
                timer: Timer | None) -> tuple[LayerChoice, SparseConv2d | None]:  # fmt: skip
    """:func:`choose_layer` for a conv: candidates timed on an input of the recorded shape."""
    mask = linear_mask(module)
    weight = module.weight.detach()
    co, ci, kh, kw = (int(s) for s in weight.shape)
    nnz = int(mask.sum())
    sparsity = 1.0 - nnz / mask.numel() if mask.numel() else 0.0
    x = torch.randn(in_shape, dtype=weight.dtype, generator=torch.Generator().manual_seed(0))
    dense = masked_conv(module, mask)
    with torch.no_grad():
        ref = dense(x)
    tokens = ref.numel() // co if ref.numel() else 0

    def made(kernel: str, reason: str, timings: dict[str, float] | None = None) -> LayerChoice:
        return LayerChoice(name=name, kernel=kernel, shape=(co, ci * kh * kw), tokens=tokens, sparsity=sparsity,
                           timings_ms=timings or {}, reason=reason, weight_shape=(co, ci, kh, kw),
                           input_shape=tuple(int(s) for s in in_shape))  # fmt: skip

    if nnz == mask.numel():
        return made("dense", "no pruned weights"), None
    if mask.numel() < cfg.min_weights and timer is None:
        return made("dense", f"fewer than {cfg.min_weights} weights"), None
    modules = conv_candidates(module, mask, cfg.kernels)
    case = LayerCase(name, (co, ci * kh * kw), tokens, sparsity, ("dense", *modules), kind="conv2d")
    return decide(case, lambda: dense(x), modules, x, cfg, timer, made)


def plan_kernel(choice: LayerChoice, module: nn.Module, rtol: float, atol: float) -> nn.Module:
    """The kernel ``choice`` names, built for ``module`` and checked against the masked layer on random inputs.

    Raises:
        AccelerationError: ``module`` is not the layer the plan expects, or the kernel's output differs.
    """
    if choice.kind == "conv2d":
        shape = tuple(module.weight.shape) if isinstance(module, nn.Conv2d) else None
        if type(module) is not nn.Conv2d or shape != choice.weight_shape:
            raise AccelerationError(f"plan expects {choice.name!r} to be a Conv2d {choice.weight_shape}, found "
                                    f"{type(module).__name__}; re-run accelerate() on this model")  # fmt: skip
        assert isinstance(module, nn.Conv2d)
        mask = linear_mask(module)
        conv = SparseConv2d.from_conv(module, mask, choice.kernel)
        n, *rest = choice.input_shape if len(choice.input_shape) == 4 else (1, *choice.input_shape)
        x = torch.randn(min(n, 2), *rest, dtype=module.weight.dtype)
        with torch.no_grad():
            ok, err = close(conv(x), masked_conv(module, mask)(x), rtol, atol)
        fast: nn.Module = conv
    else:
        if type(module) is not nn.Linear or (module.out_features, module.in_features) != choice.shape:
            raise AccelerationError(f"plan expects {choice.name!r} to be a Linear {choice.shape}, found "
                                    f"{type(module).__name__}; re-run accelerate() on this model")  # fmt: skip
        assert isinstance(module, nn.Linear)
        mask = linear_mask(module)
        w, b = module.weight.detach(), None if module.bias is None else module.bias.detach()
        lin = SparseLinear(w, b, mask, kernel=choice.kernel).eval()
        lin.transposed_output = choice.transposed_output
        x = torch.randn(min(choice.tokens, 64), module.in_features, dtype=w.dtype)
        with torch.no_grad():
            ok, err = close(lin(x), F.linear(x, torch.where(mask, w, w.new_zeros(())), b), rtol, atol)
        fast = lin
    if not ok:
        raise AccelerationError(
            f"kernel {choice.kernel!r} of {choice.name!r} differs by {err:.3g}; nothing changed"
        )
    return fast


__all__ = [
    "AccelerateConfig",
    "AccelerationError",
    "LayerCase",
    "Timer",
    "choose_conv",
    "InputKind",
    "InputSource",
    "choose_layer",
    "close",
    "conv_layers",
    "linear_layers",
    "linear_mask",
    "masked_conv",
    "pick",
    "plan_kernel",
]
