"""save_pretrained after weight pruning (no mask keys), CLI --save-pretrained and portable run directories."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import prunekit as pk
from prunekit.cli.main import main
from zoo import make_bert, tiny_text_encoder

transformers = pytest.importorskip("transformers")


def _hidden(model: torch.nn.Module, x: tuple[torch.Tensor, ...]) -> torch.Tensor:
    with torch.no_grad():
        return model(*x).last_hidden_state


def test_save_pretrained_folds_masks(tmp_path: Path) -> None:
    model, x = make_bert("eager")
    model.eval()
    pk.prune_weights(model, 0.6)
    masks_before = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("_mask")}
    assert masks_before
    expected = _hidden(model, x)
    pk.save_pretrained(model, tmp_path)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert not [k for k in keys if k.endswith("_mask")]
    loaded, info = transformers.BertModel.from_pretrained(
        tmp_path, add_pooling_layer=False, output_loading_info=True
    )
    assert not info["unexpected_keys"] and not info["missing_keys"]
    torch.testing.assert_close(_hidden(loaded.eval(), x), expected, rtol=0, atol=1e-6)
    assert pk.sparsity(loaded) == pytest.approx(pk.sparsity(model))
    # the user's model still carries its masks, in force
    after = {k: v for k, v in model.state_dict().items() if k.endswith("_mask")}
    assert after.keys() == masks_before.keys()
    assert all(torch.equal(after[k], masks_before[k]) for k in after)


def _hf_dir(tmp_path: Path) -> Path:
    model, _ = make_bert("eager")
    model = transformers.BertModel(model.config)  # with its pooler, so from_pretrained misses nothing
    out = tmp_path / "tiny-bert"
    model.save_pretrained(str(out))
    return out


def test_cli_save_pretrained_and_portable_run_dir(tmp_path: Path) -> None:
    src = _hf_dir(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nname: w\nprune:\n  - what: weights\n    sparsity: 0.5\n    criterion: magnitude\n"
        "    scope: layer\nmeasure: {latency: false}\n"
    )
    run_dir, hf_dir = tmp_path / "run", tmp_path / "hf"
    code = main(["prune", str(src), "--recipe", str(recipe), "--out", str(run_dir),
                 "--save-pretrained", str(hf_dir), "--quiet", "--no-latency"])  # fmt: skip
    assert code == 0
    loaded, info = transformers.AutoModel.from_pretrained(hf_dir, output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"]
    assert pk.sparsity(loaded) > 0.3
    header = json.loads((run_dir / "prunekit-model.json").read_text())
    assert not Path(header["source"]["relpath"]).is_absolute()
    # the run directory survives moving it and deleting the original model folder
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    shutil.move(str(run_dir), moved)
    shutil.rmtree(src)
    from prunekit.recipes import load_model

    again = load_model(str(moved)).model.eval()
    ids = torch.randint(0, 50, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(again(ids).last_hidden_state, loaded.eval()(ids).last_hidden_state)


def test_cli_analyze_an_encoder_from_a_calibration_text_file(tmp_path: Path) -> None:
    """`prunekit analyze` on a model that is not a classifier: --calibration text, embedding task."""
    src, text = tiny_text_encoder(tmp_path, 24)
    code = main(["analyze", str(src), "--calibration", str(text), "--out", str(tmp_path / "sens"),
                 "--ratios", "0.5,0.9", "--max-batches", "1", "--batch-size", "8", "--quiet"])  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "sens" / "report.json").read_text())
    layers = report["sensitivity"]["layers"]
    assert len(layers) >= 4 and all(len(la["loss"]) == 2 for la in layers)
    # embedding task: the loss is 1 - cosine to the dense model: never negative, and > 0 once a layer is pruned
    losses = [v for la in layers for v in la["loss"]]
    assert all(math.isfinite(v) and v >= -1e-6 for v in losses) and max(losses) > 0
