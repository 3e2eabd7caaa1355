"""Files: ``pk.save`` / ``pk.load`` (safetensors + a JSON plan, never pickle) and Hugging Face export."""

from __future__ import annotations

from prunekit.io.format import (
    file_size,
    information_limit_bits,
    load,
    read_extra,
    rice_decode,
    rice_encode,
    save,
    tensor_information_bits,
)
from prunekit.io.hf import is_hf_model, save_pretrained, set_num_hidden_layers, sync_hf_config

__all__ = [
    "file_size",
    "information_limit_bits",
    "is_hf_model",
    "load",
    "read_extra",
    "rice_decode",
    "rice_encode",
    "save",
    "save_pretrained",
    "set_num_hidden_layers",
    "sync_hf_config",
    "tensor_information_bits",
]
