"""``speedup_estimate``: predicted latency of a pruning option on this machine, before pruning.

::

    dense model ──► one forward with hooks: every Linear/Conv2d input and output shape
                ──► dense_ms of the model and of each Linear and Conv2d layer (measured, alternating)
                    other_ms = the model with each of those layers standing in as a fixed zero
                               output (attention, norms, activations, pooling, ...; measured directly)
                    in-model = model - other_ms - sum(layers): what the layers cost more inside the
                               model than alone (their weights stream from DRAM, not a warm cache),
                               shared over the layers by weight bytes and kept in proportion to the
                               bytes a layer keeps (sparse kernel: 2 x density; channels: the kept
                               activations, as other_ms)
    option      ──► pruned copy (prune_weights / prune_channels on a deepcopy): per-layer
                    sparsity or new shape
    predicted   = other_ms * (kept fraction of the activations the layers read, structured only)
                + sum over layers of dense_ms * min(1, ratio)        unstructured / N:M; ratio: measured
                                    with the kernels accelerate would time (Linear: csr, csr/K, bsr, ...;
                                    Conv2d: csr, taps, compact+...) on the layer's shape, input and real
                                    mask, or with measure=False the table's fastest CSR kernel
                  the pruned layer's measured time                   channels (its new shape and input;
                                    measure=False: dense_ms * new_weights / old_weights)
                + each layer's in-model share x the bytes it keeps

A model that cannot run with stand-in layers (control flow on their outputs) gets the old split:
``other_ms = model - sum(layers)``, no in-model share.

A layer whose predicted gain is below ``margin`` counts as dense, as :func:`accelerate` would keep
it, and so do layers :func:`accelerate` leaves dense (fewer than ``min_weights`` weights, grouped or
non-zero-padded convs). With ``measure=False`` nothing is timed: dense times come from the table too
(a conv as the ``(out, in * kh * kw)`` matrix it multiplies, on its output positions: a rougher
approximation than for Linear layers) and ``other_ms`` is 0 (the estimate then covers the Linear
and Conv2d layers only).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.accel.choice import AccelerateConfig, conv_candidates, conv_layers, linear_layers, masked_conv
from prunekit.accel.engine import as_args, linear_mask
from prunekit.errors import ConfigError
from prunekit.kernels import KernelTable, fresh_inputs, interleaved_ms, kernel_table, num_threads

_ACCEL_MIN_WEIGHTS = AccelerateConfig().min_weights  # smaller layers: accelerate leaves them dense untimed


@dataclass(frozen=True, kw_only=True)
class LayerEstimate:
    """One Linear or Conv2d layer: measured or table dense time and the predicted time after pruning.

    ``shape`` is the weight as a matrix, ``(out_features, in_features)`` or a conv's ``(out, in * kh * kw)``
    (after pruning, for channel options); ``tokens`` the rows it multiplies (a conv: its output positions,
    batch included); ``kind`` ``"linear"`` or ``"conv2d"`` (as in :class:`~prunekit.kernels.LayerChoice`).
    """

    name: str
    shape: tuple[int, int]
    tokens: int
    sparsity: float
    kernel: str
    dense_ms: float
    predicted_ms: float
    kind: str = "linear"


@dataclass(frozen=True, kw_only=True)
class SpeedupEstimate:
    """Predicted latency of a pruning option (milliseconds, this machine, this thread count).

    Attributes:
        option: what was estimated, e.g. ``"unstructured 90% (layer)"``.
        dense_ms: the dense model (measured; with ``measure=False``: the Linear layers from the table).
        predicted_ms: the prediction after pruning and :func:`accelerate`.
        other_ms: time outside the Linear and Conv2d layers (0 when not measured).
        layers: per-layer estimates (Linear and Conv2d).
    """

    option: str
    dense_ms: float
    predicted_ms: float
    other_ms: float
    layers: tuple[LayerEstimate, ...] = field(default_factory=tuple)

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.predicted_ms if self.predicted_ms > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {"option": self.option, "dense_ms": self.dense_ms, "predicted_ms": self.predicted_ms,
                "other_ms": self.other_ms, "speedup": self.speedup,
                "layers": [vars(layer) | {"shape": list(layer.shape)} for layer in self.layers]}  # fmt: skip


def _shapes(model: nn.Module, example_inputs: Any) -> dict[str, tuple[int, ...]]:
    """Input shape of every Linear/Conv layer on ``example_inputs`` (first call), and under
    ``"<name>:out"`` a Linear's or Conv2d's output shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):

            def hook(mod: nn.Module, args: tuple[Any, ...], name: str = name) -> None:  # fmt: skip
                if name not in shapes and args and isinstance(args[0], torch.Tensor):
                    shapes[name] = tuple(args[0].shape)

            def out_hook(mod: nn.Module, args: tuple[Any, ...], out: Any, name: str = name) -> None:
                if f"{name}:out" not in shapes and isinstance(out, torch.Tensor):
                    shapes[f"{name}:out"] = tuple(out.shape)

            handles.append(m.register_forward_pre_hook(hook))
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                handles.append(m.register_forward_hook(out_hook))
    pos, kw = as_args(example_inputs)
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*pos, **kw)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return shapes


