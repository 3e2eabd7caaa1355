"""Where models and data come from, for the command line and recipes.

A MODEL is one of::

    runs/mag90/                  a directory written by prunekit (prunekit-model.json + model.safetensors)
    path/to/hf-model/            a Hugging Face model directory (config.json + weights)
    examples.models:digits_cnn   module:factory (or path/to/file.py:factory) returning a model,
                                 or (model, example_inputs)

A prunekit model directory records how to rebuild the unpruned model (the factory or the Hugging Face
directory) and its example inputs; the weights and any structured plan are in ``model.safetensors``
(``prunekit.save``), so ``prunekit.load`` can re-apply the plan to the rebuilt model::

    DIR/prunekit-model.json          {"format": "prunekit-model", "version": 1, "source": {...}}
    DIR/model.safetensors            prunekit.save(model, ...)
    DIR/example_inputs.safetensors   the example inputs (tensors), for MACs, latency and tracing
    DIR/base-model/                  Hugging Face sources only: the dense model's config and tokenizer files

Directories are portable: file paths are recorded relative to DIR (with the absolute path as a fallback),
and a Hugging Face model is rebuilt from ``DIR/base-model`` (its config; every weight comes from
``model.safetensors``), so a run directory can be moved or shared without the original model folder.

DATA is module:factory returning a DataLoader (used for training and evaluation), a
``(train, test)`` pair of them or a :class:`prunekit.core.datasets.Split`; or a built-in name (``digits``,
``mnist``, ``fashion-mnist``; the last two read IDX files from ``data_dir``).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.core import atomic_write_bytes, check_json_digest, open_sealed, seal_json, write_sealed
from prunekit.errors import ConfigError, FormatError

MODEL_JSON = "prunekit-model.json"
WEIGHTS_FILE = "model.safetensors"
INPUTS_FILE = "example_inputs.safetensors"
FORMAT_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class LoadedModel:
    """A model, its example inputs (or ``None``), and how to rebuild it (recorded in saved directories)."""

    model: nn.Module
    example_inputs: Any
    source: dict[str, Any]
    path: str | None = None  # the directory it was read from, if any


@dataclass(frozen=True, kw_only=True)
class DataBundle:
    """Training and evaluation batches (they may be the same loader)."""

    train: Iterable[Any]
    test: Iterable[Any]
    name: str
    extra: dict[str, Any] = field(default_factory=dict)


def import_object(spec: str, what: str = "factory") -> Any:
    """The object named by ``module:attr`` or ``path/to/file.py:attr`` (the cwd is importable).

    Raises:
        ConfigError: with what was tried when the module or attribute does not exist.
    """
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{what} {spec!r} must look like 'module:function' or 'path/to/file.py:function'")
    if module_name.endswith(".py") or os.sep in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise ConfigError(f"{what} {spec!r}: file {path} does not exist")
        mod_spec = importlib.util.spec_from_file_location(f"_prunekit_user_{path.stem}", path)
        if mod_spec is None or mod_spec.loader is None:
            raise ConfigError(f"{what} {spec!r}: cannot import {path}")
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[mod_spec.name] = module
        mod_spec.loader.exec_module(module)
    else:
        cwd = os.getcwd()
        if cwd not in sys.path:
            sys.path.insert(0, cwd)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            raise ConfigError(
                f"{what} {spec!r}: cannot import module {module_name!r} ({e}); "
                "run from the folder that holds it, or give path/to/file.py:function"
            ) from e
    try:
        return getattr(module, attr)
    except AttributeError as e:
        names = sorted(n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n)))
        raise ConfigError(
            f"{what} {spec!r}: module {module_name!r} has no {attr!r}; callables there: {', '.join(names) or 'none'}"
        ) from e


def _from_factory(spec: str) -> tuple[nn.Module, Any]:
    factory = import_object(spec, "model factory")
    out = factory() if callable(factory) else factory
    example = None
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], nn.Module):
        out, example = out
    if not isinstance(out, nn.Module):
        raise ConfigError(
            f"model factory {spec!r} returned {type(out).__name__}; expected an nn.Module or (model, example_inputs)"
        )
    return out, example


def _hf_example_inputs(model: nn.Module, seq_len: int = 16) -> dict[str, torch.Tensor]:
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 1000) or 1000)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (1, seq_len), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _existing_hf_dir(source: dict[str, Any], relative_to: Path) -> Path | None:
    """The Hugging Face directory a source names: relative to ``relative_to`` first, then absolute."""
    for cand in (
        relative_to / source["relpath"] if source.get("relpath") else None,
        relative_to / BASE_MODEL_DIR,
        Path(source["path"]) if source.get("path") else None,
    ):
        if cand is not None and (cand / "config.json").exists():
            return cand
    return None


def _from_hf(path: Path, *, weights: bool = True) -> tuple[nn.Module, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if path.is_dir() and not any(path.glob("*.safetensors")):
        pickles = sorted(
            p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")
        )
        if pickles:
            raise FormatError(
                f"{path} holds only pickle weights ({', '.join(pickles[:3])}), and pickle weights are not loaded "
                "(loading a pickle can run code); convert to safetensors where you trust the file, e.g. "
                "model.save_pretrained(dir, safe_serialization=True) where you trust the file"
            )
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ConfigError(f"{path} is a Hugging Face model directory; install transformers to read it") from e
    try:
        transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # our own output stays readable (and --quiet quiet)
    except AttributeError:  # pragma: no cover - older transformers
        pass
    try:
        config = transformers.AutoConfig.from_pretrained(str(path))
        archs = list(getattr(config, "architectures", None) or [])
        cls = getattr(transformers, archs[0], None) if archs else None
        if weights:
            model = (cls or transformers.AutoModel).from_pretrained(str(path))
        else:  # the architecture only: every weight is loaded afterwards
            model = cls(config) if cls is not None else transformers.AutoModel.from_config(config)  # type: ignore[no-untyped-call]
    except (OSError, ValueError, KeyError) as e:
        raise FormatError(f"cannot read the Hugging Face model in {path}: {' '.join(str(e).split())}") from e
    model.eval()
    return model, _hf_example_inputs(model)


_INPUTS_KEY = "prunekit.inputs"


def _save_inputs(example: Any, path: Path) -> dict[str, Any]:
    if isinstance(example, torch.Tensor):
        tensors, kind = {"0": example}, "tensor"
    elif isinstance(example, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in example):
        tensors, kind = {str(i): t for i, t in enumerate(example)}, "tuple"
    elif isinstance(example, dict) and all(isinstance(t, torch.Tensor) for t in example.values()):
        tensors, kind = dict(example), "dict"
    else:
        return {"kind": "none"}
    write_sealed(path, tensors, _INPUTS_KEY, {"kind": kind})
    return {"kind": kind, "keys": list(tensors)}


def _load_inputs(path: Path, meta: dict[str, Any]) -> Any:
    from safetensors.torch import load_file

    kind = meta.get("kind", "none")
    if kind == "none" or not path.exists():
        return None
    try:
        tensors = open_sealed(path, _INPUTS_KEY, "example inputs written by prunekit").read_all()
    except FormatError as e:
        if f"without the {_INPUTS_KEY!r} header" not in str(e):
            raise
        tensors = load_file(str(path))  # written before inputs were sealed (the table was checked above)
    keys = meta.get("keys", list(tensors))
    if kind == "tensor":
        return tensors[keys[0]]
    if kind == "tuple":
        return tuple(tensors[k] for k in keys)
    return {k: tensors[k] for k in keys}


BASE_MODEL_DIR = "base-model"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".ckpt", ".gguf")


def copy_hf_support_files(source: str | Path, directory: str | Path) -> list[str]:
    """Copy a Hugging Face directory's config and tokenizer files (not its weights) into ``directory``."""
    import shutil

    src, out = Path(source), Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    copied = []
    for f in sorted(src.iterdir()):
        if f.is_file() and not f.name.endswith(_WEIGHT_SUFFIXES) and f.stat().st_size < 64 * 2**20:
            if not (out / f.name).exists():
                shutil.copy2(f, out / f.name)
                copied.append(f.name)
    return copied


