"""Weight-importance criteria: higher score = more important = kept.

A criterion is an object with a small protocol (:class:`WeightCriterion`)::

    prepare(model, targets, calibration)   once, before scoring (collect statistics over data)
    score(target, rows) -> Tensor          importance of target.weight[rows]; called several
                                           times per weight, so it must be deterministic
    release()                              free what prepare collected

``score`` works on a slice of rows (dim 0) so that global pruning scores a huge model in
bounded memory. Strings are shortcuts resolved by :func:`get_criterion`:

=========== ============================================ ============ =========
name        score                                        needs data   loss_fn
=========== ============================================ ============ =========
magnitude   ``|W|`` (alias ``l1``)                       no           no
random      seeded uniform noise                         no           no
taylor      ``|g * W|``, g = gradient summed over data   yes          yes
snip        ``|g * W| / sum |g * W|`` (SNIP saliency)    yes          yes
wanda       ``|W| * ||X_in||_2`` per input feature       yes          no
=========== ============================================ ============ =========

Write your own by subclassing :class:`WeightCriterion`, and optionally register a string for it:

    >>> import torch
    >>> class Squared(WeightCriterion):
    ...     name = "squared"
    ...     def score(self, target, rows):
    ...         return target.weight.detach()[rows].float() ** 2
    >>> register_criterion("squared", Squared)
    >>> type(get_criterion("squared")).__name__
    'Squared'
"""

from __future__ import annotations

import itertools
import logging
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from prunekit.core import (
    LossFn,
    Target,
    criterion_registry,
    inputs_only,
    is_hf_conv1d,
    register_criterion,
    split_batch,
)
from prunekit.errors import ConfigError, DataRequiredError

logger = logging.getLogger(__name__)



@dataclass(frozen=True, kw_only=True)
class Calibration:
    """Data for data-aware criteria: an iterable of ``(inputs, targets)`` (or a DataLoader).

    ``inputs`` may be a tensor, a tuple of positional tensors or a dict of keyword tensors.
    At most ``max_batches`` batches are used.
    """

    data: Iterable[Any] | None = None
    loss_fn: LossFn | None = None
    max_batches: int | None = 8

    def __post_init__(self) -> None:
        if self.max_batches is not None and (
            isinstance(self.max_batches, bool)
            or not isinstance(self.max_batches, int)
            or self.max_batches < 1
        ):
            raise ConfigError(f"max_batches must be a positive int or None (all), got {self.max_batches!r}")
        if self.loss_fn is not None and not callable(self.loss_fn):
            raise ConfigError(f"loss_fn must be callable (outputs, targets) -> scalar, got {self.loss_fn!r}")

    def batches(self, needs_targets: bool) -> Iterator[tuple[Any, Any]]:
        """Up to ``max_batches`` ``(inputs, targets)`` pairs; raises if the data is empty or malformed.

        Without ``needs_targets`` a batch may be bare inputs (a tensor, a dict / HF ``BatchEncoding``,
        a 1-tuple, as ``DataLoader(TensorDataset(x))`` yields); its targets are then ``None``.
        """
        if self.data is None:
            raise DataRequiredError("no data given")
        count = 0
        data = [self.data] if isinstance(self.data, (torch.Tensor, Mapping)) else self.data
        iterator = iter(data)
        for batch in itertools.islice(iterator, self.max_batches):
            if not needs_targets:
                try:
                    inputs, targets = inputs_only(batch), None
                except ConfigError as e:
                    raise DataRequiredError(str(e)) from e
            elif isinstance(batch, Mapping) and "labels" in batch:
                inputs, targets = split_batch(batch)
            elif isinstance(batch, (tuple, list)) and len(batch) == 2:
                inputs, targets = batch
            else:
                raise DataRequiredError(
                    f"each batch of data= must be a pair (inputs, targets); got {type(batch).__name__}"
                    + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
                    + ". Wrap your data, e.g. data=[(x, y)] or a DataLoader of a TensorDataset(x, y)."
                )
            count += 1
            yield inputs, targets
        if count == 0:
            raise DataRequiredError("data= yielded no batches; pass at least one (inputs, targets) batch")
        logger.info("calibrated on %d batch(es) of data= (max_batches=%s)", count, self.max_batches)


def token_mask(inputs: Any) -> torch.Tensor | None:
    """The ``(batch, tokens)`` attention mask of a dict batch (``True`` = a real token), else ``None``."""
    if isinstance(inputs, Mapping):
        mask = inputs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.ndim == 2:
            return mask != 0
    return None


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _forward(model: nn.Module, inputs: Any) -> Any:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    inputs = _to_device(inputs, device)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