def _normalized(option: Any) -> tuple[Any, str, bool]:
    """``option`` as a config (or the ``{layer: sparsity}`` mapping), its label and whether it is
    structured; raises for an option that cannot be estimated before anything is timed or copied."""
    import prunekit.structured as structured
    import prunekit.weights as weights

    if isinstance(option, bool) or option is None:
        raise ConfigError(
            f"option must be a sparsity, 'N:M', a config or {{layer: sparsity}}, got {option!r}"
        )
    if isinstance(option, (int, float)):
        option = weights.WeightPruningConfig(sparsity=float(option), scope="layer")
    elif isinstance(option, str):
        option = weights.WeightPruningConfig(pattern=option)
    if isinstance(option, weights.WeightPruningConfig):
        label = (
            f"N:M {option.pattern}"
            if option.nm is not None
            else f"unstructured {option.sparsity:.0%} ({option.scope})"
        )
        return option, label, False
    if isinstance(option, structured.ChannelPruneConfig):
        return option, f"channels {option.ratio!r}", True
    if isinstance(option, Mapping):
        return option, "per-layer sparsity", False
    raise ConfigError(
        f"cannot estimate option of type {type(option).__name__}; pass a sparsity (0.9), a pattern ('2:4'), "
        "a WeightPruningConfig, a ChannelPruneConfig or a {layer_name: sparsity} mapping"
    )


def _pruned_copy(model: nn.Module, example_inputs: Any, option: Any) -> nn.Module:
    """``option`` (from :func:`_normalized`) applied to a deepcopy of ``model``."""
    import prunekit.structured as structured
    import prunekit.weights as weights

    trial = copy.deepcopy(model)
    if isinstance(option, weights.WeightPruningConfig):
        nm = option.nm
        # the layers accelerate can make faster: plain Linear and groups-1 zero-padded Conv2d
        lin = [n for n, m in linear_layers(trial)[0] if nm is None or m.in_features % nm[1] == 0]
        lin += [n for n, m in conv_layers(trial)[0] if nm is None or m.in_channels % nm[1] == 0]
        import warnings

        from prunekit.kernels import SpeedupWarning

        with warnings.catch_warnings():  # the estimate is the answer; do not also warn
            warnings.simplefilter("ignore", SpeedupWarning)
            cfg = option if option.include is not None else dataclasses.replace(option, include=lin or None)
            weights.prune_weights(trial, config=cfg)
    elif isinstance(option, structured.ChannelPruneConfig):
        structured.prune_channels(trial, example_inputs, config=_exclude_by_name(model, option))
    else:
        from prunekit.core import set_mask

        g = torch.Generator().manual_seed(0)
        for name, s in option.items():
            m = trial.get_submodule(name)
            w = m.get_parameter("weight")
            set_mask(m, "weight", torch.rand(w.shape, generator=g) >= float(s))
    return trial


