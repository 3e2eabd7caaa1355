"""Energy per inference: an ESTIMATE from operation counts and published per-operation energies.

Nothing is measured: the numbers are MACs and bytes moved times the 45 nm energies of
M. Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014::

    operation                     energy (pJ)
    32-bit float multiply           3.7
    32-bit float add                0.9
    8-bit int multiply              0.2
    8-bit int add                   0.03
    32-bit word from SRAM (8 KB)    5
    32-bit word from DRAM         640

    compute    = MACs x (multiply + add)                 at the model's precision
    weights    = weight words x DRAM                     streamed once per inference
    activations = activation words x 2 x SRAM            written once, read once, on chip

The model ignores caches larger than 8 KB, data reuse across a batch, static power and everything
newer than 45 nm: use it to compare model states with each other (dense vs pruned vs int8), not as
a wattmeter reading. The point it makes is Horowitz's: a DRAM word costs ~140 float MACs, so what a
pruned model saves in bytes moved matters more than what it saves in arithmetic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from prunekit.errors import ConfigError

Precision = Literal["fp32", "int8"]
NOTE = (
    "estimate from MACs and bytes moved with Horowitz (ISSCC 2014) 45 nm per-operation energies; not measured"
)


@dataclass(frozen=True, kw_only=True)
class EnergyCosts:
    """Per-operation energies in picojoules (defaults: Horowitz 2014, 45 nm)."""

    fp32_mult: float = 3.7
    fp32_add: float = 0.9
    int8_mult: float = 0.2
    int8_add: float = 0.03
    sram_word: float = 5.0
    dram_word: float = 640.0

    def mac(self, precision: Precision) -> float:
        return self.fp32_mult + self.fp32_add if precision == "fp32" else self.int8_mult + self.int8_add


@dataclass(frozen=True, kw_only=True)
class EnergyEstimate:
    """Estimated energy of one inference (picojoules), split by where it goes.

    Attributes:
        macs: multiply-accumulates counted.
        weight_bytes: bytes of weights read from DRAM (values, plus indices for sparse formats).
        activation_bytes: bytes of activations written (each also read once).
        precision: arithmetic precision of the MACs.
        compute_pj / weights_pj / activations_pj / total_pj: the split and its sum.
        note: says that this is an estimate and where the numbers come from.
    """

    macs: int
    weight_bytes: int
    activation_bytes: int
    precision: Precision
    compute_pj: float
    weights_pj: float
    activations_pj: float
    total_pj: float
    note: str = NOTE

    @property
    def total_mj(self) -> float:
        """Total in millijoules."""
        return self.total_pj * 1e-9

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"total_mj": self.total_mj}


def energy_estimate(*, macs: int, weight_bytes: int, activation_bytes: int = 0, precision: Precision = "fp32",
                    costs: EnergyCosts | None = None) -> EnergyEstimate:  # fmt: skip
    """Estimate the energy of one inference from its MACs and the bytes it moves (see module docstring).

    Args:
        macs: multiply-accumulates of one inference (for a sparse kernel: the non-zero MACs).
        weight_bytes: bytes of weights read per inference (a sparse format counts its indices).
        activation_bytes: bytes of activations produced per inference.
        precision: ``"fp32"`` or ``"int8"`` arithmetic.
        costs: per-operation energies (default Horowitz 2014).

    Raises:
        ConfigError: negative counts or an unknown precision.

    Example:
        >>> e = energy_estimate(macs=1_000_000, weight_bytes=4_000_000)  # a 1000x1000 fp32 layer, 1 token
        >>> round(e.compute_pj / 1e6, 2), round(e.weights_pj / 1e6, 1)  # microjoules: arithmetic vs DRAM
        (4.6, 640.0)
    """
    if precision not in ("fp32", "int8"):
        raise ConfigError(f"precision must be 'fp32' or 'int8', got {precision!r}")
    if min(macs, weight_bytes, activation_bytes) < 0:
        raise ConfigError(
            f"macs and byte counts must be >= 0, got {macs}, {weight_bytes}, {activation_bytes}"
        )
    c = costs or EnergyCosts()
    compute = macs * c.mac(precision)
    weights = weight_bytes / 4 * c.dram_word
    acts = activation_bytes / 4 * 2 * c.sram_word
    return EnergyEstimate(macs=int(macs), weight_bytes=int(weight_bytes), activation_bytes=int(activation_bytes),
                          precision=precision, compute_pj=compute, weights_pj=weights, activations_pj=acts,
                          total_pj=compute + weights + acts)  # fmt: skip


__all__ = ["NOTE", "EnergyCosts", "EnergyEstimate", "energy_estimate"]
