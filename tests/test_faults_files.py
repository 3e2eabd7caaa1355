"""Fault injection on every file kind prunekit writes: random bit flips and truncations.

Each case asserts a FormatError whose message names the file and the damaged part, a bit-identical
model (and optimizer / RNG state for checkpoints) and no stray file in the folder. The exhaustive
single-bit sweep over a checkpoint (the issue's 3,592 flips) is marked slow.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import prunekit as pk
from faults import assert_model_unchanged, flip_bit, header_span, listing, snapshot, truncate
from prunekit.recipes import load_model, save_model_dir
from prunekit.recipes.sources import LoadedModel
from prunekit.training import atomic_save_tensors, load_tensors

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("good")
    model = _net()
    pk.prune_weights(model, 0.6)
    out = {"model": pk.save(model, root / "model.safetensors")}
    dense = _net()
    out["dense"] = pk.save(dense, root / "dense.safetensors")
    m, opt, gen = _trained()
    pk.save_checkpoint(
        root / "ckpt.safetensors", model=m, optimizer=opt, generators=[gen], position={"step": 3}
    )
    out["ckpt"] = root / "ckpt.safetensors"
    atomic_save_tensors(
        root / "rewind.safetensors", {"w": torch.randn(5, 3), "b": torch.arange(4)}, {"step": 2}
    )
    out["tensors"] = root / "rewind.safetensors"
    factory = root / "factory.py"
    factory.write_text(
        "import torch\n\ndef build():\n    torch.manual_seed(0)\n    return torch.nn.Linear(4, 2)\n"
    )
    loaded = LoadedModel(model=nn.Linear(4, 2), example_inputs=torch.zeros(1, 4),
                         source={"kind": "factory", "spec": f"{factory}:build"})  # fmt: skip
    out["rundir"] = save_model_dir(loaded, root / "run")
    return out


def _trained() -> tuple[nn.Module, torch.optim.Optimizer, torch.Generator]:
    m = _net()
    pk.prune_weights(m, 0.5)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    m(torch.randn(3, 8)).sum().backward()
    opt.step()
    return m, opt, torch.Generator().manual_seed(5)


def _fresh_masked() -> nn.Module:
    m = _net()
    pk.prune_weights(m, 0.3)  # a model that already carries masks keeps them on failure
    return m


def _expect_load_fails(path: Path, what: str = "") -> None:
    model = _fresh_masked()
    before, files_before = snapshot(model), listing(path.parent)
    with pytest.raises(pk.FormatError) as e:
        pk.load(path, model)
    assert str(path) in str(e.value) and ";" in str(e.value)
    assert what in str(e.value)
    assert_model_unchanged(before, model)
    assert listing(path.parent) == files_before


def _rng_state() -> tuple[torch.Tensor, object, object]:
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


def _expect_checkpoint_fails(path: Path) -> None:
    model, opt, gen = _trained()
    model(torch.randn(2, 8)).sum().backward()
    opt.step()  # state differs from the file's, so a silent load would show
    before, opt_before = snapshot(model), json.dumps(_opt_summary(opt))
    rng_before, gen_before, files_before = _rng_state(), gen.get_state(), listing(path.parent)
    with pytest.raises(pk.FormatError) as e:
        pk.load_checkpoint(path, model=model, optimizer=opt, generators=[gen])
    assert str(path) in str(e.value)
    assert_model_unchanged(before, model)
    assert json.dumps(_opt_summary(opt)) == opt_before
    now = _rng_state()
    assert (
        torch.equal(now[0], rng_before[0])
        and np.array_equal(now[1], rng_before[1])
        and now[2] == rng_before[2]
    )
    assert torch.equal(gen.get_state(), gen_before)
    assert listing(path.parent) == files_before


def _opt_summary(opt: torch.optim.Optimizer) -> object:
    sd = opt.state_dict()
    return {
        "groups": sd["param_groups"],
        "state": {str(k): {n: v.tolist() if isinstance(v, torch.Tensor) else v for n, v in s.items()}
                  for k, s in sd["state"].items()},
    }  # fmt: skip


# --- pk.save model files -----------------------------------------------------------------------


@FAST
@given(data=st.data())
def test_model_file_bit_flip_anywhere_is_refused(
    files: dict[str, Path], tmp_path: Path, data: st.DataObject
) -> None:
    for kind in ("model", "dense"):
        src = files[kind]
        bit = data.draw(st.integers(0, src.stat().st_size * 8 - 1), label=f"{kind} bit")
        bad = tmp_path / f"{kind}-{bit}.safetensors"
        flip_bit(src, bad, bit)
        _expect_load_fails(bad)
        bad.unlink()


@FAST
@given(data=st.data())
def test_model_file_header_bit_flip_is_refused(
    files: dict[str, Path], tmp_path: Path, data: st.DataObject
) -> None:
    src = files["model"]
    bit = data.draw(st.integers(0, header_span(src) * 8 - 1))
    bad = tmp_path / "h.safetensors"
    flip_bit(src, bad, bit)
    _expect_load_fails(bad)
    bad.unlink()


@FAST
@given(data=st.data())
def test_model_file_truncation_is_refused(
    files: dict[str, Path], tmp_path: Path, data: st.DataObject
) -> None:
    src = files["model"]
    size = data.draw(st.integers(0, src.stat().st_size - 1))
    bad = tmp_path / "t.safetensors"
    truncate(src, bad, size)
    _expect_load_fails(bad)
    bad.unlink()


def _raw_safetensors(path: Path, table: dict[str, object], payload: bytes = b"") -> Path:
    header = json.dumps(table).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + payload)
    return path


def test_huge_claimed_tensor_fails_fast_without_allocating(tmp_path: Path) -> None:
    meta = {"prunekit": json.dumps({"format": "prunekit.model", "version": 1, "aliases": {},
                                    "tensors": {"0.weight": {"enc": "dense", "shape": [10**6, 10**6],
                                                             "dtype": "float32", "crc32": 0}}})}  # fmt: skip
    path = _raw_safetensors(tmp_path / "huge.safetensors", {
        "__metadata__": meta, "0.weight": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}})  # fmt: skip
    assert path.stat().st_size < 1000
    _expect_load_fails(path, "0.weight")


def test_oversized_shape_for_the_model_fails_before_reading(tmp_path: Path) -> None:
    n = 16384 * 16384 * 4  # a file that really holds 1 GiB would take long to write: claim it, pad nothing
    meta = {"prunekit": json.dumps({"format": "prunekit.model", "version": 1, "aliases": {},
                                    "tensors": {"weight": {"enc": "dense", "shape": [16384, 16384],
                                                           "dtype": "float32", "crc32": 0}}})}  # fmt: skip
    path = _raw_safetensors(tmp_path / "big.safetensors", {
        "__metadata__": meta, "weight": {"dtype": "F32", "shape": [16384, 16384], "data_offsets": [0, n]}})  # fmt: skip
    model = nn.Linear(8, 4)
    before = snapshot(model)
    with pytest.raises(pk.FormatError, match="weight"):
        pk.load(path, model)
    assert_model_unchanged(before, model)


def test_sealed_file_shape_mismatch_names_the_tensor(files: dict[str, Path]) -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 5))
    before = snapshot(model)
    with pytest.raises(pk.FormatError, match=r"2\.weight"):
        pk.load(files["dense"], model)
    assert_model_unchanged(before, model)


def test_previous_format_still_loads_with_a_warning(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = _net()
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    from prunekit.io.format import _crc  # noqa: PLC2701 - the test writes a format-1 file by hand

    header = {"format": "prunekit.model", "version": 1, "aliases": {}, "plan": None, "tensors": {
        k: {"enc": "dense", "shape": list(v.shape), "dtype": "float32", "crc32": _crc(v)} for k, v in tensors.items()}}  # fmt: skip
    save_file(tensors, str(tmp_path / "v1.safetensors"), metadata={"prunekit": json.dumps(header)})
    fresh = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with pytest.warns(UserWarning, match="older prunekit"):
        pk.load(tmp_path / "v1.safetensors", fresh)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), tensors.values(), strict=True))


# --- checkpoints -------------------------------------------------------------------------------


@FAST
@given(data=st.data())
def test_checkpoint_bit_flip_is_refused_and_nothing_changes(files: dict[str, Path], tmp_path: Path,
                                                            data: st.DataObject) -> None:  # fmt: skip
    src = files["ckpt"]
    bit = data.draw(st.integers(0, src.stat().st_size * 8 - 1))
    bad = tmp_path / "c.safetensors"
    flip_bit(src, bad, bit)
    _expect_checkpoint_fails(bad)
    bad.unlink()


@FAST
@given(data=st.data())
def test_checkpoint_truncation_is_refused(
    files: dict[str, Path], tmp_path: Path, data: st.DataObject
) -> None:
    src = files["ckpt"]
    bad = tmp_path / "c.safetensors"
    truncate(src, bad, data.draw(st.integers(0, src.stat().st_size - 1)))
    _expect_checkpoint_fails(bad)
    bad.unlink()


@pytest.mark.slow
def test_every_single_bit_flip_in_checkpoint_tensors_is_refused(
    files: dict[str, Path], tmp_path: Path
) -> None:
    src = files["ckpt"]
    start = header_span(src)
    model, opt, gen = _trained()
    refused = 0
    for bit in range(start * 8, src.stat().st_size * 8):
        bad = tmp_path / "c.safetensors"
        flip_bit(src, bad, bit)
        with pytest.raises(pk.FormatError):
            pk.load_checkpoint(bad, model=model, optimizer=opt, generators=[gen])
        refused += 1
    assert refused == (src.stat().st_size - start) * 8


def test_checkpoint_into_other_shape_optimizer_or_generators_changes_nothing(files: dict[str, Path]) -> None:
    cases = {
        "shape": lambda: (nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 5)), "sgd", 1),
        "optimizer": lambda: (_net(), "adam", 1),
        "generators": lambda: (_net(), "sgd", 2),
    }
    for name, make in cases.items():
        model, kind, n_gen = make()
        pk.prune_weights(model, 0.2)
        opt = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if kind == "sgd"
               else torch.optim.Adam(model.parameters()))  # fmt: skip
        gens = [torch.Generator().manual_seed(i) for i in range(n_gen)]
        before, opt_before, rng_before = snapshot(model), json.dumps(_opt_summary(opt)), torch.get_rng_state()
        with pytest.raises(pk.FormatError) as e:
            pk.load_checkpoint(files["ckpt"], model=model, optimizer=opt, generators=gens)
        assert {"shape": "2.", "optimizer": "SGD", "generators": "generator"}[name] in str(e.value), name
        assert_model_unchanged(before, model)
        assert json.dumps(_opt_summary(opt)) == opt_before and torch.equal(torch.get_rng_state(), rng_before)


# --- lottery tensors (atomic_save_tensors) -----------------------------------------------------


@FAST
@given(data=st.data())
def test_tensor_file_damage_is_refused(files: dict[str, Path], tmp_path: Path, data: st.DataObject) -> None:
    src = files["tensors"]
    bad = tmp_path / "r.safetensors"
    if data.draw(st.booleans(), label="truncate"):
        truncate(src, bad, data.draw(st.integers(0, src.stat().st_size - 1)))
    else:
        flip_bit(src, bad, data.draw(st.integers(0, src.stat().st_size * 8 - 1)))
    with pytest.raises(pk.FormatError, match="r.safetensors"):
        load_tensors(bad)
    bad.unlink()


# --- run directories (prunekit-model.json, inputs) ---------------------------------------------


@FAST
@given(data=st.data())
def test_run_dir_json_damage_is_refused(files: dict[str, Path], tmp_path: Path, data: st.DataObject) -> None:
    run = tmp_path / "run"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(files["rundir"], run)
    target = data.draw(st.sampled_from(["prunekit-model.json", "example_inputs.safetensors"]))
    src = files["rundir"] / target
    if data.draw(st.booleans(), label="truncate"):
        truncate(src, run / target, data.draw(st.integers(0, src.stat().st_size - 1)))
    else:
        flip_bit(src, run / target, data.draw(st.integers(0, src.stat().st_size * 8 - 1)))
    before = listing(run)
    with pytest.raises(pk.FormatError, match=target.split(".")[0]):
        load_model(str(run), trust_code=True)
    assert listing(run) == before


def test_model_dir_naming_code_is_refused_and_the_code_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    evil = tmp_path / "evil.py"
    evil.write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('x')\n"
                    "import torch\n\ndef build():\n    return torch.nn.Linear(2, 2)\n")  # fmt: skip
    loaded = LoadedModel(
        model=nn.Linear(2, 2), example_inputs=None, source={"kind": "factory", "spec": f"{evil}:build"}
    )
    run = save_model_dir(loaded, tmp_path / "downloaded")
    with pytest.raises(pk.ConfigError, match="trust_code=True.*--trust-code"):
        load_model(str(run))
    assert not marker.exists()
    from prunekit.cli.main import main

    assert main(["summary", str(run), "--json"]) != 0
    assert not marker.exists()
    load_model(str(run), trust_code=True)  # explicit opt-in: the user's decision
    assert marker.exists()


def test_hf_directory_with_only_pickle_weights_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(pk.FormatError, match="pickle weights are not loaded.*convert to safetensors"):
        load_model(str(tmp_path))


def test_a_recipe_naming_a_data_factory_does_not_run_it_without_opt_in(tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    (tmp_path / "evil_data.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\ndef data():\n    return []\n"
    )
    recipe = pk.Recipe.from_string(
        f"data: {{source: '{tmp_path / 'evil_data.py'}:data'}}\nprune:\n  - {{what: weights, sparsity: 0.5}}\n"
    )
    model = nn.Sequential(nn.Linear(4, 4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pk.ConfigError, match="trust_code"):
        recipe.run(model, torch.randn(1, 4))
    assert not marker.exists()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