def _exclude_by_name(model: nn.Module, cfg: Any) -> Any:
    """``cfg`` with the modules of ``model`` in ``exclude`` given by name (the option runs on a copy)."""
    ex = cfg.exclude
    items = ex if isinstance(ex, (tuple, list)) else (ex,)
    if ex is None or not any(isinstance(e, nn.Module) for e in items):
        return cfg
    names = {id(m): n for n, m in model.named_modules() if n}
    return dataclasses.replace(
        cfg, exclude=tuple(names.get(id(e), e) if isinstance(e, nn.Module) else e for e in items)
    )


def speedup_estimate(model: nn.Module, example_inputs: Any, option: Any, *, table: KernelTable | None = None,
                     measure: bool = True, margin: float = 1.1, threads: int | None = None,
                     rounds: int = 7) -> SpeedupEstimate:  # fmt: skip
    """Predict the latency of ``model`` pruned by ``option`` and then accelerated, on this machine.

    The model is not changed (the option is applied to a copy).

    Args:
        model: the dense (or already pruned) model.
        example_inputs: inputs with the batch size and sequence length you will run.
        option: a sparsity (``0.9`` = 90% unstructured per layer), a pattern (``"2:4"``), a
            :class:`~prunekit.weights.WeightPruningConfig`, a :class:`~prunekit.structured.ChannelPruneConfig`
            or a ``{layer_name: sparsity}`` mapping.
        table: the kernel table; default this machine's (measured and cached on first use).
        measure: time the dense model and its Linear and Conv2d layers, and the sparse kernels on each
            pruned layer shape (one layer per shape, input and sparsity, with its real mask; for a
            channel option, each pruned conv on its new shape); otherwise everything comes from the
            table and only the Linear and Conv2d layers are predicted.
        margin: CSR must beat dense by this factor to count (as in :func:`accelerate`).
        threads: thread count (default: the current one).
        rounds: timing rounds.

    Returns:
        A :class:`SpeedupEstimate`.

    Raises:
        ConfigError: an option that cannot be estimated.
    """
    with num_threads(threads):
        if table is None:
            table = kernel_table()
        assert table is not None
        option, label, structured = _normalized(option)
        shapes = _shapes(model, example_inputs)
        linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and n in shapes]
        tokens = {n: math.prod(shapes[n][:-1]) for n, _ in linears}
        # structured: every conv shrinks (depthwise too); unstructured: only those accelerate can replace
        conv_pool = [(n, c) for n, c in model.named_modules() if type(c) is nn.Conv2d] if structured else \
            conv_layers(model)[0]  # fmt: skip
        convs: list[tuple[str, nn.Conv2d]] = [
            (n, c) for n, c in conv_pool if n in shapes and f"{n}:out" in shapes
        ]
        conv_tokens = {n: _conv_tokens(shapes, n, c) for n, c in convs}
        dense: dict[str, float] = {}
        after: dict[str, float] = {}  # channels, measured: each pruned layer on its new shape
        in_model: dict[str, float] = {}  # extra time of each layer inside the model (weights from DRAM)
        other = 0.0
        total: float
        # a weight-pruned copy is made after the dense model is timed: with a process's first masked
        # copy alive, the dense BERT-base forward ran 1.3-1.7x slower at 2 threads (glibc's heap: with
        # the allocator's thresholds raised by environment variables it did not; layers alone unchanged).
        # A channel-pruned copy is smaller and its convs are timed in the same rounds as the dense ones.
        trial = _pruned_copy(model, example_inputs, option) if structured else None
        new_shapes = _shapes(trial, example_inputs) if trial is not None else shapes
        if measure:
            pos, kw = as_args(example_inputs)
            fns: dict[str, Any] = {"__model__": lambda: model(*pos, **kw)}
            for n, m in linears:
                x = torch.randn(tokens[n], m.in_features, dtype=m.weight.dtype)
                fns[n] = lambda m=m, x=x: F.linear(x, m.weight, m.bias)
            for n, c in convs:
                fns[n] = _conv_fn(c, shapes[n])
                if trial is not None and n in new_shapes:
                    fns[f"{n}:after"] = _conv_fn(trial.get_submodule(n), new_shapes[n])
            was = model.training
            model.eval()
            try:
                stub = _stubbed_model(model, [n for n, _ in linears] + [n for n, _ in convs], shapes, pos, kw)
                if stub is not None:
                    fns["__stub__"] = stub
                ms = interleaved_ms(fns, rounds=rounds, target_s=1e-3)  # in inference mode
            finally:
                model.train(was)
            total = ms.pop("__model__")
            outside = ms.pop("__stub__", None)
            after = {k[: -len(":after")]: v for k, v in ms.items() if k.endswith(":after")}
            dense = {k: v for k, v in ms.items() if not k.endswith(":after")}
            if outside is None:  # the model cannot run with stand-in layers: all the rest is "other"
                other = max(0.0, total - sum(dense.values()))
            else:
                other = min(outside, total)
                in_model = _in_model_penalty(model, dense, max(0.0, total - other - sum(dense.values())))
        else:
            dense = {n: table.dense_ms_for(m.out_features, m.in_features, tokens[n]) for n, m in linears}
            dense |= {n: table.dense_ms_for(c.out_channels, _patch_len(c), conv_tokens[n]) for n, c in convs}
            total = sum(dense.values())
        if trial is None:
            trial = _pruned_copy(model, example_inputs, option)
        measured = (
            _measured_ratios(trial, example_inputs, linears, tokens, rounds, margin)
            | _measured_conv_ratios(trial, convs, shapes, rounds)
            if measure and not structured
            else {}
        )
        layers: list[LayerEstimate] = []
        for n, m in linears:
            new = trial.get_submodule(n)
            assert isinstance(new, nn.Linear)
            if structured:
                frac = (new.out_features * new.in_features) / (m.out_features * m.in_features)
                layers.append(LayerEstimate(name=n, shape=(new.out_features, new.in_features), tokens=tokens[n],
                                            sparsity=0.0, kernel="dense", dense_ms=dense[n],
                                            predicted_ms=dense[n] * frac))  # fmt: skip
                continue
            layers.append(_unstructured(n, "linear", (m.out_features, m.in_features), tokens[n], linear_mask(new),
                                        dense[n], measured, table, margin))  # fmt: skip
        for n, c in convs:
            pc = trial.get_submodule(n)
            assert isinstance(pc, nn.Conv2d)
            if structured:  # measured on the new shape; without measuring, by kept weights x positions
                frac = pc.weight.numel() / c.weight.numel() * _conv_tokens(new_shapes, n, pc) / conv_tokens[n]
                pred = after.get(n, dense[n] * frac)
                layers.append(LayerEstimate(name=n, shape=(pc.out_channels, _patch_len(pc)), tokens=conv_tokens[n],
                                            sparsity=0.0, kernel="dense", dense_ms=dense[n], predicted_ms=pred,
                                            kind="conv2d"))  # fmt: skip
                continue
            layers.append(_unstructured(n, "conv2d", (c.out_channels, _patch_len(c)), conv_tokens[n],
                                        linear_mask(pc), dense[n], measured, table, margin))  # fmt: skip
        kept_activations = _activation_ratio(model, shapes, new_shapes) if structured else 1.0
        other *= kept_activations
        layers = [_with_in_model(layer, in_model.get(layer.name, 0.0), kept_activations) for layer in layers]
    predicted = other + sum(layer.predicted_ms for layer in layers)
    return SpeedupEstimate(
        option=label, dense_ms=total, predicted_ms=predicted, other_ms=other, layers=tuple(layers)
    )


