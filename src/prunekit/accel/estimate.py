"""``speedup_estimate``: predicted latency of a pruning option on this machine, before pruning.

::

    dense model ──► one forward with hooks: every Linear/Conv input shape (tokens)
                ──► dense_ms of the model and of each Linear layer (measured, alternating)
                    other_ms = model - sum(Linear)          (attention, norms, convs, ...)
    option      ──► pruned copy (prune_weights / prune_channels on a deepcopy): per-layer
                    sparsity or new shape
    predicted   = other_ms * (MACs kept outside Linear)
                + sum over Linear of dense_ms * min(1, ratio(tokens, sparsity))   (unstructured; ratio:
                                    measured on the layer's shape, or with measure=False the table's
                                    fastest CSR kernel, csr or csr/K)
                                    dense_ms * new_weights / old_weights                (channels)

A layer whose predicted CSR gain is below ``margin`` counts as dense, as :func:`accelerate`
would keep it. With ``measure=False`` nothing is timed: dense times come from the table too and
``other_ms`` is 0 (the estimate then covers the Linear layers only).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.accel.engine import as_args, linear_mask
from prunekit.errors import ConfigError
from prunekit.kernels import KernelTable, interleaved_ms, kernel_table, num_threads


@dataclass(frozen=True, kw_only=True)
class LayerEstimate:
    """One Linear layer: measured or table dense time and the predicted time after pruning."""

    name: str
    shape: tuple[int, int]
    tokens: int
    sparsity: float
    kernel: str
    dense_ms: float
    predicted_ms: float


@dataclass(frozen=True, kw_only=True)
class SpeedupEstimate:
    """Predicted latency of a pruning option (milliseconds, this machine, this thread count).

    Attributes:
        option: what was estimated, e.g. ``"unstructured 90% (layer)"``.
        dense_ms: the dense model (measured; with ``measure=False``: the Linear layers from the table).
        predicted_ms: the prediction after pruning and :func:`accelerate`.
        other_ms: time outside Linear layers (0 when not measured).
        layers: per-Linear estimates.
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
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):

            def hook(mod: nn.Module, args: tuple[Any, ...], name: str = name) -> None:  # fmt: skip
                if name not in shapes and args and isinstance(args[0], torch.Tensor):
                    shapes[name] = tuple(args[0].shape)

            handles.append(m.register_forward_pre_hook(hook))
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


def _pruned_copy(model: nn.Module, example_inputs: Any, option: Any) -> tuple[nn.Module, str, bool]:
    """Apply ``option`` to a deepcopy; return ``(copy, label, structured)``."""
    import prunekit.structured as structured
    import prunekit.weights as weights

    trial = copy.deepcopy(model)
    if isinstance(option, bool) or option is None:
        raise ConfigError(
            f"option must be a sparsity, 'N:M', a config or {{layer: sparsity}}, got {option!r}"
        )
    if isinstance(option, (int, float)):
        option = weights.WeightPruningConfig(sparsity=float(option), scope="layer")
    elif isinstance(option, str):
        option = weights.WeightPruningConfig(pattern=option)
    if isinstance(option, weights.WeightPruningConfig):
        nm = option.nm
        lin = [
            n
            for n, m in trial.named_modules()
            if isinstance(m, nn.Linear) and (nm is None or m.in_features % nm[1] == 0)
        ]
        import warnings

        from prunekit.kernels import SpeedupWarning

        with warnings.catch_warnings():  # the estimate is the answer; do not also warn
            warnings.simplefilter("ignore", SpeedupWarning)
            cfg = option if option.include is not None else dataclasses.replace(option, include=lin or None)
            weights.prune_weights(trial, config=cfg)
        label = (
            f"N:M {option.pattern}"
            if nm is not None
            else f"unstructured {option.sparsity:.0%} ({option.scope})"
        )
        return trial, label, False
    if isinstance(option, structured.ChannelPruneConfig):
        structured.prune_channels(trial, example_inputs, config=option)
        return trial, f"channels {option.ratio!r}", True
    if isinstance(option, Mapping):
        from prunekit.core import set_mask

        g = torch.Generator().manual_seed(0)
        for name, s in option.items():
            m = trial.get_submodule(name)
            w = m.get_parameter("weight")
            set_mask(m, "weight", torch.rand(w.shape, generator=g) >= float(s))
        return trial, "per-layer sparsity", False
    raise ConfigError(
        f"cannot estimate option of type {type(option).__name__}; pass a sparsity (0.9), a pattern ('2:4'), "
        "a WeightPruningConfig, a ChannelPruneConfig or a {layer_name: sparsity} mapping"
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
        measure: time the dense model and its Linear layers, and the sparse kernels on each pruned
            layer shape (one layer per shape, token count and sparsity, with its real mask); otherwise
            everything comes from the table and only Linear layers are predicted.
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
        shapes = _shapes(model, example_inputs)
        trial, label, structured = _pruned_copy(model, example_inputs, option)
        new_shapes = _shapes(trial, example_inputs) if structured else shapes
        linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and n in shapes]
        tokens = {n: math.prod(shapes[n][:-1]) for n, _ in linears}
        dense: dict[str, float] = {}
        other = 0.0
        total: float
        if measure:
            pos, kw = as_args(example_inputs)
            fns: dict[str, Any] = {"__model__": lambda: model(*pos, **kw)}
            for n, m in linears:
                x = torch.randn(tokens[n], m.in_features, dtype=m.weight.dtype)
                fns[n] = lambda m=m, x=x: F.linear(x, m.weight, m.bias)
            was = model.training
            model.eval()
            try:
                ms = interleaved_ms(fns, rounds=rounds, target_s=1e-3)
            finally:
                model.train(was)
            total = ms.pop("__model__")
            dense = ms
            other = max(0.0, total - sum(dense.values()))
        else:
            dense = {n: table.dense_ms_for(m.out_features, m.in_features, tokens[n]) for n, m in linears}
            total = sum(dense.values())
        measured = (
            _measured_ratios(trial, example_inputs, linears, tokens, rounds)
            if measure and not structured
            else {}
        )
        layers: list[LayerEstimate] = []
        for n, m in linears:
            new = trial.get_submodule(n)
            if structured:
                assert isinstance(new, nn.Linear)
                frac = (new.out_features * new.in_features) / (m.out_features * m.in_features)
                layers.append(LayerEstimate(name=n, shape=(new.out_features, new.in_features), tokens=tokens[n],
                                            sparsity=0.0, kernel="dense", dense_ms=dense[n],
                                            predicted_ms=dense[n] * frac))  # fmt: skip
                continue
            assert isinstance(new, nn.Linear)
            mask = linear_mask(new)
            s = 1.0 - float(mask.float().mean())
            if n in measured:
                ratio, best = measured[n]
            else:
                ratio = table.ratio(tokens=tokens[n], sparsity=s) if s > 0 else 1.0
                best = table.kernel(tokens=tokens[n], sparsity=s)
            sparse = ratio * margin <= 1.0
            kernel = best if sparse else "dense"
            pred = dense[n] * (ratio if sparse else 1.0)
            layers.append(LayerEstimate(name=n, shape=(m.out_features, m.in_features), tokens=tokens[n],
                                        sparsity=s, kernel=kernel, dense_ms=dense[n], predicted_ms=pred))  # fmt: skip
        if structured and other:
            other *= _conv_mac_ratio(model, trial, shapes, new_shapes)
    predicted = other + sum(layer.predicted_ms for layer in layers)
    return SpeedupEstimate(
        option=label, dense_ms=total, predicted_ms=predicted, other_ms=other, layers=tuple(layers)
    )


