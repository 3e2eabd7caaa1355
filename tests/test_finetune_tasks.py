"""Fine-tuning with the run's task loss: a recipe's ``finetune:`` on encoders (distillation to the dense
model), a user loss ``fn(model, batch)`` from the recipe / ``Recipe.run`` / the CLI, and ``fit(batch_loss=)``.

Oracle for the embedding loss: 1 - cosine of hand mean-pooled outputs of the pruned model and of a copy of
the dense model taken before the run.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import prunekit as pk
from prunekit.recipes import Recipe
from zoo import tiny_text_encoder

transformers = pytest.importorskip("transformers")


def tiny_bert() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0, initializer_range=0.2)  # fmt: skip
    return transformers.BertModel(cfg, add_pooling_layer=False).eval()  # large init: pruning hurts it


def text_batches(n: int = 4, b: int = 8, t: int = 12) -> list[tuple[dict[str, torch.Tensor], Any]]:
    g = torch.Generator().manual_seed(3)
    out = []
    for _ in range(n):
        ids = torch.randint(1, 96, (b, t), generator=g)
        lengths = torch.randint(4, t + 1, (b,), generator=g)
        mask = (torch.arange(t) < lengths[:, None]).long()
        inputs = {"input_ids": ids * mask, "attention_mask": mask}
        out.append((inputs, inputs))
    return out


def distill_cosine(model: torch.nn.Module, dense: torch.nn.Module, batches: list[Any]) -> float:
    """Mean over the batches of 1 - cos(mean-pooled pruned, mean-pooled dense), computed by hand."""
    vals = []
    with torch.no_grad():
        for inputs, _ in batches:
            m = inputs["attention_mask"].unsqueeze(-1).float()
            a = (model(**inputs).last_hidden_state * m).sum(1) / m.sum(1)
            b = (dense(**inputs).last_hidden_state * m).sum(1) / m.sum(1)
            vals.append(1 - float(torch.nn.functional.cosine_similarity(a, b, dim=-1).mean()))
    return sum(vals) / len(vals)


RECIPE = """\
version: 1
prune:
  - {what: weights, sparsity: 0.8, scope: layer}
finetune: {epochs: 3, lr: 0.001, loss: embedding%s}
measure: {latency: false}
"""


def test_embedding_finetune_lowers_the_distillation_loss() -> None:
    model = tiny_bert()
    dense = copy.deepcopy(model)
    batches = text_batches()
    recipe = Recipe.from_string(RECIPE % "")
    result = recipe.run(model, data=(batches, batches), measure=False)  # no loss_fn: the recipe's task
    pruned, finetuned = (h["loss"] for h in result.history if h["stage"] in ("pruned", "finetuned"))
    assert finetuned < 0.7 * pruned  # the pruned model moved towards the dense teacher
    assert finetuned == pytest.approx(distill_cosine(model, dense, batches), rel=1e-4, abs=1e-6)
    assert result.after["loss"] == pytest.approx(finetuned, rel=1e-6)
    assert float(pk.sparsity(model)) == pytest.approx(0.8, abs=0.01)  # the masks held during training
    assert Recipe.from_string(recipe.to_yaml()).finetune == recipe.finetune


def test_embedding_finetune_mse_and_the_run_teacher_is_the_dense_model() -> None:
    model = tiny_bert()
    dense = copy.deepcopy(model)
    batches = text_batches()
    run_loss = pk.recipes.task_loss("embedding", model)  # what `--task embedding` passes: a dense copy
    recipe = Recipe.from_string(RECIPE.replace("loss: embedding", "loss: null") % ", distill: mse")
    result = recipe.run(model, data=(batches, batches), loss_fn=run_loss, measure=False)
    pruned, finetuned = (h["loss"] for h in result.history if h["stage"] in ("pruned", "finetuned"))
    assert finetuned < 0.7 * pruned  # history is the run's cosine loss; fine-tuning minimised the MSE
    assert finetuned == pytest.approx(distill_cosine(model, dense, batches), rel=1e-4, abs=1e-6)
    mse = pk.recipes.task_loss("embedding", dense, distance="mse")
    inputs, targets = batches[0]
    with torch.no_grad():
        m = inputs["attention_mask"].unsqueeze(-1).float()
        a = (model(**inputs).last_hidden_state * m).sum(1) / m.sum(1)
        b = (dense(**inputs).last_hidden_state * m).sum(1) / m.sum(1)
        assert float(mse(model(**inputs), targets)) == pytest.approx(float(((a - b) ** 2).mean()), rel=1e-5)


def test_distill_needs_the_embedding_loss_and_bad_losses_name_the_line() -> None:
    batches = text_batches(n=1)
    recipe = Recipe.from_string(RECIPE.replace("loss: embedding", "loss: masked-lm") % ", distill: mse")
    with pytest.raises(pk.ConfigError, match="distill"):
        recipe.run(tiny_bert(), data=(batches, batches), measure=False)
    with pytest.raises(pk.ConfigError, match=r"recipe:4: finetune\.loss: loss must be one of"):
        Recipe.from_string(RECIPE.replace("loss: embedding", "loss: embeding") % "", source="recipe")
    with pytest.raises(pk.ConfigError, match=r"recipe:4: finetune\.distill"):
        Recipe.from_string(RECIPE % ", distill: l1", source="recipe")


LOSS_MODULE = """\
import torch
CALLS = []

