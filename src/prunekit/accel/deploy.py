"""Deployable artifacts: ONNX (+ onnxruntime int8), ``torch.export``, and pruning + int8 in one call.

::

    pruned model ──deepcopy, de-accelerate, make_permanent──► plain dense model (zeros baked in)
                 ──torch.onnx.export(dynamo=True, dynamic batch)──► model.onnx (fp32)
                 ──onnxruntime.quantization.quantize_dynamic──► model.int8.onnx (int8 weights)

Why onnxruntime's quantization: it quantizes the very file that is deployed and measured (the
ONNX graph onnxruntime runs), needs no calibration data in its dynamic mode (weights int8 offline,
activations per batch at run time: the right trade for Linear-heavy models), runs on any x86/ARM
CPU with its MLAS int8 kernels, and is maintained with onnxruntime. ``torch.ao.quantization`` is
deprecated in favour of torchao, whose CPU int8 paths need ``torch.compile`` at run time and give no
portable artifact. Sparse layouts cannot be exported (ONNX Runtime densifies sparse initializers at
load, torch.export rejects them), so exports carry the zeros densely; structured pruning is what
makes an exported model smaller and faster.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from prunekit.accel.engine import as_args, deaccelerate
from prunekit.errors import ConfigError, FormatError

Quantize = Literal["int8"]
CONFIG_VERSION = 1


def plain_copy(model: nn.Module) -> nn.Module:
    """A deepcopy with SparseLinear / SparseConv2d layers put back and masks baked in (exportable), in eval mode."""
    from prunekit.core import make_permanent

    clone = copy.deepcopy(model)
    deaccelerate(clone)
    make_permanent(clone)
    return clone.eval()


@contextlib.contextmanager
def _quiet() -> Any:
    """The exporters print progress, emit deprecation warnings and log warnings (torch.onnx: "torchvision is
    not installed", onnxruntime's quantizer: "consider pre-processing") that say nothing about the user's
    model; library code must do none of that."""
    import logging

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def export_onnx(model: nn.Module, example_inputs: Any, path: str | os.PathLike[str], *,
                quantize: Quantize | None = None, dynamic_batch: bool = True) -> Path:  # fmt: skip
    """Export ``model`` (pruned, accelerated or not) to ONNX; optionally int8-quantize; return the path.

    The user's model is not changed (a baked copy is exported). With ``quantize="int8"`` the
    file at ``path`` is the quantized model (onnxruntime dynamic quantization, int8 weights).

    Args:
        model: the model.
        example_inputs: a tensor or tuple of tensors (positional inputs), or a dict of keyword inputs
            (a Hugging Face batch: ``input_ids``, ``attention_mask``, ...; the ONNX inputs get those
            names, and when every keyword tensor is 2-D with the same dim 1 — tokens — that dim is
            dynamic too, "seq").
        path: the ``.onnx`` file to write.
        quantize: ``None`` (float) or ``"int8"``.
        dynamic_batch: make dim 0 of every input dynamic ("batch").

    Raises:
        ConfigError: bad ``quantize``, or onnx/onnxscript/onnxruntime missing.
    """
    if quantize not in (None, "int8"):
        raise ConfigError(f"quantize must be None or 'int8', got {quantize!r}")
    pos, kw = as_args(example_inputs)
    path = Path(path)
    plain = plain_copy(model)
    dynamic: Any = None
    if kw:
        tensors = [v for v in kw.values() if isinstance(v, torch.Tensor)]
        tokens = bool(tensors) and all(t.dim() == 2 and t.shape[1] == tensors[0].shape[1] for t in tensors)
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
        dims = ({0: batch} if dynamic_batch else {}) | ({1: seq} if tokens else {})
        dynamic = {k: dict(dims) if isinstance(v, torch.Tensor) and v.dim() else None for k, v in kw.items()}
        if dynamic_batch:
            kw = dict(zip(kw, batch_of_two(tuple(kw.values())), strict=True))
    elif dynamic_batch:
        dynamic = tuple({0: torch.export.Dim("batch")} if isinstance(x, torch.Tensor) and x.dim() else None
                        for x in pos)  # fmt: skip
        pos = batch_of_two(pos)
    float_path = path if quantize is None else path.with_name(path.stem + ".fp32.onnx")
    try:
        with _quiet():
            program = torch.onnx.export(plain, pos, kwargs=kw or None, dynamo=True, verbose=False,
                                        dynamic_shapes=dynamic)  # fmt: skip
            assert program is not None
            program.save(str(float_path))
    except ImportError as e:
        raise ConfigError(f"ONNX export needs onnx and onnxscript ({e}); pip install onnx onnxscript") from e
    if quantize == "int8":
        try:
            from onnxruntime.quantization import QuantType, quantize_dynamic
        except ImportError as e:
            raise ConfigError(f"int8 quantization needs onnxruntime ({e}); pip install onnxruntime") from e
        try:
            with _quiet():
                # reduce_range: 7-bit weights. x86 CPUs without VNNI (AVX2, AVX-512 before Cascade Lake)
                # multiply u8 x s8 pairs into a saturating int16 (pmaddubsw): with full-range weights the
                # error was 21% of the output range on an AVX2 EPYC, 1.6% with reduce_range. A file may be
                # run on another CPU than the one it was exported on, so it is always set.
                quantize_dynamic(str(float_path), str(path), weight_type=QuantType.QInt8, reduce_range=True)
        finally:
            float_path.unlink(missing_ok=True)
    return path


class OnnxModel:
    """An onnxruntime session on a file, called like the PyTorch model (tensors in, tensors out).

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads of the session (default: ``torch.get_num_threads()``).
        source: the PyTorch model it was exported from, if known (reports count its parameters).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, threads: int | None = None, source: nn.Module | None = None
    ) -> None:
        self.path = Path(path)
        self.source = source  # the PyTorch model it was exported from (for counts in reports)
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ConfigError(f"running ONNX needs onnxruntime ({e}); pip install onnxruntime") from e
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise FormatError(f"{path}: onnxruntime cannot load it ({e})") from e
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *inputs: torch.Tensor, **named: torch.Tensor) -> list[torch.Tensor]:
        """Positional inputs in the file's input order, or keyword inputs by name (those the file has)."""
        if named:
            missing = [n for n in self.input_names if n not in named]
            if inputs or missing:
                raise ConfigError(
                    f"{self.path.name} takes the inputs {self.input_names} by name; missing {missing}"
                )
            feed = {n: named[n].detach().cpu().numpy() for n in self.input_names}
        else:
            feed = {n: x.detach().cpu().numpy() for n, x in zip(self.input_names, inputs, strict=True)}
        return [torch.from_numpy(y) for y in self.session.run(None, feed)]


