"""The acceleration plan as data: which kernel each layer runs, measured where, on what shape.

A plan is JSON (it is stored in saved files)::

    {"format": "prunekit.accel", "version": 1,
     "fingerprint": "3f0c...", "hardware": {"cpu": ..., "threads": 2, ...},
     "layers": [{"name": "encoder.layer.0.intermediate.dense", "kernel": "csr",
                 "shape": [3072, 768], "tokens": 128, "sparsity": 0.9,
                 "timings_ms": {"dense": 1.9, "csr": 0.85}, "reason": "csr 2.24x faster"}, ...]}

A ``Conv2d`` layer's entry also has ``"weight_shape": [out, in, kh, kw]`` and ``"input_shape": [N, in, H, W]``
(its ``shape`` is the matrix the kernel multiplies, ``[out, in * kh * kw]``, and ``tokens`` the output
positions ``N * H_out * W_out``); Linear entries have neither key, so plans of earlier versions load as they were.

``fingerprint`` identifies the machine and thread count the timings are valid for; a plan loaded
elsewhere is re-measured (:func:`prunekit.accel.load`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from prunekit.core import HardwareInfo, hardware_info
from prunekit.errors import FormatError
from prunekit.kernels import jit

PLAN_FORMAT = "prunekit.accel"
PLAN_VERSION = 1


def fingerprint(info: HardwareInfo | None = None) -> str:
    """A short hash of what makes timings comparable: CPU model, cores, threads, OS, torch and numba versions.

    Example:
        >>> fingerprint(hardware_info(threads=1)) == fingerprint(hardware_info(threads=1))
        True
    """
    info = info if info is not None else hardware_info()
    key = {k: v for k, v in info.to_dict().items() if k != "python"}
    key["numba"] = jit.version()  # installing or removing numba changes which kernels exist
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True, kw_only=True)
class LayerChoice:
    """The kernel chosen for one Linear or Conv2d layer and the timings that chose it.

    Attributes:
        name: the module's name in the model.
        kernel: the kernel it runs (``"dense"`` = left as it was).
        shape: ``(out_features, in_features)``; a conv: ``(out, in * kh * kw)`` (its weight as a matrix).
        tokens: rows of the input it was measured on (batch x sequence); a conv: output positions
            (``N * H_out * W_out``).
        sparsity: fraction of masked (or zero) weights.
        timings_ms: median milliseconds of every candidate kernel (empty if not timed).
        reason: why this kernel (or why the layer stayed dense).
        transposed_output: the sparse layer returns its output as a transposed view (no copy),
            because it feeds another sparse layer; otherwise the output is contiguous.
        weight_shape: a conv's ``(out, in, kh, kw)``; ``()`` for a Linear layer.
        input_shape: a conv's recorded input shape ``(N, in, H, W)`` (re-measured on it); ``()`` for Linear.
    """

    name: str
    kernel: str
    shape: tuple[int, int]
    tokens: int
    sparsity: float
    timings_ms: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    transposed_output: bool = False
    weight_shape: tuple[int, ...] = ()
    input_shape: tuple[int, ...] = ()

    @property
    def kind(self) -> str:
        """``"conv2d"`` or ``"linear"``."""
        return "conv2d" if self.weight_shape else "linear"

    @property
    def speedup(self) -> float:
        """Dense time over chosen time (1.0 when not timed or left dense)."""
        dense, mine = self.timings_ms.get("dense"), self.timings_ms.get(self.kernel)
        return dense / mine if dense and mine else 1.0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "kernel": self.kernel, "shape": list(self.shape), "tokens": self.tokens,
            "sparsity": self.sparsity, "timings_ms": dict(self.timings_ms), "reason": self.reason,
            "transposed_output": self.transposed_output,
        }  # fmt: skip
        if self.weight_shape:
            out.update(weight_shape=list(self.weight_shape), input_shape=list(self.input_shape))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerChoice:
        try:
            shape = tuple(int(s) for s in data["shape"])
            if len(shape) != 2:
                raise ValueError(f"shape {shape} is not (out, in)")
            weight_shape = tuple(int(s) for s in data.get("weight_shape", ()))
            input_shape = tuple(int(s) for s in data.get("input_shape", ()))
            if weight_shape and (len(weight_shape) != 4 or len(input_shape) not in (3, 4)):
                raise ValueError(f"conv weight_shape {weight_shape} / input_shape {input_shape} are not 4-D")
            return cls(name=str(data["name"]), kernel=str(data["kernel"]), shape=(shape[0], shape[1]),
                       tokens=int(data["tokens"]), sparsity=float(data["sparsity"]),
                       timings_ms={str(k): float(v) for k, v in dict(data.get("timings_ms", {})).items()},
                       reason=str(data.get("reason", "")),
                       transposed_output=bool(data.get("transposed_output", False)),
                       weight_shape=weight_shape, input_shape=input_shape)  # fmt: skip
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(
                f"acceleration plan entry {data!r} is malformed ({e}); re-run accelerate()"
            ) from e


@dataclass(frozen=True, kw_only=True)
class AccelerationResult:
    """What :func:`prunekit.accel.engine` did: per-layer choices and end-to-end latencies.

    Attributes:
        layers: one :class:`LayerChoice` per Linear / Conv2d layer considered, in module order.
        skipped: ``(name, reason)`` of Linear / Conv2d layers not considered (tied weight, not called, ...).
        hardware: where the timings were taken.
        fingerprint: :func:`fingerprint` of ``hardware``.
        dense_ms: median latency of the model before (masked dense), or ``None`` if not measured.
        accelerated_ms: median latency after, or ``None``.
        max_abs_error: largest output difference to the masked model on ``example_inputs``.
    """

    layers: tuple[LayerChoice, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    hardware: HardwareInfo
    fingerprint: str
    dense_ms: float | None = None
    accelerated_ms: float | None = None
    max_abs_error: float = 0.0

    @property
    def replaced(self) -> tuple[LayerChoice, ...]:
        """The layers that now run a non-dense kernel."""
        return tuple(c for c in self.layers if c.kernel != "dense")

    @property
    def speedup(self) -> float | None:
        """End-to-end dense / accelerated latency, if both were measured."""
        if self.dense_ms is None or not self.accelerated_ms:
            return None
        return self.dense_ms / self.accelerated_ms

    def to_dict(self) -> dict[str, Any]:
        """The plan (see module docstring) plus end-to-end numbers."""
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "fingerprint": self.fingerprint,
            "hardware": self.hardware.to_dict(),
            "layers": [c.to_dict() for c in self.layers],
            "skipped": [list(s) for s in self.skipped],
            "dense_ms": self.dense_ms,
            "accelerated_ms": self.accelerated_ms,
            "max_abs_error": self.max_abs_error,
        }

    @classmethod
    def from_dict(cls, data: Any) -> AccelerationResult:
        """Inverse of :meth:`to_dict`.

        Raises:
            FormatError: not a plan, or another version.
        """
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise FormatError(f"not an acceleration plan (format {data.get('format') if isinstance(data, dict) else data!r}, "
                              f"expected {PLAN_FORMAT!r}); re-run prunekit.accel.engine()")  # fmt: skip
        if data.get("version") != PLAN_VERSION:
            raise FormatError(f"acceleration plan version {data.get('version')!r}, this prunekit reads version "
                              f"{PLAN_VERSION}; upgrade prunekit or re-run accelerate()")  # fmt: skip
        try:
            hw = HardwareInfo(**data["hardware"])
            skipped = tuple((str(a), str(b)) for a, b in data.get("skipped", []))
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"acceleration plan header is malformed ({e}); re-run accelerate()") from e
        return cls(
            layers=tuple(LayerChoice.from_dict(c) for c in data.get("layers", [])),
            skipped=skipped,
            hardware=hw,
            fingerprint=str(data.get("fingerprint", "")),
            dense_ms=data.get("dense_ms"),
            accelerated_ms=data.get("accelerated_ms"),
            max_abs_error=float(data.get("max_abs_error", 0.0)),
        )

    def __str__(self) -> str:
        lines = [
            f"accelerate: {len(self.replaced)} of {len(self.layers)} Linear/Conv2d layers replaced ({self.hardware})"
        ]
        if self.speedup is not None:
            lines.append(
                f"end to end: {self.dense_ms:.3f} ms -> {self.accelerated_ms:.3f} ms ({self.speedup:.2f}x)"
            )
        width = max([len(c.name) for c in self.layers] + [5])
        for c in self.layers:
            layout = ", transposed output" if c.transposed_output else ""
            shape = "x".join(map(str, c.weight_shape or c.shape))
            lines.append(f"  {c.name:<{width}}  {shape}  tokens {c.tokens:>5}  "
                         f"sparsity {c.sparsity:6.1%}  {c.kernel:<14} {c.speedup:5.2f}x  {c.reason}{layout}")  # fmt: skip
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped]
        return "\n".join(lines)


PLAN_ATTR = "_prunekit_accel"


def attach_plan(model: Any, result: AccelerationResult) -> None:
    """Remember the plan on the model (read by :func:`save`), as ``_prunekit_plan`` is for surgery."""
    object.__setattr__(model, PLAN_ATTR, result.to_dict())


def attached_plan(model: Any) -> AccelerationResult | None:
    data = getattr(model, PLAN_ATTR, None)
    return AccelerationResult.from_dict(data) if data is not None else None


__all__ = [
    "PLAN_ATTR",
    "PLAN_FORMAT",
    "PLAN_VERSION",
    "AccelerationResult",
    "LayerChoice",
    "attach_plan",
    "attached_plan",
    "fingerprint",
]