def pooled_norm(model, batch):
    inputs, _ = batch
    CALLS.append(int(inputs["input_ids"].shape[0]))
    return model(**inputs).last_hidden_state.pow(2).mean()
"""


def test_user_batch_loss_from_the_recipe_python_and_fit(tmp_path: Path) -> None:
    (tmp_path / "myloss.py").write_text(LOSS_MODULE)
    spec = f"{tmp_path / 'myloss.py'}:pooled_norm"
    batches = text_batches(n=2)
    recipe = Recipe.from_string(RECIPE.replace("loss: embedding", f"loss: '{spec}'") % "")
    run_loss = pk.recipes.task_loss("embedding", tiny_bert())
    with pytest.raises(pk.ConfigError, match="trust_code"):
        recipe.run(tiny_bert(), data=(batches, batches), loss_fn=run_loss, measure=False)
    model = tiny_bert()
    recipe.run(model, data=(batches, batches), loss_fn=run_loss, measure=False, trust_code=True)
    import sys

    (mod,) = [m for name, m in sys.modules.items() if name.endswith("_myloss")]
    assert mod.CALLS == [8] * 6  # 3 epochs x 2 batches, each call got the whole (inputs, inputs) batch
    # Recipe.run(batch_loss=) overrides finetune.loss, with no trust needed
    seen: list[int] = []

    def mine(m: torch.nn.Module, batch: Any) -> torch.Tensor:
        seen.append(1)
        return m(**batch[0]).last_hidden_state.pow(2).mean()

    recipe.run(tiny_bert(), data=(batches, batches), loss_fn=run_loss, measure=False, batch_loss=mine)
    assert len(seen) == 6
    # fit: the general form directly; the validation loss is the same function (mean over examples)
    model = tiny_bert()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = pk.evaluate(model, batches, batch_loss=mine)
    res = pk.fit(model, opt, batches, steps=4, batch_loss=mine, val_loader=batches)
    assert res.final is not None and res.final.loss < before.loss and res.final.accuracy is None
    with pytest.raises(pk.ConfigError, match="not both"):
        pk.fit(model, opt, batches, steps=1, batch_loss=mine, loss_fn=torch.nn.functional.mse_loss)


def test_classification_finetune_still_trains_with_cross_entropy() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    data = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    recipe = Recipe.from_string(
        "prune: [{what: weights, sparsity: 0.5}]\nfinetune: {epochs: 5, lr: 0.01}\nmeasure: {latency: false}\n"
    )
    result = recipe.run(model, data=(data, data), measure=False)
    pruned, finetuned = (h["loss"] for h in result.history if h["stage"] in ("pruned", "finetuned"))
    assert finetuned < pruned
    ev = pk.evaluate(model, data)
    assert ev.loss == pytest.approx(finetuned, rel=1e-6)


def test_cli_loss_option(tmp_path: Path) -> None:
    """`prunekit prune ENCODER --recipe r.yaml --calibration text --loss file.py:fn` on a tiny encoder."""
    from prunekit.cli.main import main

    src, text = tiny_text_encoder(tmp_path, 16)
    (tmp_path / "cliloss.py").write_text(LOSS_MODULE)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "prune: [{what: weights, sparsity: 0.5, scope: layer}]\nfinetune: {epochs: 1, lr: 0.001}\n"
        "measure: {latency: false}\n"
    )
    base = ["prune", str(src), "--recipe", str(recipe), "--calibration", str(text), "--batch-size", "8",
            "--quiet", "--task", "embedding"]  # fmt: skip
    code = main([*base, "--out", str(tmp_path / "a"), "--loss", f"{tmp_path / 'cliloss.py'}:pooled_norm"])
    assert code == 0
    import sys

    (mod,) = [m for name, m in sys.modules.items() if name.endswith("_cliloss")]
    assert mod.CALLS == [8, 8]  # one epoch of the 16 calibration lines in batches of 8
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert [h["stage"] for h in report["history"]] == ["dense", "pruned", "finetuned"]
    # --loss with a task name is written into the run's recipe
    assert main([*base, "--out", str(tmp_path / "b"), "--loss", "embedding"]) == 0
    assert Recipe.from_yaml(tmp_path / "b" / "recipe.yaml").finetune.loss == "embedding"  # type: ignore[union-attr]
    recipe.write_text("prune: [{what: weights, sparsity: 0.5, scope: layer}]\nmeasure: {latency: false}\n")
    assert main([*base, "--out", str(tmp_path / "c"), "--loss", "embedding"]) == 1
    assert not (tmp_path / "c").exists()
