"""``prune_checkpoint``: prune a Hugging Face checkpoint directory block by block, never all in memory.

::

    src/config.json ──► model skeleton, every parameter on the meta device (buffers real)
    embeddings (modules before the blocks) ◄── loaded from src (safetensors, lazily)
    calibration batches ──► block-0 inputs
    for each block i:   load its tensors ◄── src     prune (as prune_oneshot)     write ──► shard i
                        free them (back to meta)     pruned outputs ──► block i+1
    the other tensors (lm_head, final norm, ...) ──► copied tensor by tensor into their own shards
    config, tokenizer files ──► copied; model.safetensors.index.json ──► written
    tmp dir ──► renamed to dst (no partial output on failure)

Peak memory: the embeddings, one block, its statistics and the calibration activations.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.core import remove_mask
from prunekit.errors import ConfigError, FormatError
from prunekit.oneshot.api import UNSET, eval_mode, plan_for, resolve_config
from prunekit.oneshot.config import OneShotConfig
from prunekit.oneshot.driver import run_blocks
from prunekit.oneshot.engine import capture_inputs
from prunekit.oneshot.result import OneShotResult

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
OTHER_SHARD_BYTES = 1 << 28  # tensors outside the blocks are copied in shards of about this size


def weight_map(src: Path) -> dict[str, str]:
    """``{tensor name: file name}`` of a safetensors checkpoint directory.

    Raises:
        FormatError: not a directory with ``config.json`` and safetensors weights.
    """
    if not src.is_dir() or not (src / "config.json").is_file():
        raise FormatError(
            f"{str(src)!r} is not a model directory: expected a folder with config.json and safetensors "
            "weights (as save_pretrained writes)"
        )
    if (src / INDEX).is_file():
        try:
            index = json.loads((src / INDEX).read_text(encoding="utf-8"))
            mapping = dict(index["weight_map"])
        except (ValueError, KeyError, TypeError) as e:
            raise FormatError(f"{str(src / INDEX)!r} is not a safetensors index: {e}") from e
        missing = sorted({f for f in mapping.values() if not (src / f).is_file()})
        if missing:
            raise FormatError(f"{str(src)!r}: shard(s) {missing} named in {INDEX} are missing")
        return {str(k): str(v) for k, v in mapping.items()}
    if (src / SINGLE).is_file():
        from safetensors import safe_open

        with safe_open(str(src / SINGLE), framework="pt") as f:
            return dict.fromkeys(f.keys(), SINGLE)
    raise FormatError(
        f"{str(src)!r} has no {SINGLE} or {INDEX}: prune_checkpoint reads safetensors checkpoints only "
        "(re-save the model with save_pretrained(..., safe_serialization=True))"
    )


@contextlib.contextmanager
def meta_parameters() -> Iterator[None]:
    """Create every ``nn.Parameter`` on the meta device while the body builds a model (buffers stay real)."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def skeleton(src: Path) -> nn.Module:
    """The model class named in ``src/config.json``, built with all parameters on meta."""
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(str(src))
    except Exception as e:
        raise FormatError(f"{str(src / 'config.json')!r} is not a transformers config: {e}") from e
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if isinstance(arch, str) else None
    with meta_parameters():
        model = cls(config) if cls is not None else transformers.AutoModel.from_config(config)  # type: ignore[no-untyped-call]
    assert isinstance(model, nn.Module)
    return model.eval()