class WeightCriterion(ABC):
    """Protocol of a weight-importance criterion (subclass it to write your own).

    Attributes:
        name: the registry name, shown in results.
        requires_data: ``prune_weights`` raises :class:`DataRequiredError` without ``data=``.
        requires_loss_fn: ``prune_weights`` raises without ``loss_fn=``.
        default_scope: the comparison group ``prune_weights`` uses when ``scope`` is not given.
    """

    name: ClassVar[str] = "custom"
    default_scope: ClassVar[Literal["global", "layer", "row"]] = "global"
    requires_data: ClassVar[bool] = False
    requires_loss_fn: ClassVar[bool] = False

    def prepare(self, model: nn.Module, targets: Sequence[Target], calibration: Calibration) -> None:  # noqa: B027
        """Collect what :meth:`score` needs; the default needs nothing."""

    @abstractmethod
    def score(self, target: Target, rows: slice) -> torch.Tensor:
        """Importance of ``target.weight[rows]``: a float tensor of that shape (higher = keep)."""

    def release(self) -> None:  # noqa: B027
        """Free what :meth:`prepare` collected."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Magnitude(WeightCriterion):
    """``|W|`` (L1 magnitude)."""

    name = "magnitude"

    def score(self, target: Target, rows: slice) -> torch.Tensor:
        return target.weight.detach()[rows].abs()


class RandomScore(WeightCriterion):
    """Uniform random scores, reproducible from ``seed`` (a baseline)."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def score(self, target: Target, rows: slice) -> torch.Tensor:
        start = rows.start or 0
        key = zlib.crc32(f"{self.seed}:{target.fqn}:{start}".encode())
        gen = torch.Generator().manual_seed(key)
        shape = target.weight[rows].shape
        return torch.rand(shape, generator=gen).to(target.weight.device)

    def __repr__(self) -> str:
        return f"RandomScore(seed={self.seed})"


class _GradientCriterion(WeightCriterion):
    """Accumulates the loss gradient of every target weight over the calibration batches."""

    requires_data = True
    requires_loss_fn = True

    def __init__(self) -> None:
        self._grads: dict[str, torch.Tensor] = {}

    def prepare(self, model: nn.Module, targets: Sequence[Target], calibration: Calibration) -> None:
        assert calibration.loss_fn is not None
        params = list({id(p): p for p in model.parameters()}.values())
        saved_grads = [p.grad for p in params]
        saved_flags = [p.requires_grad for p in params]
        wanted = {id(t.weight) for t in targets}
        was_training = model.training
        try:
            model.eval()  # no BatchNorm statistics update, no dropout noise
            for p in params:
                p.grad = None
                p.requires_grad_(id(p) in wanted)
            with torch.enable_grad():
                for inputs, labels in calibration.batches(needs_targets=True):
                    loss = calibration.loss_fn(_forward(model, inputs), _to_device(labels, params[0].device))
                    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                        raise ConfigError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}")
                    loss.backward()  # type: ignore[no-untyped-call]
            self._grads = {
                t.fqn: (t.weight.grad if t.weight.grad is not None else torch.zeros_like(t.weight)).detach()
                for t in targets
            }
        finally:
            for p, g, flag in zip(params, saved_grads, saved_flags, strict=True):
                p.grad = g
                p.requires_grad_(flag)
            model.train(was_training)
        self._after_prepare(targets)

    def _after_prepare(self, targets: Sequence[Target]) -> None:
        pass

    def _gw(self, target: Target, rows: slice) -> torch.Tensor:
        grad = self._grads.get(target.fqn)
        if grad is None:
            raise ConfigError(f"{self.name}: no gradient collected for {target.fqn!r}; call prepare() first")
        return (grad[rows] * target.weight.detach()[rows]).abs()

    def release(self) -> None:
        self._grads = {}


class Taylor(_GradientCriterion):
    """First-order Taylor importance ``|g * W|``: the loss change estimate of removing each weight."""

    name = "taylor"

    def score(self, target: Target, rows: slice) -> torch.Tensor:
        return self._gw(target, rows)


class Snip(_GradientCriterion):
    """SNIP connection sensitivity (Lee et al. 2019): ``|g * W|`` normalised to sum to 1 over all targets."""

    name = "snip"

    def __init__(self) -> None:
        super().__init__()
        self._total = 1.0

    def _after_prepare(self, targets: Sequence[Target]) -> None:
        total = sum(float((self._grads[t.fqn] * t.weight.detach()).abs().sum()) for t in targets)
        self._total = total if total > 0 else 1.0

    def score(self, target: Target, rows: slice) -> torch.Tensor:
        return self._gw(target, rows) / self._total