def _stubbed_model(model: nn.Module, names: list[str], shapes: Mapping[str, tuple[int, ...]],
                   pos: tuple[Any, ...], kw: dict[str, Any]) -> Any:  # fmt: skip
    """A call of ``model`` in which each named layer returns a fixed zero tensor of its recorded output
    shape instead of computing: timing it measures the time outside those layers directly. ``None`` if
    a layer cannot be stood in for or the model fails to run that way (then nothing is changed)."""
    stand_ins: list[tuple[nn.Module, torch.Tensor]] = []
    for n in names:
        m = model.get_submodule(n)
        out = shapes.get(f"{n}:out")
        if out is None or "forward" in m.__dict__:
            return None
        stand_ins.append((m, torch.zeros(out, dtype=m.get_parameter("weight").dtype)))

    def run() -> Any:
        for m, z in stand_ins:
            m.forward = lambda *a, z=z, **k: z
        try:
            return model(*pos, **kw)
        finally:
            for m, _ in stand_ins:
                del m.forward

    try:
        with torch.no_grad():
            run()
    except Exception:  # a model whose control flow needs real layer outputs
        return None
    return run


def _in_model_penalty(model: nn.Module, dense: Mapping[str, float], extra: float) -> dict[str, float]:
    """Split ``extra`` (model time - time outside the layers - the layers timed on their own: mostly their
    weights streaming from DRAM instead of a warm cache) over the layers by weight bytes."""
    sizes = {n: model.get_submodule(n).get_parameter("weight").numel() for n in dense}
    total = sum(sizes.values())
    return {n: extra * size / total for n, size in sizes.items()} if total else {}


