"""Numbers per model state (dense, pruned, accelerated, quantized, exported) for the report.

:func:`model_state_report` measures each state the same way and returns plain dicts (one per state),
which ``prunekit.report`` can render as tables and a latency/size plot::

    {"state": "accelerated", "params": 110e6, "nonzeros": 11e6, "macs": 1.2e9, "file_bytes": 90e6,
     "latency": {"1": {"median_ms": 12.1, "iqr_ms": 0.3}, "8": {...}}, "peak_memory_bytes": 2.4e6,
     "energy": {... EnergyEstimate.to_dict() ...}}

A state is an ``nn.Module`` (possibly with :class:`~prunekit.accel.SparseLinear` /
:class:`~prunekit.accel.SparseConv2d` layers) or an
:class:`~prunekit.accel.deploy.OnnxModel` (its file size is the ``.onnx`` file; peak memory is not
measured inside onnxruntime and is ``None``). Latencies of all states are taken in alternating
rounds, at batch 1 and at a larger batch (inputs repeated along dim 0).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.accel.deploy import OnnxModel, export_onnx, plain_copy
from prunekit.accel.energy import Precision, energy_estimate
from prunekit.accel.engine import as_args, sparse_layers, sparse_linears
from prunekit.kernels import SparseLinear, calls_per_burst, num_threads


def _rows(x: Any, n: int) -> Any:
    return x[:1].repeat(n, *([1] * (x.dim() - 1))) if isinstance(x, torch.Tensor) and x.dim() else x


def batch_of(example_inputs: Any, n: int) -> tuple[Any, ...] | dict[str, Any]:
    """The inputs with batch size ``n``: dim 0 of every tensor cut to one row, then repeated.

    Positional inputs (a tensor or a tuple) come back as a tuple, keyword inputs (a dict, e.g. a
    Hugging Face ``input_ids``/``attention_mask`` batch) as a dict.
    """
    pos, kw = as_args(example_inputs)
    if kw:
        return {k: _rows(v, n) for k, v in kw.items()}
    return tuple(_rows(x, n) for x in pos)


def effective_macs(model: nn.Module, example_inputs: Any) -> int:
    """MACs the model really executes: dense MACs, minus the skipped zeros of its SparseLinear and
    SparseConv2d layers (each zero weight is skipped once per token / output position)."""
    from prunekit.core import count_macs

    tokens: dict[str, int] = {}
    handles = []
    for name, m in sparse_layers(model):
        rows = m.out_features if isinstance(m, SparseLinear) else m.out_channels

        def hook(mod: nn.Module, args: tuple[Any, ...], out: torch.Tensor, name: str = name,
                 rows: int = rows) -> None:  # fmt: skip
            # tokens (Linear) or output positions (a conv's (N, out, H, W) or (out, H, W)): numel / out
            tokens[name] = tokens.get(name, 0) + out.numel() // rows

        handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            pos, kw = as_args(example_inputs)
            model(*pos, **kw)
    finally:
        for h in handles:
            h.remove()
    macs = count_macs(plain_copy(model), example_inputs)
    for name, m in sparse_layers(model):
        w, mask = m.dense_weight_and_mask()
        macs -= (mask.numel() - int(mask.sum())) * tokens.get(name, 0)
    return macs


def weight_bytes(model: nn.Module) -> int:
    """Bytes of weights read per inference: dense tensors whole, CSR layers (Linear and Conv2d) as values +
    int32 indices."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in seen or t.dtype == torch.bool or t.layout != torch.strided:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    for _, m in sparse_linears(model):
        if m.inner.startswith("bsr"):
            total += m.blocks.values().numel() * m.blocks.values().element_size()
    return total


def activation_bytes(model: nn.Module, example_inputs: Any) -> int:
    """Bytes of the outputs of every leaf module in one forward (each activation counted once)."""
    total = 0

    def hook(mod: nn.Module, args: Any, out: Any) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * out.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            pos, kw = as_args(example_inputs)
            model(*pos, **kw)
    finally:
        for h in handles:
            h.remove()
    return total


def _caller(state: Callable[..., object], x: Any) -> Callable[[], object]:
    pos, kw = as_args(x)
    return lambda: state(*pos, **kw)


def _latencies(fns: Mapping[str, Callable[[], object]], rounds: int) -> dict[str, tuple[float, float]]:
    """Median and IQR (ms per call) of every function, timed in rotated rounds.

    A round runs each function for a short burst (about 5 ms, at least one call) and records the
    mean call time: a sub-millisecond model timed one call at a time, right after the other states
    ran, measures cold caches rather than itself.
    """

    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    with torch.inference_mode():
        bursts = {n: calls_per_burst(f, 5e-3) for n, f in fns.items()}
        for r in range(rounds):
            for i in range(len(names)):
                name = names[(i + r) % len(names)]
                fn, reps = fns[name], bursts[name]
                t0 = time.perf_counter()
                for _ in range(reps):
                    fn()
                times[name].append((time.perf_counter() - t0) * 1e3 / reps)
    out = {}
    for k, v in times.items():
        q = statistics.quantiles(v, n=4, method="inclusive") if len(v) > 1 else [v[0], v[0], v[0]]
        out[k] = (statistics.median(v), q[2] - q[0])
    return out