def batch_of_two(pos: tuple[Any, ...]) -> tuple[Any, ...]:
    """Example inputs with a batch of at least 2: ``torch.export`` specialises a size-1 dim to the constant 1,
    so a batch-1 example would give a model that only takes batch 1."""
    return tuple(
        torch.cat([x, x]) if isinstance(x, torch.Tensor) and x.dim() and x.shape[0] == 1 else x for x in pos
    )


def export_program(model: nn.Module, example_inputs: Any, *, dynamic_batch: bool = True) -> Any:
    """``torch.export`` of the baked model (a ``torch.export.ExportedProgram``); the model is not changed.

    Save it with ``torch.export.save`` and load it with ``torch.export.load`` (torch's own format).
    """
    pos, kw = as_args(example_inputs)
    plain = plain_copy(model)
    dynamic = None
    if dynamic_batch and not kw:
        pos = batch_of_two(pos)
        dynamic = tuple({0: torch.export.Dim("batch", min=1)} if isinstance(x, torch.Tensor) and x.dim() else None
                        for x in pos)  # fmt: skip
    with _quiet():
        return torch.export.export(plain, pos, kw or None, dynamic_shapes=dynamic)


@dataclass(frozen=True, kw_only=True)
class PruneQuantizeConfig:
    """One recipe step: prune (weights or channels), bake, export to ONNX and quantize to int8.

    Attributes:
        sparsity: unstructured sparsity for :func:`prunekit.prune_weights` (``None``: no weight pruning).
        pattern: an ``"N:M"`` pattern instead of / on top of ``sparsity``.
        channels: channel ratio for :func:`prunekit.prune_channels` (``None``: no channel pruning).
        quantize: ``"int8"`` or ``None`` (float ONNX).
        dynamic_batch: dynamic batch dimension in the ONNX file.
    """

    sparsity: float | None = None
    pattern: str | None = None
    channels: float | None = None
    quantize: Quantize | None = "int8"
    dynamic_batch: bool = True

    def __post_init__(self) -> None:
        from prunekit.weights import WeightPruningConfig

        if self.sparsity is not None or self.pattern is not None:
            WeightPruningConfig(sparsity=self.sparsity, pattern=self.pattern)  # validates both
        if self.channels is not None and (
            isinstance(self.channels, bool) or not 0.0 <= float(self.channels) < 1.0
        ):
            raise ConfigError(f"channels must be a ratio in [0, 1) or None, got {self.channels!r}")
        if self.quantize not in (None, "int8"):
            raise ConfigError(f"quantize must be 'int8' or None, got {self.quantize!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"version": CONFIG_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruneQuantizeConfig:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: another version or unknown keys.
        """
        data = dict(data)
        version = data.pop("version", None)
        if version != CONFIG_VERSION:
            raise ConfigError(
                f"PruneQuantizeConfig version {version!r}, this prunekit reads {CONFIG_VERSION}"
            )
        unknown = set(data) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ConfigError(
                f"unknown PruneQuantizeConfig keys {sorted(unknown)}; valid: {sorted(cls.__dataclass_fields__)}"
            )
        return cls(**data)


def prune_and_quantize(model: nn.Module, example_inputs: Any, path: str | os.PathLike[str],
                       config: PruneQuantizeConfig | None = None) -> Path:  # fmt: skip
    """Prune ``model`` in place as ``config`` says, then write its int8 ONNX file; return the path.

    Example:
        >>> import tempfile, os, torch, prunekit as pk
        >>> model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
        >>> cfg = PruneQuantizeConfig(channels=0.5)
        >>> path = prune_and_quantize(model, torch.randn(2, 32), os.path.join(tempfile.mkdtemp(), "m.onnx"), cfg)
        >>> model[0].out_features, path.stat().st_size > 0
        (32, True)
    """
    import prunekit.structured as structured
    import prunekit.weights as weights

    cfg = config or PruneQuantizeConfig()
    if cfg.channels is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "kept channels touched by an unknown op" notes
            structured.prune_channels(model, example_inputs, cfg.channels)
    if cfg.sparsity is not None or cfg.pattern is not None:
        weights.prune_weights(model, cfg.sparsity, pattern=cfg.pattern)
    return export_onnx(model, example_inputs, path, quantize=cfg.quantize, dynamic_batch=cfg.dynamic_batch)


__all__ = [
    "OnnxModel",
    "PruneQuantizeConfig",
    "export_onnx",
    "export_program",
    "plain_copy",
    "prune_and_quantize",
]
