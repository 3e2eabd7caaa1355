"""Running a :class:`~prunekit.recipes.schema.Recipe`, and measuring a model before and after.

One run::

    measure(before) ── round 1..R: [prune steps at k/R of their targets] ── fine-tune ── evaluate
                    └─ measure(after): params, non-zeros, MACs, latency, peak memory, file size, accuracy
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from itertools import islice
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from prunekit.core import (
    LossFn,
    count_macs,
    count_nonzeros,
    count_params,
    evaluate,
    forward_peak_memory,
    hardware_info,
    measure_latency,
    param_bytes,
)
from prunekit.errors import ConfigError, DataRequiredError, UnknownModuleError
from prunekit.io import file_size

if TYPE_CHECKING:
    from prunekit.recipes.oneshot_step import OneShotStep
    from prunekit.recipes.schema import Recipe
    from prunekit.recipes.sources import DataBundle
    from prunekit.recipes.steps import ChannelsStep, LayersStep, RecipeResult, WeightsStep

logger = logging.getLogger(__name__)
_LAYER_TYPES = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.Embedding,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.LayerNorm,
    nn.GroupNorm,
)


def layer_rows(model: nn.Module, original_names: dict[int, str] | None = None) -> list[dict[str, Any]]:
    """One row per Linear/Conv/Embedding/Norm module: shape, width, params, non-zeros, sparsity.

    ``original_names`` maps ``id(module)`` to its name before pruning, so a module keeps its name in the
    report when layer pruning renumbers its container (``blocks.5`` may now be ``blocks.3``).
    """
    rows = []
    for current, module in model.named_modules():
        name = (original_names or {}).get(id(module), current)
        weight = module._parameters.get("weight")
        if not isinstance(module, _LAYER_TYPES) and not (
            isinstance(weight, torch.Tensor) and weight.dim() >= 2
        ):
            continue
        params = [p for p in module.parameters(recurse=False)]
        n = sum(p.numel() for p in params)
        nz = sum(int(torch.count_nonzero(p.detach())) for p in params)
        w_n = weight.numel() if isinstance(weight, torch.Tensor) else 0
        w_nz = int(torch.count_nonzero(weight.detach())) if isinstance(weight, torch.Tensor) else 0
        rows.append(
            {
                "name": name or "(root)",
                "type": type(module).__name__,
                "shape": list(weight.shape) if isinstance(weight, torch.Tensor) else [],
                "width": int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.dim() else 0,
                "params": n,
                "nonzeros": nz,
                "weight_sparsity": 1 - w_nz / w_n if w_n else 0.0,
            }
        )
    return rows


def merge_layers(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Before/after rows side by side, by module name (a removed layer has ``None`` after)."""
    after_by = {r["name"]: r for r in after}
    out = []
    for r in before:
        a = after_by.pop(r["name"], None)
        out.append(
            {
                "name": r["name"],
                "type": r["type"],
                "shape_before": r["shape"],
                "shape_after": a["shape"] if a else None,
                "width_before": r["width"],
                "width_after": a["width"] if a else 0,
                "params_before": r["params"],
                "params_after": a["params"] if a else 0,
                "nonzeros_before": r["nonzeros"],
                "nonzeros_after": a["nonzeros"] if a else 0,
                "sparsity_before": r["weight_sparsity"],
                "sparsity_after": a["weight_sparsity"] if a else 1.0,
            }
        )
    for a in after_by.values():  # new modules (rare: a replaced block)
        out.append(
            {
                "name": a["name"],
                "type": a["type"],
                "shape_before": None,
                "shape_after": a["shape"],
                "width_before": 0,
                "width_after": a["width"],
                "params_before": 0,
                "params_after": a["params"],
                "nonzeros_before": 0,
                "nonzeros_after": a["nonzeros"],
                "sparsity_before": 0.0,
                "sparsity_after": a["weight_sparsity"],
            }
        )
    return out


