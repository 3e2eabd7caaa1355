"""Recipes: a whole pruning job as data (YAML), validated, run through the public verbs; model and data sources."""

from __future__ import annotations

from prunekit.recipes.config_steps import STEP_KINDS, ConfigStep, StepRun, register_step
from prunekit.recipes.finetune_step import check_loss_name, import_batch_loss
from prunekit.recipes.heads_step import HeadsStep
from prunekit.recipes.oneshot_step import OneShotStep
from prunekit.recipes.runner import layer_rows, measure_model
from prunekit.recipes.schema import Recipe
from prunekit.recipes.sources import (
    LoadedModel,
    check_fits,
    import_object,
    load_data,
    load_model,
    save_model_dir,
    write_pretrained,
)
from prunekit.recipes.steps import ChannelsStep, LayersStep, RecipeResult, WeightsStep
from prunekit.recipes.tasks import hf_tokenizer, task_loss, text_batches

__all__ = [
    "ChannelsStep",
    "check_fits",
    "check_loss_name",
    "ConfigStep",
    "HeadsStep",
    "hf_tokenizer",
    "import_batch_loss",
    "import_object",
    "layer_rows",
    "LayersStep",
    "load_data",
    "load_model",
    "LoadedModel",
    "measure_model",
    "OneShotStep",
    "Recipe",
    "RecipeResult",
    "register_step",
    "save_model_dir",
    "STEP_KINDS",
    "StepRun",
    "task_loss",
    "text_batches",
    "WeightsStep",
    "write_pretrained",
]