def _portable(source: dict[str, Any], directory: Path) -> dict[str, Any]:
    """``source`` with its file path also recorded relative to the directory being written."""
    out = dict(source)
    target = source.get("path") if source.get("kind") == "hf" else None
    if source.get("kind") == "factory" and ":" in str(source.get("spec", "")):
        module = str(source["spec"]).rpartition(":")[0]
        if module.endswith(".py") or os.sep in module:
            target = module
    if target:
        try:
            out["relpath"] = os.path.relpath(Path(target).resolve(), directory.resolve())
        except ValueError:  # another drive (Windows)
            pass
    if source.get("kind") == "factory" and source.get("cwd"):
        try:
            out["relcwd"] = os.path.relpath(Path(source["cwd"]).resolve(), directory.resolve())
        except ValueError:
            pass
    return out


def save_model_dir(loaded: LoadedModel, directory: str | Path, model: nn.Module | None = None) -> Path:
    """Write a prunekit model directory (see the module docstring) for ``model`` (default ``loaded.model``)."""
    from prunekit.io import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = loaded.model if model is None else model
    save(model, directory / WEIGHTS_FILE)
    inputs_meta = _save_inputs(loaded.example_inputs, directory / INPUTS_FILE)
    source = _portable(loaded.source, directory)
    if loaded.source.get("kind") == "hf":
        base = _existing_hf_dir(loaded.source, Path(loaded.path) if loaded.path else directory)
        if base is not None and base.resolve() != (directory / BASE_MODEL_DIR).resolve():
            copy_hf_support_files(base, directory / BASE_MODEL_DIR)
    header = {
        "format": "prunekit-model",
        "version": FORMAT_VERSION,
        "source": source,
        "example_inputs": inputs_meta,
    }
    atomic_write_bytes(directory / MODEL_JSON, (json.dumps(seal_json(header), indent=2) + "\n").encode())
    return directory