def measure_model(
    model: nn.Module,
    example_inputs: Any,
    eval_data: Iterable[Any] | None = None,
    *,
    latency: bool = True,
    repeats: int = 30,
    threads: int = 1,
    loss_fn: LossFn | None = None,
) -> dict[str, Any]:
    """Every number a report shows for one model (``None`` where it cannot be measured)."""
    from prunekit.weights import sparsity

    out: dict[str, Any] = {
        "params": count_params(model),
        "nonzeros": count_nonzeros(model),
        "sparsity": float(sparsity(model)),
        "param_bytes": param_bytes(model),
        "file_bytes": file_size(model),
        "macs": None,
        "peak_forward_bytes": None,
        "latency": None,
        "accuracy": None,
        "loss": None,
        "eval_examples": None,
    }
    if example_inputs is not None:
        out["macs"] = count_macs(model, example_inputs)
        out["peak_forward_bytes"] = forward_peak_memory(model, example_inputs)
        if latency:
            out["latency"] = measure_latency(
                model, example_inputs, repeats=repeats, warmup=5, threads=threads
            ).to_dict()
    if eval_data is not None:
        ev = evaluate(model, eval_data, loss_fn)
        out["accuracy"], out["loss"], out["eval_examples"] = ev.accuracy, ev.loss, ev.examples
    return out


def _as_bundle(data: Any, recipe: Recipe, trust_code: bool = False) -> DataBundle | None:
    from prunekit.recipes.sources import DataBundle, load_data

    if data is None:
        if recipe.data is None:
            return None
        d = recipe.data
        if ":" in d.source and not trust_code:  # module:factory or file.py:factory: code named by a file
            raise ConfigError(
                f"the recipe names the data factory {d.source!r}: prunekit does not import code named by a "
                "recipe unless you trust it; pass trust_code=True (CLI: --trust-code), or give the data "
                "yourself (data=... / --data)"
            )
        return load_data(d.source, data_dir=d.dir, batch_size=d.batch_size, seed=recipe.seed, limit=d.limit)
    if isinstance(data, DataBundle):
        return data
    if isinstance(data, tuple) and len(data) == 2 and all(hasattr(x, "__iter__") for x in data):
        return DataBundle(train=data[0], test=data[1], name="data")
    if hasattr(data, "__iter__"):
        return DataBundle(train=data, test=data, name="data")
    raise ConfigError(
        f"data must be a DataLoader, a (train, test) pair or a DataBundle; got {type(data).__name__}"
    )


def _modules(model: nn.Module, names: Iterable[str] | None) -> list[nn.Module] | None:
    if names is None:
        return None
    out = []
    known = [n for n, _ in model.named_modules() if n]
    for name in names:
        try:
            out.append(model.get_submodule(name))
        except AttributeError:
            raise UnknownModuleError(
                f"exclude: no module named {name!r} in the model; module names are e.g. {', '.join(known[:8])}"
            ) from None
    return out


def _apply_weights(
    model: nn.Module, st: WeightsStep, frac: float, calib: list[Any] | None, loss_fn: LossFn
) -> None:
    """``prune_weights`` with the step's config, at ``frac`` of its sparsity (round k of R: k/R)."""
    from prunekit.weights import prune_weights

    cfg = st.config
    if cfg.pattern is not None and frac < 1.0 and cfg.sparsity is None:
        return  # an N:M pattern is applied whole, in the last round
    if cfg.sparsity is not None and frac < 1.0:
        cfg = replace(cfg, sparsity=cfg.sparsity * frac)
    if calib is not None:
        prune_weights(model, config=cfg, data=calib, loss_fn=loss_fn)
    else:
        prune_weights(model, config=cfg)


def _apply_channels(
    model: nn.Module,
    st: ChannelsStep,
    rounds: int,
    example_inputs: Any,
    calib: list[Any] | None,
    loss_fn: LossFn,
) -> None:
    """``prune_channels`` with the step's config; each of R rounds removes the same share of what is left."""
    from prunekit.structured import prune_channels

    if example_inputs is None:
        raise ConfigError(
            "channel pruning traces the model: give example inputs (a factory returning (model, inputs))"
        )
    cfg = st.config
    exclude = _modules(model, cfg.exclude if isinstance(cfg.exclude, tuple) else None)
    if exclude is not None:  # names checked here, so the error names the recipe key
        cfg = replace(cfg, exclude=tuple(exclude))

    def per_round(removed: float) -> float:  # R rounds of this reach ``removed``
        return float(1 - (1 - removed) ** (1 / rounds))

    if rounds > 1:
        if cfg.reduce_macs is not None:
            cfg = replace(cfg, reduce_macs=per_round(cfg.reduce_macs))
        elif cfg.reduce_params is not None:
            cfg = replace(cfg, reduce_params=per_round(cfg.reduce_params))
        elif isinstance(cfg.ratio, Mapping):
            cfg = replace(cfg, ratio={k: per_round(v) for k, v in cfg.ratio.items()})
        else:
            cfg = replace(cfg, ratio=per_round(cfg.ratio))
    prune_channels(
        model, example_inputs, config=cfg, data=calib, loss_fn=loss_fn if calib is not None else None
    )


