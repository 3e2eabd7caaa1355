"""The Lottery Ticket Hypothesis (Frankle & Carbin 2019), with late resetting (Frankle et al. 2019).

::

    theta_0 ──train──▶ theta_T      level 0 (dense); remember theta_k at step k (k = 0: the init)
      for level L = 1..rounds:
        mask_L = prune `rate` of the surviving weights of the last trained ticket (global or per layer)
        ticket: theta_k ⊙ mask_L ──train──▶ record (sparsity, early-stop step, accuracy)
        controls (same sparsity):  reinit       = fresh random init ⊙ mask_L
                                   random_mask  = theta_k ⊙ random mask with mask_L's per-layer counts

The early-stop iteration is the step of minimum validation loss; the accuracy reported for it is the
test accuracy at that step (the paper's protocol). Every level is checkpointed when
``checkpoint_dir`` is given, so a killed run resumes and ends with the same table.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from prunekit.core import (
    MASK_SUFFIX,
    PRUNABLE_TYPES,
    ConfigMixin,
    LossFn,
    masked_parameters,
    merge_config,
    register_config,
    select_modules,
)
from prunekit.errors import ConfigError
from prunekit.training.checkpoint import atomic_save_tensors, load_tensors
from prunekit.training.common import (
    OptimizerLike,
    assign_masks,
    check_optimizer,
    current_masks,
    make_optimizer,
    weight_sparsity,
)
from prunekit.training.loop import FitResult, fit
from prunekit.training.results import ResultsTable, RunResult

log = logging.getLogger(__name__)

CONTROLS = ("random_mask", "reinit")


@register_config
@dataclass(frozen=True, kw_only=True)
class LotteryConfig(ConfigMixin):
    """Settings of a lottery-ticket run.

    Args:
        rounds: pruning levels after the dense run (level 0).
        rate: fraction of the surviving weights pruned per level.
        output_rate: per-layer rate for the last Linear/Conv (the paper uses half of ``rate``);
            ``None`` = ``rate``. Only with ``scope="layer"``.
        scope: ``"layer"`` (each layer loses ``rate`` of its weights) or ``"global"``.
        rewind_step: rewind survivors to their values at this training step of level 0
            (0 = the initialisation; k > 0 = late resetting).
        steps_per_round: training steps per level.
        eval_every: steps between validation evaluations (for the early-stop iteration).
        controls: any of ``"reinit"`` (same masks, fresh random init) and ``"random_mask"``
            (rewound weights, random masks of the same per-layer sparsity).
        seed: seed of the controls' random inits and masks.
    """

    rounds: int
    steps_per_round: int
    rate: float = 0.2
    output_rate: float | None = None
    scope: Literal["global", "layer"] = "layer"
    rewind_step: int = 0
    eval_every: int = 100
    controls: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rounds < 0 or self.steps_per_round < 1 or self.eval_every < 1:
            raise ConfigError(
                f"need rounds >= 0, steps_per_round >= 1, eval_every >= 1; got {self.rounds}, "
                f"{self.steps_per_round}, {self.eval_every}"
            )
        for name in ("rate", "output_rate"):
            v = getattr(self, name)
            if v is not None and not 0.0 < v < 1.0:
                raise ConfigError(f"{name} must be in (0, 1), got {v}")
        if self.scope not in ("global", "layer"):
            raise ConfigError(f"scope must be 'global' or 'layer', got {self.scope!r}")
        if self.output_rate is not None and self.scope != "layer":
            raise ConfigError("output_rate needs scope='layer' (a global threshold has no per-layer rate)")
        if not 0 <= self.rewind_step <= self.steps_per_round:
            raise ConfigError(
                f"rewind_step must be in [0, steps_per_round={self.steps_per_round}], got {self.rewind_step}"
            )
        controls = tuple(self.controls)
        bad = [c for c in controls if c not in CONTROLS]
        if bad:
            raise ConfigError(f"unknown lottery control(s) {bad}; valid: {', '.join(CONTROLS)}")
        object.__setattr__(self, "controls", controls)

    def sparsity(self, level: int, output: bool = False) -> float:
        """Target sparsity after ``level`` pruning levels (for the output layer with ``output=True``)."""
        rate = self.output_rate if (output and self.output_rate is not None) else self.rate
        return 1.0 - (1.0 - rate) ** level


def _prunable(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]


def _weights_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.endswith(MASK_SUFFIX)}


@torch.no_grad()
def _rewind(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    model.load_state_dict(state, strict=False)  # the masks' load hook zeroes the pruned entries again


@torch.no_grad()
def _reinitialise(model: nn.Module, seed: int) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in model.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset) and not list(m.children()):
                reset()
    for mp in masked_parameters(model):
        mp.param.mul_(mp.mask)


def _random_masks(masks: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for fqn, mask in masks.items():
        keep = int(mask.sum())
        new = torch.zeros(mask.numel(), dtype=torch.bool)
        new[torch.randperm(mask.numel(), generator=gen)[:keep]] = True
        out[fqn] = new.view_as(mask)
    return out


def _row(level: int, kind: str, model: nn.Module, res: FitResult) -> dict[str, Any]:
    best = res.best
    s = weight_sparsity(model)
    row: dict[str, Any] = {"round": level, "kind": kind, "sparsity": s, "remaining_pct": 100.0 * (1.0 - s)}
    if best is not None:
        last = res.history[-1]
        row.update(
            early_stop_step=int(best["step"]),
            min_val_loss=best["loss"],
            early_stop_accuracy=best.get("test_accuracy", best["accuracy"]),
            final_accuracy=last.get("test_accuracy", last["accuracy"]),
        )
    return row


def lottery_ticket(
    model: nn.Module,
    train_loader: Any,
    *,
    optimizer: OptimizerLike,
    val_loader: Iterable[Any],
    test_loader: Iterable[Any] | None = None,
    config: LotteryConfig | None = None,
    loss_fn: LossFn | None = None,
    output_dir: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    exclude: Any = (),
    **kwargs: Any,
) -> RunResult:
    """Find winning tickets by iterative magnitude pruning with rewinding; ``model`` ends as the last ticket.

    Args:
        model: a freshly initialised model (its current weights are ``theta_0``); trained and pruned in place.
        train_loader: training data (a seeded ``generator=`` makes resumption exact).
        optimizer: a factory ``f(params) -> Optimizer`` (every level starts with a fresh optimizer).
        val_loader: for the early-stop iteration (minimum validation loss).
        test_loader: accuracy reported at the early-stop step and at the end (default: ``val_loader``).
        config: a :class:`LotteryConfig`; or give its fields as keyword arguments.
        loss_fn: default cross-entropy.
        output_dir: write ``lottery.csv``, ``lottery.json`` and ``lottery.png`` there.
        checkpoint_dir: one checkpoint per level and run kind; a killed run resumes from them.
        exclude: modules never pruned: names, globs, types or module objects (a name covers the
            layers inside it), as everywhere in prunekit.

    Returns:
        A :class:`RunResult`: one table row per level and kind (``ticket`` and each control) with
        ``round, kind, sparsity, remaining_pct, early_stop_step, min_val_loss, early_stop_accuracy,
        final_accuracy``.

    Raises:
        ConfigError: for bad settings, or an optimizer that is not a factory.
    """
    from prunekit.weights import prune_weights

    check_optimizer(optimizer)
    unknown = sorted(set(kwargs) - {f.name for f in dataclasses.fields(LotteryConfig)})
    if unknown:
        raise ConfigError(
            f"lottery_ticket: unknown option(s) {unknown}; LotteryConfig fields are "
            f"{', '.join(f.name for f in dataclasses.fields(LotteryConfig))}"
        )
    config = merge_config(LotteryConfig, config, verb="lottery_ticket", **kwargs)
    if isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(
            "lottery_ticket starts every level with a fresh optimizer: pass a factory such as "
            "optimizer=lambda params: torch.optim.Adam(params, lr=1.2e-3)"
        )
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    excluded = {n for n, _ in select_modules(model, exclude or None, what="exclude", children=True)}
    targets = [n for n in _prunable(model) if n not in excluded]
    if not targets:
        raise ConfigError("the model has no Linear/Conv layer left to prune (check exclude=)")
    output_layer = targets[-1]

    def train(level: int, kind: str, net: nn.Module, on_step: Any = None) -> FitResult:
        ckpt = ckdir / f"level-{level:02d}-{kind}.safetensors" if ckdir is not None else None
        return fit(
            net,
            make_optimizer(optimizer, net),
            train_loader,
            steps=config.steps_per_round,
            loss_fn=loss_fn,
            val_loader=val_loader,
            test_loader=test_loader,
            eval_every=config.eval_every,
            checkpoint=ckpt,
            on_step=on_step,
        )

    # level 0: dense training; keep theta_k for rewinding
    rewind_file = ckdir / "rewind.safetensors" if ckdir is not None else None
    rewind_state: dict[str, torch.Tensor] | None = None
    if rewind_file is not None and rewind_file.exists():
        rewind_state, _ = load_tensors(rewind_file)
    if config.rewind_step == 0 and rewind_state is None:
        rewind_state = _weights_state(model)
        if rewind_file is not None:
            atomic_save_tensors(rewind_file, rewind_state)

    def capture(step: int) -> None:
        nonlocal rewind_state
        if step == config.rewind_step and rewind_state is None:
            rewind_state = _weights_state(model)
            if rewind_file is not None:
                atomic_save_tensors(rewind_file, rewind_state)

    table = ResultsTable("lottery")
    from prunekit.training.progress import StepLog

    runs = 1 + config.rounds * (1 + len(config.controls))
    progress = StepLog(log, "lottery_ticket", runs, unit="training run", min_seconds=0)
    res = train(0, "ticket", model, capture)
    progress.step(1)
    if rewind_state is None:  # pragma: no cover - resumed after the capture without its file
        raise ConfigError(f"rewind state for step {config.rewind_step} is missing from {ckdir}")
    dense_row = _row(0, "dense", model, res)
    table.rows.append(dense_row)
    for level in range(1, config.rounds + 1):
        s = config.sparsity(level)
        if config.scope == "layer" and config.output_rate is not None:
            hidden = [n for n in targets if n != output_layer]
            if hidden:
                prune_weights(model, s, scope="layer", include=hidden)
            prune_weights(model, config.sparsity(level, output=True), scope="layer", include=[output_layer])
        else:
            prune_weights(model, s, scope=config.scope, include=targets)
        masks = current_masks(model)
        _rewind(model, rewind_state)
        res = train(level, "ticket", model)
        table.rows.append(_row(level, "ticket", model, res))
        for kind in config.controls:
            control = copy.deepcopy(model)
            if kind == "reinit":
                assign_masks(control, masks)
                _reinitialise(control, config.seed * 1000 + level)
            else:
                assign_masks(control, _random_masks(masks, config.seed * 1000 + level))
                _rewind(control, rewind_state)
            res_c = train(level, kind, control)
            table.rows.append(_row(level, kind, control, res_c))
            del control
        log.info("lottery level %d: %.1f%% of weights remain", level, 100 * (1 - weight_sparsity(model)))
        progress.step(1 + level * (1 + len(config.controls)))
    if output_dir is not None:
        table.write(
            output_dir,
            x="remaining_pct",
            ys=["early_stop_accuracy", "early_stop_step"],
            group="kind",
            log_x=True,
            invert_x=True,
            title="Lottery tickets: accuracy and early-stop iteration vs weights remaining",
        )
    progress.done(f"{config.rounds} levels")
    last = table.rows[-1 - len(config.controls)] if config.rounds else dense_row
    return RunResult(
        table=table,
        sparsity=weight_sparsity(model),
        accuracy=last.get("final_accuracy"),
        loss=last.get("min_val_loss"),
    )


__all__ = ["CONTROLS", "LotteryConfig", "lottery_ticket"]