def write_pretrained(loaded: LoadedModel, model: nn.Module, directory: str | Path) -> Path:
    """Write ``model`` as a ``from_pretrained`` directory, with the source's tokenizer files.

    Raises:
        ConfigError: the model is not a Hugging Face model.
        PlanError: its config cannot express the pruned shapes (see :func:`prunekit.io.save_pretrained`).
    """
    from prunekit.io import is_hf_model, save_pretrained

    if not is_hf_model(model):
        raise ConfigError(
            f"--save-pretrained needs a Hugging Face model; {type(model).__name__} is not one "
            "(the run directory's model.safetensors holds it: prunekit.load(path, model))"
        )
    out = save_pretrained(model, directory)
    base = (
        _existing_hf_dir(loaded.source, Path(loaded.path) if loaded.path else Path.cwd())
        if loaded.source.get("kind") == "hf"
        else None
    )
    if base is not None:
        copy_hf_support_files(base, out)  # tokenizer files; the config just written is kept
    return out


def _load_weights(model: nn.Module, path: Path) -> nn.Module:
    from prunekit.io import load

    out = load(path, model)
    return out if isinstance(out, nn.Module) else model


def _refuse_code(path: Path, spec: Any) -> ConfigError:
    return ConfigError(
        f"{path / MODEL_JSON} names Python code to rebuild the model ({spec!r}); prunekit does not import or run "
        "code named by a file unless you trust it: pass trust_code=True (CLI: --trust-code) if you wrote this "
        "directory or trust whoever did, or rebuild the model yourself and use prunekit.load(weights, model)"
    )