def _apply_oneshot(
    model: nn.Module, st: OneShotStep, frac: float, bundle: DataBundle | None
) -> dict[str, Any]:
    """``prune_oneshot`` with the step's config on the run's calibration batches (inputs only)."""
    from prunekit.core import inputs_only
    from prunekit.oneshot import prune_oneshot

    if bundle is None:
        raise DataRequiredError(
            "a oneshot step calibrates on data: give --calibration FILE.txt (an HF model's tokenizer reads "
            "it), --data, a 'data' section, or data= in Python"
        )
    cfg = st.config
    if frac < 1.0:
        if cfg.sparsity is None or cfg.pattern is not None:
            return {}  # an N:M pattern is applied whole, in the last round
        cfg = replace(cfg, sparsity=cfg.sparsity * frac)
    limit = cfg.max_batches
    batches = [inputs_only(b) for b in islice(iter(bundle.train), limit)]
    # the recipe's own bar shows the step; a second (tqdm) bar under rich's would garble the terminal
    result = prune_oneshot(model, batches, config=replace(cfg, progress=False, max_batches=None))
    logger.info("%s", result)
    return {
        "method": result.method,
        "sparsity": result.sparsity,
        "error": result.error,
        "calibration_tokens": result.calibration_tokens,
        "seconds": result.seconds,
    }


def _apply_layers(
    model: nn.Module, st: LayersStep, n: int, example_inputs: Any, calib: list[Any] | None, loss_fn: LossFn
) -> None:
    """``prune_layers`` with the step's config, removing ``n`` blocks in this round."""
    from prunekit.structured import prune_layers

    if n <= 0:
        return
    prune_layers(model, example_inputs, data=calib, loss_fn=loss_fn, config=replace(st.config, n=n))