def _measured_ratios(trial: nn.Module, example_inputs: Any, linears: list[tuple[str, nn.Linear]],
                     tokens: Mapping[str, int], rounds: int) -> dict[str, tuple[float, str]]:  # fmt: skip
    """Kernel time / dense time and the fastest kernel for each pruned Linear, measured on its own shape.

    Layers of one shape, token count, sparsity (to 0.01) and layout share one measurement, taken on
    the first of them with its real mask: the candidates :func:`accelerate` would time, run as it
    runs them, in the layout it will give them (a layer feeding another pruned one through GELU,
    Dropout, ... returns a transposed view; the one it feeds reads it without a copy: see
    :func:`~prunekit.accel.engine.view_links`).
    """
    from prunekit.accel.engine import view_links
    from prunekit.kernels import SparseLinear, candidate_kernels

    masks: dict[str, torch.Tensor] = {}
    for n, _ in linears:
        new = trial.get_submodule(n)
        assert isinstance(new, nn.Linear)
        mask = linear_mask(new)
        if not bool(mask.all()):
            masks[n] = mask
    with torch.no_grad():
        feeds, reads = view_links(trial.eval(), example_inputs, {n: trial.get_submodule(n) for n in masks})
    groups: dict[tuple[int, int, int, float, bool, bool], list[str]] = {}
    for n, m in linears:
        if n in masks:
            s = 1.0 - float(masks[n].float().mean())
            key = (m.out_features, m.in_features, tokens[n], round(s, 2), n in feeds, n in reads)
            groups.setdefault(key, []).append(n)
    out: dict[str, tuple[float, str]] = {}
    g = torch.Generator().manual_seed(0)
    for (_, in_f, t, _, feed, read), names in groups.items():
        rep = trial.get_submodule(names[0])
        assert isinstance(rep, nn.Linear)
        w, b, mask = rep.weight.detach(), None if rep.bias is None else rep.bias.detach(), masks[names[0]]
        masked = torch.where(mask, w, w.new_zeros(()))
        x = torch.randn(t, in_f, dtype=w.dtype, generator=g)
        xs = x.t().contiguous().t() if read else x  # the transposed view the feeding layer returns
        fns: dict[str, Any] = {"dense": lambda x=x, w=masked, b=b: F.linear(x, w, b)}
        for k in candidate_kernels(mask):
            if k != "dense":
                layer = SparseLinear(w, b, mask, kernel=k).eval()
                layer.transposed_output = feed
                fns[k] = lambda layer=layer, xs=xs: layer(xs)
        ms = interleaved_ms(fns, rounds=rounds, screen=1.5, keep=("dense",))
        best = min((k for k in ms if k != "dense"), key=lambda k: ms[k])
        for n in names:
            out[n] = (ms[best] / ms["dense"], best)
    return out


def _conv_mac_ratio(model: nn.Module, trial: nn.Module, shapes: Mapping[str, tuple[int, ...]],
                    new_shapes: Mapping[str, tuple[int, ...]]) -> float:  # fmt: skip
    """Kept fraction of the non-Linear work, approximated by the kept conv weights x inputs (1.0 if no conv)."""
    old = new = 0.0
    for n, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and n in shapes and n in new_shapes:
            t = trial.get_submodule(n)
            assert isinstance(t, nn.Module)
            wo, wn = m.weight.numel(), t.get_parameter("weight").numel()
            so, sn = math.prod(shapes[n][2:]), math.prod(new_shapes[n][2:])
            old += wo * so
            new += wn * sn
    return new / old if old else 1.0


__all__ = ["LayerEstimate", "SpeedupEstimate", "speedup_estimate"]