class Streamer:
    """Moves tensors between the source files, the skeleton and the destination shards."""

    def __init__(
        self,
        src: Path,
        tmp: Path,
        model: nn.Module,
        mapping: Mapping[str, str],
        block_name: str,
        n_blocks: int,
    ) -> None:

        self.src, self.tmp, self.model, self.block_name = src, tmp, model, block_name
        self.mapping = dict(mapping)
        self.prefixes = [f"{block_name}.{i}." for i in range(n_blocks)]
        self.block_keys: list[list[str]] = [[k for k in mapping if k.startswith(p)] for p in self.prefixes]
        in_blocks = {k for keys in self.block_keys for k in keys}
        self.other_groups = self._group([k for k in mapping if k not in in_blocks])
        self.total = n_blocks + len(self.other_groups)
        self.out_map: dict[str, str] = {}
        self.size = 0

    def _group(self, keys: list[str]) -> list[list[str]]:
        groups: list[list[str]] = []
        current: list[str] = []
        size = 0
        for k in keys:
            with self.open(k) as f:
                sl = f.get_slice(k)
                shape, dtype = sl.get_shape(), sl.get_dtype()
            nbytes = int(torch.Size(shape).numel()) * _itemsize(dtype)
            if current and size + nbytes > OTHER_SHARD_BYTES:
                groups.append(current)
                current, size = [], 0
            current.append(k)
            size += nbytes
        if current:
            groups.append(current)
        return groups

    def open(self, key: str) -> Any:
        """The file holding ``key``, opened for this read only: a long-lived memory map would keep
        every page read so far resident, and the process would grow with the checkpoint."""
        from safetensors import safe_open

        return safe_open(str(self.src / self.mapping[key]), framework="pt")

    def read(self, key: str) -> torch.Tensor:
        with self.open(key) as f:
            return f.get_tensor(key)  # type: ignore[no-any-return]

    def materialize(self, module: nn.Module, prefix: str) -> None:
        """Load every meta parameter of ``module`` (named ``prefix...``) that the checkpoint holds."""
        for name, sub in module.named_modules():
            for pname, param in list(sub._parameters.items()):
                key = f"{prefix}{name + '.' if name else ''}{pname}"
                if param is not None and param.device.type == "meta" and key in self.mapping:
                    sub._parameters[pname] = nn.Parameter(self.read(key), requires_grad=False)

    def load_front(self, blocks: nn.Module) -> None:
        """Materialize the modules registered before the blocks (embeddings and such)."""
        for name, module in self.model.named_modules():
            if name == self.block_name:
                break
            if name and name.startswith(self.block_name + "."):
                continue
            for pname, param in list(module._parameters.items()):
                key = f"{name}.{pname}" if name else pname
                if param is not None and param.device.type == "meta" and key in self.mapping:
                    module._parameters[pname] = nn.Parameter(self.read(key), requires_grad=False)

    def shard_name(self, index: int) -> str:
        return f"model-{index + 1:05d}-of-{self.total:05d}.safetensors"

    def write(self, index: int, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        name = self.shard_name(index)
        save_file(
            {k: v.contiguous() for k, v in tensors.items()}, str(self.tmp / name), metadata={"format": "pt"}
        )
        for k, v in tensors.items():
            self.out_map[k] = name
            self.size += v.numel() * v.element_size()

    def block_hooks(self, blocks: nn.ModuleList) -> tuple[Any, Any]:
        def load(i: int, final: bool) -> None:
            self.materialize(blocks[i], self.prefixes[i])

        def unload(i: int, final: bool) -> None:
            block = blocks[i]
            if final:
                own = dict(block.state_dict(prefix=self.prefixes[i]))
                out = {k: own[k].detach() if k in own else self.read(k) for k in self.block_keys[i]}
                self.write(i, out)
                del out, own
            to_meta(block)
            release_memory()

        return load, unload

    def finish(self, n_blocks: int) -> None:
        to_meta(self.model)  # the embeddings are read again below, one shard at a time
        release_memory()
        for j, keys in enumerate(self.other_groups):
            self.write(n_blocks + j, {k: self.read(k) for k in keys})
        for item in self.src.iterdir():
            if item.name == INDEX or item.suffix == ".safetensors" or not item.is_file():
                continue
            shutil.copy2(item, self.tmp / item.name)
        index = {"metadata": {"total_size": self.size}, "weight_map": dict(sorted(self.out_map.items()))}
        (self.tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def to_meta(module: nn.Module) -> None:
    """Drop masks and move every parameter of ``module`` back to meta (frees its memory)."""
    for sub in module.modules():
        remove_mask(sub, "weight")
        for pname, param in list(sub._parameters.items()):
            if param is not None and param.device.type != "meta":
                sub._parameters[pname] = nn.Parameter(param.to("meta"), requires_grad=False)


def release_memory() -> None:
    """Give freed heap pages back to the OS (glibc keeps them otherwise, and RSS creeps up block
    after block); a no-op where ``malloc_trim`` does not exist."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def _itemsize(dtype: str) -> int:
    sizes = {
        "F64": 8,
        "I64": 8,
        "U64": 8,
        "F32": 4,
        "I32": 4,
        "U32": 4,
        "F16": 2,
        "BF16": 2,
        "I16": 2,
        "U16": 2,
    }
    return sizes.get(dtype, 1)


def prune_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    data: Iterable[Any],
    *,
    config: Any = None,
    **options: Any,
) -> OneShotResult:
    """Prune a Hugging Face safetensors checkpoint into a new directory, one block in memory at a time.

    The result in ``dst`` is what ``save_pretrained`` writes (config, sharded safetensors with an
    index, the other files of ``src`` copied), so ``from_pretrained(dst)`` loads the pruned model;
    its weights are those :func:`prune_oneshot` gives on the same model and data, bit for bit.

    Args:
        src: a checkpoint directory (``config.json`` + ``model.safetensors`` or a sharded index).
        dst: the output directory; must not exist.
        data: calibration batches, as for :func:`prune_oneshot`.
        config: a :class:`OneShotConfig` (or give its options as keywords: ``method``,
            ``sparsity``, ``pattern``, ``include``, ``exclude``, ``layer_ratios``, ...).
        **options: :class:`OneShotConfig` fields.

    Returns:
        A :class:`OneShotResult`.

    Raises:
        FormatError: ``src`` is not a safetensors model directory.
        ConfigError: ``dst`` exists, or a bad option.
        DataRequiredError, PrunekitError: as :func:`prune_oneshot`.

    ``src`` is only read; on any error nothing is left at ``dst``.
    """
    start = time.perf_counter()
    src_path, dst_path = Path(src), Path(dst)
    if dst_path.exists():
        raise ConfigError(
            f"output directory {str(dst_path)!r} exists; pass a new path (nothing is overwritten)"
        )
    known = {f.name for f in fields(OneShotConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for prune_checkpoint; valid: {sorted(known)}")
    cfg = resolve_config(config, {k: options.get(k, UNSET) for k in options})
    mapping = weight_map(src_path)
    model = skeleton(src_path)
    block_name, plan, skipped = plan_for(model, cfg)
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst_path.name}.", dir=dst_path.parent))
    try:
        blocks = model.get_submodule(block_name)
        assert isinstance(blocks, nn.ModuleList)
        streamer = Streamer(src_path, tmp, model, mapping, block_name, len(blocks))
        streamer.load_front(blocks)
        load, unload = streamer.block_hooks(blocks)
        with eval_mode(model), torch.no_grad():
            batches, hidden = capture_inputs(model, blocks[0], data, cfg.max_batches)
            layers, not_run = run_blocks(cfg, plan, batches, hidden, load=load, unload=unload)
        streamer.finish(len(blocks))
        tokens = sum(
            int(b.token_mask.sum()) if b.token_mask is not None else h.shape[:-1].numel()
            for b, h in zip(batches, hidden, strict=True)
        )
        del streamer
        os.replace(tmp, dst_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return OneShotResult(
        method=cfg.method,
        pattern=cfg.pattern,
        target_sparsity=cfg.target_sparsity,
        blocks=block_name,
        layers=tuple(layers),
        skipped=tuple(skipped + not_run),
        calibration_tokens=tokens,
        seconds=time.perf_counter() - start,
    )


__all__ = ["meta_parameters", "prune_checkpoint", "skeleton", "weight_map"]