def _from_prunekit_dir(path: Path, trust_code: bool = False) -> LoadedModel:
    try:
        header = json.loads((path / MODEL_JSON).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{path / MODEL_JSON} is not valid JSON ({e}); the directory is damaged") from e
    if not isinstance(header, dict):
        raise FormatError(f"{path / MODEL_JSON} is not a JSON object; the directory is damaged")
    check_json_digest(header, path / MODEL_JSON)
    if not isinstance(header.get("source") or {}, dict):
        raise FormatError(f"{path / MODEL_JSON}: 'source' is not a table; the directory is damaged")
    if header.get("format") != "prunekit-model":
        raise FormatError(f"{path / MODEL_JSON} was not written by prunekit (no 'format': 'prunekit-model')")
    source = header.get("source") or {}
    kind = source.get("kind")
    if kind == "factory":
        if not trust_code:
            raise _refuse_code(path, source.get("spec"))
        spec = str(source["spec"])
        rel = source.get("relpath")
        if rel and (path / rel).exists():
            spec = f"{(path / rel).resolve()}:{spec.rpartition(':')[2]}"
        for cwd in ((path / source["relcwd"]) if source.get("relcwd") else None, source.get("cwd")):
            if cwd and str(cwd) not in sys.path and Path(cwd).is_dir():
                sys.path.append(str(cwd))  # the folder the factory was imported from
        model, example = _from_factory(spec)
    elif kind == "hf":
        if (path / BASE_MODEL_DIR / "config.json").exists():
            model, example = _from_hf(path / BASE_MODEL_DIR, weights=False)
        else:
            base = _existing_hf_dir(source, path)
            if base is None:
                raise FormatError(
                    f"{path / MODEL_JSON}: the Hugging Face model it was pruned from is gone "
                    f"({source.get('path')!r}) and the directory has no {BASE_MODEL_DIR}/; "
                    "re-run prunekit prune (it now copies the config into the run directory)"
                )
            model, example = _from_hf(base)
    else:
        raise FormatError(
            f"{path / MODEL_JSON}: unknown model source {source!r}; expected kind 'factory' or 'hf'"
        )
    weights = path / WEIGHTS_FILE
    if not weights.exists():
        raise FormatError(f"{weights} is missing; the directory is incomplete")
    model = _load_weights(model, weights)
    saved_inputs = _load_inputs(path / INPUTS_FILE, header.get("example_inputs") or {})
    return LoadedModel(
        model=model,
        example_inputs=saved_inputs if saved_inputs is not None else example,
        source=source,
        path=str(path),
    )


def _factory_source(spec: str) -> dict[str, Any]:
    """How to find ``spec`` again from another folder: file paths made absolute, the import folder kept."""
    module, _, attr = spec.rpartition(":")
    if module.endswith(".py") or os.sep in module:
        return {"kind": "factory", "spec": f"{Path(module).resolve()}:{attr}"}
    return {"kind": "factory", "spec": spec, "cwd": os.getcwd()}


def load_model(spec: str, *, trust_code: bool = False) -> LoadedModel:
    """Resolve a MODEL argument (see the module docstring).

    A ``module:factory`` given as ``spec`` is the caller's own code and is imported. A prunekit directory
    whose ``model.json`` names a factory is data written by someone: its code is imported only with
    ``trust_code=True``.

    Raises:
        ConfigError: the path/spec does not exist or is not a model.
        FormatError: a directory that is damaged or does not fit its model.
    """
    path = Path(spec)
    if path.is_dir():
        if (path / MODEL_JSON).exists():
            return _from_prunekit_dir(path, trust_code)
        if (path / "config.json").exists():
            model, example = _from_hf(path)
            return LoadedModel(
                model=model, example_inputs=example, source={"kind": "hf", "path": str(path.resolve())}
            )
        raise ConfigError(
            f"{spec} is a directory but not a model: expected {MODEL_JSON} (written by prunekit) "
            "or config.json (a Hugging Face model directory)"
        )
    if ":" in spec and not path.exists():
        model, example = _from_factory(spec)
        return LoadedModel(model=model, example_inputs=example, source=_factory_source(spec))
    if path.exists():
        raise ConfigError(
            f"MODEL {spec!r} is a file; expected a directory written by prunekit, a Hugging Face model "
            "directory, or module:factory"
        )
    raise ConfigError(
        f"MODEL {spec!r} not found: expected a directory written by prunekit, a Hugging Face model directory, "
        "or module:factory (e.g. examples.models:digits_cnn)"
    )


def load_data(
    spec: str, *, data_dir: str | None = None, batch_size: int = 64, seed: int = 0, limit: int | None = None
) -> DataBundle:
    """Resolve a DATA argument: a built-in name or ``module:factory`` (see the module docstring)."""
    from prunekit.core import BUILTIN, Split, load_builtin

    if spec in BUILTIN:
        split = load_builtin(spec, data_dir, limit)
        train, test = split.loaders(batch_size=batch_size, seed=seed)
        return DataBundle(train=train, test=test, name=spec)
    if ":" not in spec:
        raise ConfigError(
            f"unknown data {spec!r}; expected a built-in name ({', '.join(BUILTIN)}) or module:factory"
        )
    factory = import_object(spec, "data factory")
    out = factory() if callable(factory) else factory
    if isinstance(out, Split):
        train, test = out.loaders(batch_size=batch_size, seed=seed)
        return DataBundle(train=train, test=test, name=spec)
    if isinstance(out, tuple) and len(out) == 2 and all(hasattr(x, "__iter__") for x in out):
        return DataBundle(train=out[0], test=out[1], name=spec)
    if hasattr(out, "__iter__"):
        return DataBundle(train=out, test=out, name=spec)
    raise ConfigError(
        f"data factory {spec!r} returned {type(out).__name__}; expected a DataLoader, a (train, test) pair or a Split"
    )


def first_inputs(data: DataBundle) -> Any:
    """The inputs of the first test batch (to use as example inputs, one example)."""
    from prunekit.core import split_batch

    inputs, _ = split_batch(next(iter(data.test)))
    if isinstance(inputs, torch.Tensor):
        return inputs[:1]
    if isinstance(inputs, dict):
        return {k: v[:1] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    return tuple(t[:1] if isinstance(t, torch.Tensor) else t for t in inputs)


def check_fits(model: nn.Module, data: DataBundle, loss_fn: Any = None) -> None:
    """Run one batch through ``model`` (and ``loss_fn``) and raise a clear error if the data does not fit it."""
    from prunekit.core import call_model, evaluate, split_batch
    from prunekit.training import forward

    try:
        batch = next(iter(data.test))
    except StopIteration as e:
        raise FormatError(
            f"data {data.name!r} is empty; expected at least one (inputs, targets) batch"
        ) from e
    inputs, targets = split_batch(batch)
    shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
    try:
        with torch.no_grad():
            out = forward(model, inputs) if loss_fn is None else call_model(model, inputs)
            evaluate(model, [(inputs, targets)], loss_fn)
    except (RuntimeError, ValueError, IndexError, TypeError) as e:
        raise FormatError(
            f"data {data.name!r} does not fit the model: a batch with inputs {shape} failed "
            f"({' '.join(str(e).split())[:200]}); give data whose inputs and labels match the model"
        ) from e
    del out


__all__ = [
    "INPUTS_FILE",
    "MODEL_JSON",
    "WEIGHTS_FILE",
    "DataBundle",
    "LoadedModel",
    "check_fits",
    "first_inputs",
    "import_object",
    "load_data",
    "load_model",
    "save_model_dir",
]
