"""Test zoo for structured pruning: tiny CPU models, one per coupling pattern, written from scratch.

One registry over the model families (``cnn``, ``attention``, ``misc``, ``hf``). Every factory returns
``(model, example_inputs)``: the model in ``eval()`` mode with deterministic weights (seeded inside the
factory), and a tuple of example inputs for tracing. Building the same factory twice gives bit-identical
models, which the reload tests rely on.

    ZOO      plain PyTorch models (no torchvision)
    HF_ZOO   Hugging Face BERT, GPT-2 and LLaMA-GQA built offline from small configs

``random_inputs(example_inputs, seed)`` draws fresh inputs of the same shapes/dtypes (token ids stay in
the vocabulary) for the oracle tests.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .attention import *  # noqa: F403
from .attention import make_swin, make_vit
from .cnn import *  # noqa: F403
from .cnn import (
    make_conv_classifier,
    make_densenet,
    make_efficientnet,
    make_flatten_linear,
    make_grouped_conv,
    make_inception,
    make_inplace,
    make_mobilenet_v2,
    make_mobilenet_v3,
    make_resnet_basic,
    make_resnet_bottleneck,
    make_shufflenet,
    make_unet,
)
from .common import Factory, Inputs
from .hf import *  # noqa: F403
from .hf import make_bert, make_gpt2, make_llama, tiny_text_encoder
from .misc import *  # noqa: F403
from .misc import Branches, make_custom_function, make_frozen, make_moe, small_cnn
from .torchvision_like import make_tv_maxvit, make_tv_swin

ZOO: dict[str, Factory] = {
    "resnet_basic": make_resnet_basic,
    "resnet_bottleneck": make_resnet_bottleneck,
    "mobilenet_v2": make_mobilenet_v2,
    "mobilenet_v3": make_mobilenet_v3,
    "densenet": make_densenet,
    "efficientnet": make_efficientnet,
    "inception": make_inception,
    "unet": make_unet,
    "shufflenet": make_shufflenet,
    "grouped_conv": make_grouped_conv,
    "flatten_linear": make_flatten_linear,
    "conv_classifier": make_conv_classifier,
    "inplace": make_inplace,
    "vit": make_vit,
    "swin": make_swin,
    "tv_swin_t": make_tv_swin,
    "tv_maxvit": make_tv_maxvit,
    "custom_function": make_custom_function,
    "moe": make_moe,
    "frozen": make_frozen,
}

HF_ZOO: dict[str, Factory] = {
    "bert_eager": lambda: make_bert("eager"),
    "bert_sdpa": lambda: make_bert("sdpa"),
    "gpt2_eager": lambda: make_gpt2("eager"),
    "gpt2_sdpa": lambda: make_gpt2("sdpa"),
    "llama_gqa_eager": lambda: make_llama("eager"),
    "llama_gqa_sdpa": lambda: make_llama("sdpa"),
}


def random_inputs(example_inputs: Inputs, seed: int) -> Inputs:
    """Fresh inputs shaped like ``example_inputs``: normal floats, token ids within the vocabulary."""
    g = torch.Generator().manual_seed(seed)
    out: list[Any] = []
    for x in example_inputs:
        if isinstance(x, Tensor) and x.is_floating_point():
            out.append(torch.randn(x.shape, generator=g, dtype=x.dtype))
        elif isinstance(x, Tensor):
            out.append(torch.randint(0, max(1, int(x.max()) + 1), x.shape, generator=g, dtype=x.dtype))
        else:
            out.append(x)
    return tuple(out)


def output_tensors(y: Any) -> list[Tensor]:
    """Flatten a model output (tensor, tuple, dict or Hugging Face ModelOutput) to its tensors."""
    if isinstance(y, Tensor):
        return [y]
    if isinstance(y, dict):  # ModelOutput is a dict subclass
        return [t for v in y.values() for t in output_tensors(v)]
    if isinstance(y, (list, tuple)):
        return [t for v in y for t in output_tensors(v)]
    return []


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


__all__ = [
    "Branches",
    "Factory",
    "Inputs",
    "small_cnn",
    "tiny_text_encoder",
    "HF_ZOO",
    "ZOO",
    "n_parameters",
    "output_tensors",
    "random_inputs",
]