def model_state_report(states: Mapping[str, nn.Module | OnnxModel], example_inputs: Any, *, large_batch: int = 8,
                       rounds: int = 10, threads: int | None = None, precision: Mapping[str, Precision] | None = None
                       ) -> list[dict[str, Any]]:  # fmt: skip
    """Measure every state the same way; return one dict per state (see module docstring).

    Args:
        states: name -> model or :class:`OnnxModel`, e.g. from :func:`model_states`.
        example_inputs: inputs at batch size 1 (or more: the first row is used).
        large_batch: the second batch size timed.
        rounds: alternating timing rounds.
        threads: thread count (default: the current one).
        precision: arithmetic precision per state for the energy estimate (default fp32; int8 for a
            state named "quantized").
    """
    from prunekit.core import count_nonzeros, count_params, forward_peak_memory
    from prunekit.io import file_size

    precision = dict(precision or {})
    batches = {1: batch_of(example_inputs, 1), large_batch: batch_of(example_inputs, large_batch)}
    rows: list[dict[str, Any]] = []
    with num_threads(threads):
        fns: dict[str, Callable[[], object]] = {}
        for name, state in states.items():
            for b, x in batches.items():
                fns[f"{name}@{b}"] = _caller(state, x)
            if isinstance(state, nn.Module):
                state.eval()
        lat = _latencies(fns, rounds)
        for name, state in states.items():
            prec = precision.get(name, "int8" if name == "quantized" else "fp32")
            row: dict[str, Any] = {
                "state": name,
                "kind": "onnxruntime" if isinstance(state, OnnxModel) else "torch",
            }
            row["latency"] = {str(b): {"median_ms": lat[f"{name}@{b}"][0], "iqr_ms": lat[f"{name}@{b}"][1]}
                              for b in batches}  # fmt: skip
            torch_model = state.source if isinstance(state, OnnxModel) else state
            if isinstance(state, OnnxModel):
                row.update(file_bytes=os.path.getsize(state.path), peak_memory_bytes=None)
            else:
                row.update(file_bytes=_file_bytes(state, file_size),
                           peak_memory_bytes=forward_peak_memory(state, batches[1]))  # fmt: skip
            if torch_model is None:
                row.update(params=None, nonzeros=None, macs=None, energy=None)
                rows.append(row)
                continue
            plain = plain_copy(torch_model)
            # onnxruntime multiplies the zeros too; only SparseLinear / SparseConv2d layers skip them
            macs = (
                effective_macs(torch_model, batches[1])
                if torch_model is state
                else effective_macs(plain, batches[1])
            )
            wbytes = weight_bytes(state if torch_model is state else plain)
            if prec == "int8":
                wbytes //= 4
            energy = energy_estimate(macs=macs, weight_bytes=wbytes, precision=prec,
                                     activation_bytes=activation_bytes(torch_model, batches[1]))  # fmt: skip
            row.update(
                params=count_params(plain), nonzeros=count_nonzeros(plain), macs=macs, energy=energy.to_dict()
            )
            rows.append(row)
    return rows


def _file_bytes(model: nn.Module, file_size: Callable[[nn.Module], int]) -> int:
    if not any(True for _ in sparse_layers(model)):
        return file_size(model)
    from prunekit.accel.persist import save

    with tempfile.TemporaryDirectory(prefix="prunekit-size-") as d:
        return save(model, Path(d) / "m.safetensors").stat().st_size


def model_states(dense: nn.Module, pruned: nn.Module, example_inputs: Any, directory: str | os.PathLike[str], *,
                 accelerate_kwargs: Mapping[str, Any] | None = None, threads: int | None = None
                 ) -> dict[str, nn.Module | OnnxModel]:  # fmt: skip
    """The five states of a pruning run: dense, pruned (masked), accelerated, exported (ONNX fp32) and
    quantized (ONNX int8), the ONNX files written to ``directory``. Neither input model is changed.

    ``threads``: intra-op threads of the onnxruntime sessions (default: torch's current count); time
    them with the same count as the torch states (:func:`model_state_report`'s ``threads``).
    """
    import copy

    from prunekit.accel.engine import accelerate

    x = batch_of(example_inputs, 1)
    accelerated = copy.deepcopy(pruned)
    accelerate(accelerated, x, **dict(accelerate_kwargs or {}))
    states: dict[str, nn.Module | OnnxModel] = {"dense": dense, "pruned": pruned, "accelerated": accelerated}
    d = Path(directory)
    fp32 = export_onnx(pruned, x, d / "exported.onnx")
    int8 = export_onnx(pruned, x, d / "quantized.onnx", quantize="int8")
    states["exported"] = OnnxModel(fp32, source=pruned, threads=threads)
    states["quantized"] = OnnxModel(int8, source=pruned, threads=threads)
    return states


def deployment_states(dense: nn.Module, pruned: nn.Module, example_inputs: Any, directory: str | os.PathLike[str],
                      *, accuracy: Mapping[str, float | None] | None = None, threads: int | None = None
                      ) -> list[dict[str, Any]]:  # fmt: skip
    """:func:`model_states` measured by :func:`model_state_report` (what ``prunekit prune --states`` reports).

    ``accuracy``: state name -> accuracy measured elsewhere (a state not in it gets ``None``: not
    evaluated). ``threads``: for accelerate's timing, the onnxruntime sessions and the report.
    """
    states = model_states(dense, pruned, example_inputs, directory, accelerate_kwargs={"threads": threads},
                          threads=threads)  # fmt: skip
    rows = model_state_report(states, example_inputs, threads=threads)
    for row in rows:
        row["accuracy"] = (accuracy or {}).get(row["state"])
    return rows


__all__ = [
    "activation_bytes",
    "batch_of",
    "deployment_states",
    "effective_macs",
    "model_state_report",
    "model_states",
    "weight_bytes",
]