def run_recipe(
    recipe: Recipe,
    model: nn.Module,
    example_inputs: Any = None,
    *,
    data: Any = None,
    progress: bool = False,
    loss_fn: LossFn | None = None,
    measure: bool = True,
    trust_code: bool = False,
    batch_loss: Any = None,
) -> RecipeResult:
    """Implementation of :meth:`prunekit.Recipe.run` (see there)."""
    from prunekit.recipes.config_steps import StepRun
    from prunekit.recipes.finetune_step import prepare_losses, run_finetune
    from prunekit.recipes.oneshot_step import OneShotStep
    from prunekit.recipes.sources import first_inputs
    from prunekit.recipes.steps import ChannelsStep, LayersStep, RecipeResult, WeightsStep

    start = time.perf_counter()
    # before pruning: an embedding fine-tune keeps a frozen copy of the dense model as its teacher
    loss_fn, ft_loss = prepare_losses(recipe.finetune, model, loss_fn, batch_loss, trust_code=trust_code)
    task_loss = loss_fn  # None: the scores' cross-entropy (classification)
    loss_fn = loss_fn or nn.functional.cross_entropy
    torch.manual_seed(recipe.seed)
    bundle = _as_bundle(data, recipe, trust_code)
    if bundle is None and recipe.needs_data():
        why = (
            "fine-tunes"
            if recipe.finetune is not None
            else "has a oneshot step, which calibrates on data"
            if any(st.what == "oneshot" for st in recipe.steps)
            else "uses a data-aware criterion"
        )
        raise DataRequiredError(
            f"this recipe {why}: give it data (a 'data' section in the recipe, --data on the command line, "
            "--calibration FILE.txt for a Hugging Face model, or data= in Python)"
        )
    if example_inputs is None and bundle is not None:
        example_inputs = first_inputs(bundle)
    if bundle is not None:
        from prunekit.recipes.sources import check_fits

        check_fits(model, bundle, task_loss)
    if any(isinstance(st, (ChannelsStep, LayersStep)) for st in recipe.steps) and example_inputs is None:
        raise ConfigError("structured steps trace the model: give example inputs or data")
    calib = (
        list(islice(iter(bundle.train), recipe.data.calibration_batches if recipe.data else 4))
        if bundle
        else None
    )
    m = recipe.measure
    test = bundle.test if bundle is not None else None

    def measured() -> dict[str, Any]:
        return measure_model(
            model,
            example_inputs,
            test,
            latency=measure and m.latency,
            repeats=m.latency_repeats,
            threads=m.threads,
            loss_fn=loss_fn,
        )

    rounds = recipe.schedule.rounds
    total_ft = recipe.finetune
    n_steps = rounds * (len(recipe.steps) + (1 if total_ft else 0)) + 2
    bar = _ProgressBar(progress, n_steps)
    with bar:
        bar.describe("measuring the model before pruning")
        layers_before = layer_rows(model)
        original_names = {id(mod): name for name, mod in model.named_modules()}
        before = measured()
        bar.advance()
        history: list[dict[str, Any]] = [
            _point(0, "dense", model, example_inputs, before["accuracy"], before["loss"])
        ]
        layers_done = 0
        notes: list[str] = []
        for k in range(1, rounds + 1):
            frac = k / rounds
            for i, st in enumerate(recipe.steps):
                bar.describe(f"round {k}/{rounds}: {st.what}")
                if isinstance(st, WeightsStep):
                    _apply_weights(model, st, frac, calib, loss_fn)
                elif isinstance(st, OneShotStep):
                    done = _apply_oneshot(model, st, frac, bundle)
                    if done:
                        notes.append(
                            f"oneshot {done['method']}: {done['sparsity']:.1%} of the pruned layers, mean "
                            f"reconstruction error {done['error']:.4f}, {done['calibration_tokens']:,} "
                            f"calibration tokens, {done['seconds']:.1f} s"
                        )
                elif isinstance(st, ChannelsStep):
                    _apply_channels(model, st, rounds, example_inputs, calib, loss_fn)
                elif isinstance(st, LayersStep):
                    n_k = round(st.config.n * frac) - layers_done
                    _apply_layers(model, st, n_k, example_inputs, calib, loss_fn)
                    layers_done += max(n_k, 0)
                else:  # a registered kind applies itself (one call of its verb)
                    run = StepRun(round=k, rounds=rounds, example_inputs=example_inputs, calibration=calib,
                                  loss_fn=loss_fn, data=bundle, index=i,
                                  source_path=recipe.source_path)  # fmt: skip
                    note = st.apply(model, run)
                    if note:
                        notes.append(note)
                bar.advance()
            ev = evaluate(model, test, loss_fn) if test is not None else None
            history.append(
                _point(
                    k, "pruned", model, example_inputs, ev.accuracy if ev else None, ev.loss if ev else None
                )
            )
            if total_ft is not None and bundle is not None:
                bar.describe(f"round {k}/{rounds}: fine-tuning")
                assert ft_loss is not None
                run_finetune(model, bundle.train, total_ft, ft_loss)
                ev = evaluate(model, test, loss_fn) if test is not None else None
                history.append(
                    _point(
                        k,
                        "finetuned",
                        model,
                        example_inputs,
                        ev.accuracy if ev else None,
                        ev.loss if ev else None,
                    )
                )
                bar.advance()
        bar.describe("measuring the pruned model")
        after = measured()
        bar.advance()
    return RecipeResult(
        model=model,
        recipe=recipe,
        before=before,
        after=after,
        layers=merge_layers(layers_before, layer_rows(model, original_names)),
        history=history,
        hardware=hardware_info(m.threads).to_dict(),
        seconds=time.perf_counter() - start,
        notes=tuple(notes),
        example_inputs=example_inputs,
    )


def _point(
    round_: int, stage: str, model: nn.Module, example_inputs: Any, acc: float | None, loss: float | None
) -> dict[str, Any]:
    from prunekit.weights import sparsity

    return {
        "round": round_,
        "stage": stage,
        "sparsity": float(sparsity(model)),
        "params": count_params(model),
        "nonzeros": count_nonzeros(model),
        "macs": count_macs(model, example_inputs) if example_inputs is not None else None,
        "accuracy": acc,
        "loss": None if loss is None or math.isnan(loss) else loss,
    }


class _ProgressBar:
    """A rich progress bar on stderr (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled
        self.total = total
        self._p: Any = None
        self._task: Any = None

    def __enter__(self) -> _ProgressBar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._p = Progress(
                TextColumn("{task.description:<36}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )
            self._p.__enter__()
            self._task = self._p.add_task("prune", total=self.total)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)

    def describe(self, text: str) -> None:
        if self._p is not None:
            self._p.update(self._task, description=text)

    def advance(self) -> None:
        if self._p is not None:
            self._p.update(self._task, advance=1)


__all__ = ["layer_rows", "measure_model", "merge_layers", "run_recipe"]
