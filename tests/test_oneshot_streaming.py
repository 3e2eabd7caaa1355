"""prune_checkpoint: streamed output equals the in-memory result bit for bit; bounded memory; bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from prunekit.errors import ConfigError, FormatError, PrunekitError
from prunekit.oneshot import OneShotConfig, prune_checkpoint, prune_oneshot

transformers = pytest.importorskip("transformers")


def _llama(layers: int = 3, hidden: int = 64) -> Any:
    cfg = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,  # GQA
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def _bert() -> Any:
    cfg = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    torch.manual_seed(0)
    return transformers.BertModel(cfg).eval()


def _batches(vocab: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(2):
        ids = torch.randint(0, vocab, (2, 12), generator=g)
        mask = torch.ones(2, 12, dtype=torch.long)
        mask[1, 8:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


@pytest.mark.parametrize(
    ("factory", "options"),
    [
        (_llama, {"method": "refit", "sparsity": 0.5}),
        (_llama, {"method": "sparsegpt", "sparsity": None, "pattern": "2:4"}),
        (_llama, {"method": "wanda", "sparsity": 0.5, "layer_ratios": "owl", "owl_threshold": 2.0}),
        (_bert, {"method": "refit", "sparsity": 0.6}),
    ],
)
def test_streamed_checkpoint_equals_in_memory_pruning(
    tmp_path: Path, factory: Any, options: dict[str, Any]
) -> None:
    model = factory()
    src = tmp_path / "src"
    model.save_pretrained(src, max_shard_size="60KB")
    assert (src / "model.safetensors.index.json").exists()
    before = _files(src)
    data = _batches(model.config.vocab_size)

    cfg = OneShotConfig(progress=False, **options)
    result = prune_checkpoint(src, tmp_path / "dst", data, config=cfg)

    cls = type(model)
    memory = cls.from_pretrained(src).eval()
    expected = prune_oneshot(memory, data, config=cfg)
    reloaded = cls.from_pretrained(tmp_path / "dst").eval()
    want = memory.state_dict()
    got = reloaded.state_dict()
    assert got.keys() <= want.keys()
    for key, value in got.items():
        assert torch.equal(value, want[key]), key  # bit for bit
    assert [r.to_dict() | {"seconds": 0} for r in result.layers] == [
        r.to_dict() | {"seconds": 0} for r in expected.layers
    ]
    assert _files(src) == before  # the source is only read
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]  # no temporary left
    index = json.loads((tmp_path / "dst" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(
        json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    )


def test_bad_checkpoints_and_destinations(tmp_path: Path) -> None:
    model = _llama(layers=2)
    src = tmp_path / "src"
    model.save_pretrained(src)
    data = _batches(128)
    (tmp_path / "exists").mkdir()
    with pytest.raises(ConfigError, match="exists"):
        prune_checkpoint(src, tmp_path / "exists", data)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match="not a model directory"):
        prune_checkpoint(tmp_path / "empty", tmp_path / "out", data)
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text((src / "config.json").read_text())
    with pytest.raises(FormatError, match="no model.safetensors"):
        prune_checkpoint(tmp_path / "noweights", tmp_path / "out", data)
    with pytest.raises(ConfigError, match="unknown option"):
        prune_checkpoint(src, tmp_path / "out", data, sparsty=0.5)
    with pytest.raises(PrunekitError, match="does not fit"):
        prune_checkpoint(src, tmp_path / "out", [torch.randn(2, 3)], progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "empty",
        "exists",
        "noweights",
        "src",
    ]  # no partial output


_PEAK = textwrap.dedent(
    """
    import resource, sys, torch, transformers
    from prunekit.oneshot import prune_checkpoint
    src, dst = sys.argv[1], sys.argv[2]
    ids = torch.randint(0, 256, (4, 32))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    prune_checkpoint(src, dst, [ids], method="sparsegpt", sparsity=0.5, progress=False)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
    """
)


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_depth(tmp_path: Path) -> None:
    """Two depths (4 and 16 blocks of ~4 MB each): the streamed run's peak RSS stays flat."""
    peaks = {}
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    for layers in (4, 16):
        cfg = transformers.LlamaConfig(
            vocab_size=256,
            hidden_size=256,
            intermediate_size=1024,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
        src = tmp_path / f"src{layers}"
        transformers.LlamaForCausalLM(cfg).save_pretrained(src, max_shard_size="8MB")
        out = subprocess.run(
            [sys.executable, "-c", _PEAK, str(src), str(tmp_path / f"dst{layers}")],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        peaks[layers] = int(out.stdout.strip().splitlines()[-1]) * 1024  # ru_maxrss is KiB on Linux
    block_bytes = 4 * (4 * 256 * 256 + 3 * 256 * 1024)  # ~4 MB per block in float32
    # 12 more blocks (~48 MB) must not show up in the peak
    assert peaks[16] - peaks[4] < 3 * block_bytes, peaks