def _with_in_model(layer: LayerEstimate, extra: float, kept_activations: float) -> LayerEstimate:
    """``layer`` with its share of the in-model time added: in full to the dense time, and to the
    prediction scaled by the bytes its weights keep where a sparse kernel runs it (8 bytes per kept
    weight instead of 4 per weight), else by the kept activations (1.0 for weight pruning; for channel
    pruning the share scales like the time outside the layers: on the demo CNN three same-session
    checks gave -2/+7/-18% that way, -10/-13/-21% scaling it by the kept weights)."""
    if not extra:
        return layer
    sparse = layer.kernel != "dense" and layer.sparsity > 0
    keep = min(1.0, 2.0 * (1.0 - layer.sparsity)) if sparse else kept_activations
    return dataclasses.replace(
        layer, dense_ms=layer.dense_ms + extra, predicted_ms=layer.predicted_ms + extra * keep
    )


def _patch_len(conv: nn.Conv2d) -> int:
    """Columns of the conv's weight as a matrix: ``in / groups * kh * kw``."""
    return int(math.prod(conv.weight.shape[1:]))


def _conv_tokens(shapes: Mapping[str, tuple[int, ...]], name: str, conv: nn.Conv2d) -> int:
    """Output positions (batch included) of conv ``name`` in ``shapes`` (1 if it did not run)."""
    out = shapes.get(f"{name}:out")
    return max(1, math.prod(out) // max(1, conv.out_channels)) if out else 1


def _conv_fn(conv: nn.Module, in_shape: tuple[int, ...]) -> Any:
    """``conv`` run on a random input of ``in_shape`` (its own padding mode, groups and geometry)."""
    assert isinstance(conv, nn.Conv2d)
    x = torch.randn(in_shape, dtype=conv.weight.dtype)
    return lambda: conv._conv_forward(x, conv.weight, conv.bias)


def _unstructured(name: str, kind: str, shape: tuple[int, int], tokens: int, mask: torch.Tensor, dense_ms: float,
                  measured: Mapping[str, tuple[float, str]], table: KernelTable, margin: float) -> LayerEstimate:  # fmt: skip
    """A weight-pruned layer: the measured (or table) kernel ratio, kept only if it beats dense by ``margin``."""
    s = 1.0 - float(mask.float().mean()) if mask.numel() else 0.0
    if s == 0 or mask.numel() < _ACCEL_MIN_WEIGHTS:  # accelerate leaves it dense without timing
        ratio, best = 1.0, "dense"
    elif name in measured:
        ratio, best = measured[name]
    else:
        ratio, best = table.ratio(tokens=tokens, sparsity=s), table.kernel(tokens=tokens, sparsity=s)
    sparse = ratio * margin <= 1.0
    return LayerEstimate(name=name, shape=shape, tokens=tokens, sparsity=s, kernel=best if sparse else "dense",
                         dense_ms=dense_ms, predicted_ms=dense_ms * (ratio if sparse else 1.0), kind=kind)  # fmt: skip


def _measured_ratios(trial: nn.Module, example_inputs: Any, linears: list[tuple[str, nn.Linear]],
                     tokens: Mapping[str, int], rounds: int, margin: float) -> dict[str, tuple[float, str]]:  # fmt: skip
    """Kernel time / dense time and the fastest kernel for each pruned Linear, measured on its own shape.

    Layers of one shape, token count, sparsity (to 0.01) and layout share one measurement, taken on
    the first of them with its real mask: the candidates :func:`accelerate` would time, run as it
    runs them, in the layout it will give them, decided in model order as it decides: a layer reads the
    transposed view a layer before it returns (through GELU, Dropout, ...) only where that one went
    sparse, shares the ``x.T`` of an earlier reader of its input only where that one made it, and
    otherwise pays its copy (see :func:`~prunekit.accel.engine.input_kind`); a layer feeding another
    pruned one returns a transposed view.
    """
    from prunekit.accel.engine import traced_sources
    from prunekit.kernels import SparseLinear, candidate_kernels

    masks: dict[str, torch.Tensor] = {}
    for n, _ in linears:
        new = trial.get_submodule(n)
        assert isinstance(new, nn.Linear)
        mask = linear_mask(new)
        if not bool(mask.all()) and mask.numel() >= _ACCEL_MIN_WEIGHTS:
            masks[n] = mask
    with torch.no_grad():
        sources = traced_sources(trial.eval(), example_inputs, {n: trial.get_submodule(n) for n in masks})
    feeds = {f for src in sources.values() for f in src.feeders}
    sparse: set[str] = set()  # the layers measured to run a sparse kernel so far (they return views)
    copying: set[str] = set()  # ... whose x.T copy a later reader of the same tensor shares
    found: dict[tuple[int, int, int, float, bool, str], tuple[float, str]] = {}
    out: dict[str, tuple[float, str]] = {}
    g = torch.Generator().manual_seed(0)
    for n, m in linears:
        if n not in masks:
            continue
        kind = sources[n].kind(sparse, copying) if n in sources else "fresh"
        key = (m.out_features, m.in_features, tokens[n], round(1.0 - float(masks[n].float().mean()), 2), n in feeds,
               kind)  # fmt: skip
        if key not in found:
            rep = trial.get_submodule(n)
            assert isinstance(rep, nn.Linear)
            w, b, mask = rep.weight.detach(), None if rep.bias is None else rep.bias.detach(), masks[n]
            masked = torch.where(mask, w, w.new_zeros(()))
            x = torch.randn(tokens[n], m.in_features, dtype=w.dtype, generator=g)
            xs = (
                x.t().contiguous().t() if kind == "view" else x
            )  # the transposed view the feeding layer returns
            fns: dict[str, Any] = {"dense": lambda x=x, w=masked, b=b: F.linear(x, w, b)}
            for k in candidate_kernels(mask, dtype=w.dtype):
                if k != "dense":
                    layer = SparseLinear(w, b, mask, kernel=k).eval()
                    layer.transposed_output = n in feeds
                    # as accelerate times it: the x.T copy is paid unless the input is a view or shared
                    fns[k] = fresh_inputs(layer, xs) if kind == "fresh" else partial(layer, xs)
            found[key] = _fastest(fns, rounds)
        out[n] = ratio, best = found[key]
        if ratio * margin <= 1.0 and best.rpartition("+")[2] != "dense":  # compact+dense returns no view
            sparse.add(n)
            if not best.startswith("compact+"):  # a compact layer gathers its kept columns instead
                copying.add(n)
    return out


def _fastest(fns: Mapping[str, Any], rounds: int) -> tuple[float, str]:
    """Time ``dense`` and the candidates as :func:`accelerate` does (alternating rounds, clear losers
    screened out); return (fastest candidate / dense, its name)."""
    ms = interleaved_ms(fns, rounds=rounds, screen=1.5, keep=("dense",))
    best = min((k for k in ms if k != "dense"), key=lambda k: ms[k])
    return ms[best] / ms["dense"], best


def _measured_conv_ratios(trial: nn.Module, convs: list[tuple[str, nn.Conv2d]],
                          shapes: Mapping[str, tuple[int, ...]], rounds: int) -> dict[str, tuple[float, str]]:  # fmt: skip
    """Kernel time / dense time and the fastest kernel for each weight-pruned Conv2d, as :func:`accelerate`
    times them (:func:`~prunekit.kernels.conv_candidate_kernels` as :class:`~prunekit.kernels.SparseConv2d`
    against the masked ``F.conv2d``) on its recorded input. Convs of one weight shape, geometry, input
    shape and sparsity (to 0.01) share one measurement, on the first one's real mask."""
    groups: dict[tuple[Any, ...], list[str]] = {}
    masks: dict[str, torch.Tensor] = {}
    for n, _ in convs:
        new = trial.get_submodule(n)
        assert isinstance(new, nn.Conv2d)
        mask = linear_mask(new)
        if bool(mask.all()) or mask.numel() < _ACCEL_MIN_WEIGHTS:
            continue
        masks[n] = mask
        s = 1.0 - float(mask.float().mean())
        key = (tuple(new.weight.shape), new.stride, new.padding, new.dilation, shapes[n], round(s, 2))
        groups.setdefault(key, []).append(n)
    out: dict[str, tuple[float, str]] = {}
    g = torch.Generator().manual_seed(0)
    for names in groups.values():
        rep = trial.get_submodule(names[0])
        assert isinstance(rep, nn.Conv2d)
        mask = masks[names[0]]
        x = torch.randn(shapes[names[0]], dtype=rep.weight.dtype, generator=g)
        dense = masked_conv(rep, mask)
        fns: dict[str, Any] = {"dense": lambda x=x, f=dense: f(x)}
        for k, layer in conv_candidates(rep, mask).items():
            fns[k] = lambda x=x, layer=layer: layer(x)
        out.update(dict.fromkeys(names, _fastest(fns, rounds)))
    return out


def _activation_ratio(model: nn.Module, shapes: Mapping[str, tuple[int, ...]],
                      new_shapes: Mapping[str, tuple[int, ...]]) -> float:  # fmt: skip
    """Kept fraction of the work outside Linear and Conv layers after channel pruning, approximated by the
    kept fraction of the activations the layers read (norms, activations, pooling and adds are
    memory-bound: they shrink with the tensor, not with the MACs). 1.0 if no layer ran."""
    old = new = 0
    for n, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and n in shapes and n in new_shapes:
            old += math.prod(shapes[n])
            new += math.prod(new_shapes[n])
    return new / old if old else 1.0


__all__ = ["LayerEstimate", "SpeedupEstimate", "speedup_estimate"]