class Wanda(WeightCriterion):
    """Wanda (Sun et al. 2023): ``|W_ij| * ||X_j||_2``, X_j the j-th input feature over all tokens.

    For convolutions the norm is taken per input channel (over batch and space) and shared by
    every kernel position; grouped convolutions use the channels of their own group. Calibration
    data needs no targets; tokens where a dict batch's ``attention_mask`` is 0 (padding) are left out.
    By default weights compete within each output row (``scope="row"``), as in the paper.
    """

    name = "wanda"
    default_scope: ClassVar[Literal["global", "layer", "row"]] = (
        "row"  # the paper compares weights within each output row
    )
    requires_data = True

    def __init__(self) -> None:
        self._norms: dict[str, torch.Tensor] = {}

    def prepare(self, model: nn.Module, targets: Sequence[Target], calibration: Calibration) -> None:
        sq: dict[str, torch.Tensor] = {}
        handles = []
        current: list[torch.Tensor | None] = [None]  # the attention mask of the batch running

        def hook_for(t: Target) -> Callable[..., None]:
            def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
                if not args or not isinstance(args[0], torch.Tensor):
                    return
                x = args[0].detach().float()
                pad = current[0]
                if pad is not None and x.ndim == 3 and tuple(x.shape[:2]) == tuple(pad.shape):
                    x = x * pad.to(x.device, x.dtype).unsqueeze(-1)  # padding tokens add nothing
                if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                    dims = [d for d in range(x.ndim) if d != (1 if x.ndim == module.weight.ndim else 0)]
                else:  # Linear / GPT-2 Conv1D: features last
                    dims = list(range(x.ndim - 1))
                s = x.pow(2).sum(dim=dims) if dims else x.pow(2)
                sq[t.fqn] = sq[t.fqn] + s if t.fqn in sq else s

            return hook

        was_training = model.training
        try:
            for t in targets:
                handles.append(t.module.register_forward_pre_hook(hook_for(t)))
            model.eval()
            with torch.no_grad():
                for inputs, _ in calibration.batches(needs_targets=False):
                    current[0] = token_mask(inputs)
                    _forward(model, inputs)
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        self._norms = {}
        for t in targets:
            norm = sq[t.fqn].sqrt() if t.fqn in sq else torch.zeros(t.weight.shape[t.in_dim])
            self._norms[t.fqn] = self._broadcast(t, norm)

    @staticmethod
    def _broadcast(t: Target, norm: torch.Tensor) -> torch.Tensor:
        w = t.weight
        if is_hf_conv1d(t.module):  # (in, out)
            return norm.reshape(-1, 1)
        groups = int(getattr(t.module, "groups", 1))
        if groups > 1:  # (out, in/groups, *k): output o reads input group o // (out/groups)
            per_group = norm.reshape(groups, -1)
            scale = per_group.repeat_interleave(w.shape[0] // groups, dim=0)  # (out, in/groups)
        else:
            scale = norm.reshape(1, -1)
        return scale.reshape(*scale.shape, *([1] * (w.ndim - 2)))

    def score(self, target: Target, rows: slice) -> torch.Tensor:
        norm = self._norms.get(target.fqn)
        if norm is None:
            raise ConfigError(f"wanda: no activations collected for {target.fqn!r}; call prepare() first")
        scale = norm[rows] if norm.shape[0] > 1 else norm
        weight = target.weight.detach()[rows]
        return weight.abs() * scale.to(weight.device, weight.dtype)

    def release(self) -> None:
        self._norms = {}


_REGISTRY = criterion_registry("weight")
for _name, _factory in (
    ("magnitude", Magnitude),
    ("l1", Magnitude),
    ("random", RandomScore),
    ("taylor", Taylor),
    ("snip", Snip),
    ("wanda", Wanda),
):
    _REGISTRY.register(_name, _factory, overwrite=False)


def criterion_names() -> list[str]:
    """The registered weight criterion names, sorted."""
    return _REGISTRY.names()


def get_criterion(spec: str | WeightCriterion) -> WeightCriterion:
    """Resolve ``"magnitude"`` etc. (or pass through a criterion object).

    Raises:
        ConfigError: an unknown name (the message lists the valid ones) or a wrong type.
    """
    if isinstance(spec, WeightCriterion):
        return spec
    if isinstance(spec, str):
        if spec.lower() not in _REGISTRY:
            raise ConfigError(_REGISTRY.unknown_message(spec) + ", or pass a WeightCriterion object")
        made = _REGISTRY[spec.lower()]()
        if not isinstance(made, WeightCriterion):
            raise ConfigError(
                f"the factory registered as criterion {spec!r} made a {type(made).__name__}, not a WeightCriterion"
            )
        return made
    raise ConfigError(
        f"criterion must be a name ({', '.join(criterion_names())}) or a WeightCriterion, got {type(spec).__name__}"
    )


__all__ = [
    "Calibration",
    "Magnitude",
    "RandomScore",
    "Snip",
    "Taylor",
    "Wanda",
    "WeightCriterion",
    "criterion_names",
    "token_mask",
    "get_criterion",
    "register_criterion",
]
