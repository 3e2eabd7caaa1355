"""Hugging Face support: keep a pruned model's config true, and export a ``from_pretrained`` directory.

After structured pruning, the module shapes change but ``model.config`` still describes the dense
model. :func:`sync_hf_config` reads the widths back from the modules and writes the config fields
(``hidden_size``, ``intermediate_size`` / GPT-2 ``n_inner``, ``num_attention_heads``,
``num_key_value_heads``, an explicit ``head_dim``). It then *proves* the config expresses the model:
it rebuilds the class from the new config on the meta device and compares every parameter and buffer
shape and every scalar module attribute (head counts, head size, attention scale). Only then is the
config written.

What a config cannot express (then use :func:`prunekit.save` / :func:`prunekit.load`, whose JSON plan
records every shape):

- per-layer (non-uniform) widths: one ``intermediate_size`` for all layers;
- pruned heads in classes that derive the head size as ``hidden_size // num_attention_heads``
  (BERT, GPT-2): fewer heads would rebuild wider heads;
- a pruned head dim where the attention scale or RoPE frequencies derive from it.

transformers is imported lazily (inside functions), so ``import prunekit`` stays light.

Example:
    >>> import torch
    >>> from prunekit.io.hf import uniform_width
    >>> uniform_width({"layers.0.mlp": 48, "layers.1.mlp": 48}, "intermediate_size")
    48
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.core import masked_parameters, remove_mask, set_mask
from prunekit.errors import ConfigError, PlanError

logger = logging.getLogger(__name__)

# Suffixes of MLP up-projections whose output width is the intermediate size.
_MLP_UP = ("mlp.up_proj", "mlp.gate_proj", "intermediate.dense", "mlp.c_fc", "mlp.fc1", "mlp.dense_h_to_4h")
# ModuleLists holding the transformer layers.
_LAYER_LISTS = ("layers", "layer", "h", "blocks")

_FALLBACK = (
    "Save it with pk.save(model, path) and reload with pk.load(path, fresh_model): prunekit's JSON plan "
    "records every layer's shape."
)


@dataclass(frozen=True, kw_only=True)
class ConfigSync:
    """What :func:`sync_hf_config` found.

    Attributes:
        expressible: whether the config can describe the pruned model exactly.
        updates: config fields and their new values (written only when ``expressible``).
        problems: why it is not expressible (empty when it is).
    """

    expressible: bool
    updates: dict[str, int] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.expressible:
            return f"config expresses the model; updates: {self.updates or 'none'}"
        return "config cannot express the model: " + "; ".join(self.problems)


def is_hf_model(model: nn.Module) -> bool:
    """Whether ``model`` is a Hugging Face ``PreTrainedModel`` (without importing transformers)."""
    cfg = getattr(model, "config", None)
    return cfg is not None and hasattr(cfg, "to_dict") and hasattr(model, "save_pretrained")


def _require_hf(model: nn.Module) -> Any:
    if not is_hf_model(model):
        raise ConfigError(
            f"expected a Hugging Face PreTrainedModel with a .config, got {type(model).__name__}. "
            "For plain PyTorch models use pk.save(model, path) / pk.load(path, model)."
        )
    return model.config


def uniform_width(widths: Mapping[str, int], what: str) -> int:
    """The single value of ``widths`` (module name -> width), or raise naming the layers that differ.

    Raises:
        PlanError: when the widths are not all equal (per-layer pruning).
    """
    values = sorted(set(widths.values()))
    if len(values) != 1:
        detail = ", ".join(f"{n}={w}" for n, w in sorted(widths.items()))
        raise PlanError(
            f"per-layer widths for {what}: {detail}. A Hugging Face config holds one {what} for all "
            f"layers, so it cannot express this model. {_FALLBACK}"
        )
    return values[0]


def _out_width(m: nn.Module) -> int | None:
    if isinstance(m, nn.Linear):
        return m.out_features
    nf = getattr(m, "nf", None)  # transformers Conv1D: weight (in, out)
    if isinstance(nf, int):
        return nf
    return None


def _derive(model: nn.Module, cfg: Any) -> dict[str, int]:
    """Config fields read back from the module shapes; raises PlanError on per-layer widths."""
    updates: dict[str, int] = {}
    get_emb = getattr(model, "get_input_embeddings", None)
    emb = get_emb() if callable(get_emb) else None
    if isinstance(emb, nn.Embedding) and hasattr(cfg, "hidden_size"):
        updates["hidden_size"] = emb.embedding_dim

    mlp: dict[str, int] = {}
    for name, m in model.named_modules():
        if name.endswith(_MLP_UP) and (w := _out_width(m)) is not None:
            mlp[name] = w
    if mlp:
        key = "intermediate_size" if hasattr(cfg, "intermediate_size") else "n_inner"
        updates[key] = uniform_width(mlp, key)

    heads: dict[str, int] = {}
    kv_heads: dict[str, int] = {}
    head_dims: dict[str, int] = {}
    for name, m in model.named_modules():
        q, k = getattr(m, "q_proj", None), getattr(m, "k_proj", None)
        hd = getattr(m, "head_dim", None)
        if isinstance(q, nn.Linear) and isinstance(k, nn.Linear) and isinstance(hd, int) and hd > 0:
            heads[name], kv_heads[name], head_dims[name] = q.out_features // hd, k.out_features // hd, hd
        elif isinstance(getattr(m, "query", None), nn.Linear) and hasattr(m, "num_attention_heads"):
            heads[name] = int(m.num_attention_heads)
        elif hasattr(m, "c_attn") and isinstance(getattr(m, "num_heads", None), int):
            heads[name] = int(m.num_heads)
    if heads:
        updates["num_attention_heads"] = uniform_width(heads, "num_attention_heads")
    if kv_heads and hasattr(cfg, "num_key_value_heads"):
        updates["num_key_value_heads"] = uniform_width(kv_heads, "num_key_value_heads")
    if head_dims and hasattr(cfg, "head_dim"):
        updates["head_dim"] = uniform_width(head_dims, "head_dim")
    return updates


# Module attributes that change what forward computes; a stale copy of any other size attribute
# (e.g. LlamaMLP.intermediate_size, never read in forward) does not make the export wrong.
_COMPUTE_ATTRS = frozenset(
    {
        "all_head_size",
        "attention_head_size",
        "attention_scaling",
        "embed_dim",
        "head_dim",
        "num_attention_heads",
        "num_heads",
        "num_key_value_groups",
        "num_key_value_heads",
        "scale",
        "scaling",
        "split_size",
    }
)


def _scalars(m: nn.Module) -> dict[str, int | float | bool]:
    return {k: v for k, v in vars(m).items() if k in _COMPUTE_ATTRS and isinstance(v, (int, float, bool))}


def _rebuild_problems(model: nn.Module, cfg: Any) -> list[str]:
    """Build ``type(model)(cfg)`` on meta and list every shape / size attribute that differs."""
    try:
        with torch.device("meta"):
            fresh = type(model)(cfg)
    except Exception as e:  # a config the class refuses is, by definition, not expressible
        return [f"{type(model).__name__}(config) raised {type(e).__name__}: {e}"]
    problems: list[str] = []
    ours = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    theirs = {**dict(fresh.named_parameters()), **dict(fresh.named_buffers())}
    # Names present on one side only come from constructor arguments (e.g. BERT's add_pooling_layer),
    # not from the config fields written here: compare the shapes of the common ones.
    for name, t in theirs.items():
        mine = ours.get(name)
        if mine is not None and tuple(mine.shape) != tuple(t.shape):
            problems.append(f"{name}: pruned {tuple(mine.shape)} but config rebuilds {tuple(t.shape)}")
    modules = dict(model.named_modules())
    for name, fm in fresh.named_modules():
        mm = modules.get(name)
        if mm is None:
            continue
        for attr, want in _scalars(fm).items():
            have = getattr(mm, attr, want)
            if isinstance(have, (int, float, bool)) and have != want:
                problems.append(
                    f"{name or type(model).__name__}.{attr}: pruned {have} but config gives {want}"
                )
    return problems


def sync_hf_config(model: nn.Module, *, strict: bool = True) -> ConfigSync:
    """Write a pruned Hugging Face model's widths into ``model.config``, in place, if it can express them.

    Args:
        model: a ``transformers.PreTrainedModel`` after structured pruning (or unpruned: a no-op).
        strict: raise when the config cannot express the model; with ``False`` the config is left
            unchanged and the returned :class:`ConfigSync` says why.

    Returns:
        A :class:`ConfigSync` with the fields written.

    Raises:
        ConfigError: ``model`` is not a Hugging Face model.
        PlanError: (``strict`` only) per-layer widths, or a config that would rebuild a different model.
    """
    cfg = _require_hf(model)
    try:
        updates = _derive(model, cfg)
    except PlanError as e:
        if strict:
            raise
        return ConfigSync(expressible=False, problems=(str(e),))
    new_cfg = type(cfg).from_dict(cfg.to_dict())
    for key, value in updates.items():
        setattr(new_cfg, key, value)
    problems = _rebuild_problems(model, new_cfg)
    if problems:
        msg = (
            f"the {type(cfg).__name__} cannot express this pruned {type(model).__name__}: "
            + "; ".join(problems[:6])
            + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
            + f". {_FALLBACK}"
        )
        if strict:
            raise PlanError(msg)
        return ConfigSync(expressible=False, updates=updates, problems=tuple(problems))
    changed = {k: v for k, v in updates.items() if getattr(cfg, k, None) != v}
    for key, value in changed.items():
        setattr(cfg, key, value)
    if changed:
        logger.info("synced %s fields: %s", type(cfg).__name__, changed)
    return ConfigSync(expressible=True, updates=changed)


def save_pretrained(model: nn.Module, directory: str | os.PathLike[str], **kwargs: Any) -> Path:
    """Export a pruned Hugging Face model as a ``from_pretrained`` directory (config + safetensors).

    Syncs the config first (:func:`sync_hf_config`, strict), so ``AutoModel.from_pretrained(directory)``
    rebuilds the pruned shapes with no prunekit installed. Tied weights stay tied. Weight-pruning masks
    are folded in: the pruned weights are written as zeros and no ``*_mask`` buffer is written (so
    ``from_pretrained`` reports no unexpected keys); the masks stay in force on ``model``.

    Args:
        model: a ``transformers.PreTrainedModel``, pruned or not.
        directory: output directory (created).
        **kwargs: passed to ``model.save_pretrained``.

    Returns:
        The directory.

    Raises:
        PlanError: the config cannot express the pruned model (per-layer widths, pruned heads in
            BERT/GPT-2, pruned head dims); use ``pk.save`` / ``pk.load`` instead. Nothing is written.
    """
    sync_hf_config(model, strict=True)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    masks = [(mp.module, mp.name, mp.mask.clone()) for mp in masked_parameters(model)]
    try:
        for module, name, _mask in masks:
            remove_mask(module, name)  # the pruned weights are exactly zero already
        model.save_pretrained(str(out), **kwargs)  # type: ignore[operator]
    finally:
        for module, name, mask in masks:
            set_mask(module, name, mask)
    return out


def find_layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ``nn.ModuleList`` holding the transformer layers (``model.layers``, ``encoder.layer``, ``h``)."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and name.rpartition(".")[2] in _LAYER_LISTS:
            if best is None or len(m) > len(best[1]):
                best = (name, m)
    if best is None:
        raise ConfigError(
            f"no layer list found in {type(model).__name__}: expected an nn.ModuleList named one of "
            f"{list(_LAYER_LISTS)}"
        )
    return best


def set_num_hidden_layers(model: nn.Module, kept_layers: Sequence[int]) -> None:
    """Update a Hugging Face model after layers were removed from its layer list, in place.

    Call it after replacing the layer ``ModuleList`` by the kept layers. It sets
    ``config.num_hidden_layers``, slices per-layer config lists (``layer_types``), and renumbers every
    ``layer_idx`` attribute (KV-cache slots) to the new positions.

    Args:
        model: a ``transformers.PreTrainedModel``.
        kept_layers: original indices of the layers that remain, in order.

    Raises:
        ConfigError: not a Hugging Face model, or ``kept_layers`` does not match the layer list.
    """
    cfg = _require_hf(model)
    name, layers = find_layer_list(model)
    kept = list(kept_layers)
    n_old = int(cfg.num_hidden_layers)
    if len(kept) != len(layers) or any(not 0 <= i < n_old for i in kept) or kept != sorted(set(kept)):
        raise ConfigError(
            f"kept_layers={kept} must be {len(layers)} increasing indices in [0, {n_old}) matching "
            f"'{name}' ({len(layers)} layers now)"
        )
    for key in ("layer_types", "sliding_window_pattern_list"):
        values = getattr(cfg, key, None)
        if isinstance(values, list) and len(values) == n_old:
            setattr(cfg, key, [values[i] for i in kept])
    cfg.num_hidden_layers = len(kept)
    for new_idx, layer in enumerate(layers):
        for m in layer.modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                object.__setattr__(m, "layer_idx", new_idx)  # a plain int attribute, not a submodule


__all__ = [
    "ConfigSync",
    "find_layer_list",
    "is_hf_model",
    "save_pretrained",
    "set_num_hidden_layers",
    "sync_hf_config",
    "uniform_width",
]
