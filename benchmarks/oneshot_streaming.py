"""prune_checkpoint on a checkpoint larger than a few GB: peak RSS against the checkpoint's size.

A randomly initialised LLaMA-shaped checkpoint (GQA, float32, sharded safetensors, >= 6 GB, 60
layers) is written block by block to a temporary directory (never built in memory), pruned by
``prune_checkpoint`` in a child process whose peak RSS (``ru_maxrss``) is measured, then checked:
the pruned directory loads with ``from_pretrained`` (on a 2-layer view of the config, so the check
itself stays small: the index, every shard header and the first layers' tensors), every tensor of
every shard has the source's shape and dtype, and each pruned Linear is 50% zeros. Everything is
deleted at the end.

Command::

    PYTHONPATH=src python benchmarks/oneshot_streaming.py                      # 6.4 GB, wanda
    PYTHONPATH=src python benchmarks/oneshot_streaming.py --layers 4 --method sparsegpt
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

CHILD = textwrap.dedent(
    """
    import json, resource, sys, time, torch
    torch.set_num_threads(int(sys.argv[4]))
    from prunekit.oneshot import prune_checkpoint
    g = torch.Generator().manual_seed(0)
    data = [torch.randint(0, 32000, (4, 128), generator=g) for _ in range(2)]
    start = time.perf_counter()
    result = prune_checkpoint(sys.argv[1], sys.argv[2], data, method=sys.argv[3], sparsity=0.5, progress=False)
    print(json.dumps({"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "seconds": time.perf_counter() - start, "sparsity": result.sparsity,
                      "layers": len(result.layers)}))
    """
)


def write_checkpoint(path: Path, layers: int) -> tuple[int, object]:
    """A random LLaMA-shaped checkpoint written one block per shard; returns (bytes, config)."""
    import transformers
    from safetensors.torch import save_file

    from prunekit.oneshot.streaming import meta_parameters

    cfg = transformers.LlamaConfig(
        vocab_size=32000,
        hidden_size=1536,
        intermediate_size=4096,
        num_hidden_layers=layers,
        num_attention_heads=24,
        num_key_value_heads=8,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    cfg.architectures = ["LlamaForCausalLM"]
    with meta_parameters():
        skeleton = transformers.LlamaForCausalLM(cfg)
    shapes = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    groups: list[list[str]] = [[k for k in shapes if k.startswith(f"model.layers.{i}.")] for i in range(layers)]
    rest = [k for k in shapes if not k.startswith("model.layers.")]
    groups += [[k] for k in rest]
    path.mkdir(parents=True)
    cfg.save_pretrained(path)
    g = torch.Generator().manual_seed(0)
    weight_map, total = {}, 0
    for j, keys in enumerate(groups):
        name = f"model-{j + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for k in keys:
            t = torch.ones(shapes[k]) if k.endswith("norm.weight") else torch.randn(shapes[k], generator=g) * 0.02
            tensors[k] = t
            total += t.numel() * 4
            weight_map[k] = name
        save_file(tensors, str(path / name), metadata={"format": "pt"})
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return total, cfg


def check_output(src: Path, dst: Path, cfg: object) -> dict[str, float]:
    """Reload check on a 2-layer view, plus every tensor's header and the pruned zeros."""
    import transformers
    from safetensors import safe_open

    index = json.loads((dst / "model.safetensors.index.json").read_text())
    src_index = json.loads((src / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(src_index["weight_map"]), "tensor names differ"
    zeros = numel = 0
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(str(dst / shard), framework="pt") as f:
            for k in f.keys():
                with safe_open(str(src / src_index["weight_map"][k]), framework="pt") as s:
                    want = s.get_slice(k)
                    got = f.get_slice(k)
                    assert got.get_shape() == want.get_shape() and got.get_dtype() == want.get_dtype(), k
                if k.startswith("model.layers.0.") and k.endswith("proj.weight"):
                    t = f.get_tensor(k)
                    zeros += int((t == 0).sum())
                    numel += t.numel()
    small = transformers.AutoConfig.from_pretrained(dst)
    small.num_hidden_layers = 2
    import logging

    logging.getLogger("transformers").setLevel(logging.ERROR)  # "unused weights" of the other layers
    model = transformers.LlamaForCausalLM.from_pretrained(dst, config=small)
    w = model.model.layers[1].mlp.down_proj.weight
    ids = torch.randint(0, 32000, (1, 16))
    finite = bool(torch.isfinite(model(ids).logits).all())
    return {"layer0_sparsity": zeros / numel, "reload_layer1_down_sparsity": float((w == 0).float().mean()), "finite": finite}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=60)
    parser.add_argument("--method", default="wanda")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dir", default=None, help="scratch directory (default: a new one in /tmp)")
    args = parser.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="pk-stream-", dir="/tmp"))
    free = shutil.disk_usage(root).free
    need = 2.2 * (args.layers * 25.2e6 + 98.3e6) * 4
    if free < need:
        sys.exit(f"need about {need / 1e9:.1f} GB free in {root}, have {free / 1e9:.1f} GB")
    try:
        start = time.perf_counter()
        size, cfg = write_checkpoint(root / "src", args.layers)
        written = time.perf_counter() - start
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(root / "src"), str(root / "dst"), args.method, str(args.threads)],
            capture_output=True, text=True, env=env, check=True,
        )
        run = json.loads(out.stdout.strip().splitlines()[-1])
        checks = check_output(root / "src", root / "dst", cfg)
        dst_size = sum(p.stat().st_size for p in (root / "dst").iterdir())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nprune_checkpoint, random LLaMA-shaped checkpoint ({args.layers} layers, hidden 1536, GQA 24/8 heads, "
          f"float32), method={args.method}, sparsity 0.5, 8 x 128 calibration tokens, {args.threads} thread(s)\n")
    print("| checkpoint | layers | pruned Linears | peak RSS | RSS / checkpoint | prune time | output | reload |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {size / 1e9:.2f} GB | {args.layers} | {run['layers']} | {run['rss'] / 1e9:.2f} GB | "
          f"{run['rss'] / size:.3f} | {run['seconds']:.0f} s | {dst_size / 1e9:.2f} GB | "
          f"{'ok' if checks['finite'] else 'NaN'} (layer 0 {checks['layer0_sparsity']:.1%} zeros, reloaded "
          f"layer 1 down_proj {checks['reload_layer1_down_sparsity']:.1%}) |")
    print(f"\n(writing the source checkpoint took {written:.0f} s; goal: peak RSS <= 1.5 GB)")


if __name__ == "__main__":
    main()
