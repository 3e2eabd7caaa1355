"""save/load: exact round trips, compression near the information limit, and clear errors on bad files."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import prunekit as pk
from prunekit.core.masks import get_mask, masked_parameters
from prunekit.io.format import information_limit_bits, rice_decode, rice_encode, tensor_information_bits

# tiny random models under global thresholds: emptying a layer is expected here and not what these tests check
pytestmark = pytest.mark.filterwarnings("ignore::prunekit.errors.LayerPrunedAwayWarning")


class Net(nn.Module):
    """Linear, conv, batch norm (int buffer), tied embedding/output weights."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.conv = nn.Conv1d(8, width, 3, padding=1)
        self.bn = nn.BatchNorm1d(width)
        self.fc = nn.Linear(width, 8)
        self.out = nn.Linear(8, 20, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.conv(self.emb(tokens).transpose(1, 2))).relu().mean(-1)
        return self.out(self.fc(h))


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(
        {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}[t.element_size()]
    )


def _assert_same(a: nn.Module, b: nn.Module, exact_zeros: bool = True) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
        if exact_zeros or not torch.is_floating_point(sa[k]):
            assert torch.equal(_bits(sa[k]), _bits(sb[k])), k
        else:  # pruned entries may be -0.0 in the original: everything else bit-identical
            nz = sa[k] != 0
            assert torch.equal(_bits(sa[k])[nz], _bits(sb[k])[nz]), k
    assert [mp.fqn for mp in masked_parameters(a)] == [mp.fqn for mp in masked_parameters(b)]


def _pruned_net() -> Net:
    net = Net()
    net.bn.running_mean.normal_()
    net.bn.num_batches_tracked += 7
    pk.prune_weights(net, 0.8, include=["conv", "fc", "emb"])
    return net


def test_round_trip_is_exact_with_masks_buffers_and_tied_weights(tmp_path: Path) -> None:
    net = _pruned_net()
    path = pk.save(net, tmp_path / "net.safetensors")
    fresh = pk.load(path, Net())
    _assert_same(net, fresh, exact_zeros=False)
    assert fresh.out.weight is fresh.emb.weight
    tokens = torch.randint(0, 20, (2, 5))
    net.eval(), fresh.eval()
    assert torch.equal(net(tokens), fresh(tokens))
    # masks are in force again: training keeps pruned weights at zero
    mask = get_mask(fresh.conv, "weight").clone()
    opt = torch.optim.Adam(fresh.parameters(), lr=0.1)
    fresh.train()
    for _ in range(3):
        opt.zero_grad()
        fresh(tokens).sum().backward()
        opt.step()
    assert torch.count_nonzero(fresh.conv.weight[~mask]) == 0


def test_header_is_json_and_tied_weights_are_stored_once(tmp_path: Path) -> None:
    path = pk.save(_pruned_net(), tmp_path / "net.safetensors")
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["prunekit"])
        keys = set(f.keys())
    assert header["format"] == "prunekit.model" and header["version"] == 2 and header["plan"] is None
    assert header["aliases"] == {"out.weight": "emb.weight"}
    assert (
        header["tensors"]["conv.weight"]["enc"] == "rice"
        and header["tensors"]["conv.weight"]["mask"] == "conv.weight"
    )
    assert header["tensors"]["bn.num_batches_tracked"]["enc"] == "dense"
    assert not any(k.startswith("out.weight") for k in keys)
    assert not any(k.endswith("_mask") for k in keys)  # masks are implied by the coded positions
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])  # a plain safetensors file: no pickle anywhere
    assert path.read_bytes()[8:9] == b"{" and n < path.stat().st_size


def test_mask_on_the_second_name_of_a_tied_weight_round_trips(tmp_path: Path) -> None:
    net = Net()
    result = pk.prune_weights(net, 0.6, include=["out"])  # the mask sits on `out`, the weight is `emb`'s
    assert [row.name for row in result.layers] == ["out"]
    fresh = pk.load(pk.save(net, tmp_path / "tied.safetensors"), Net())
    _assert_same(net, fresh, exact_zeros=False)
    assert get_mask(fresh.out, "weight") is not None and get_mask(fresh.emb, "weight") is None


def test_unmasked_sparse_tensors_are_compressed_and_round_trip(tmp_path: Path) -> None:
    layer = nn.Linear(300, 20)
    with torch.no_grad():
        layer.weight.mul_(torch.rand_like(layer.weight) < 0.05)  # sparse, no mask; many -0.0
    fresh = pk.load(pk.save(layer, tmp_path / "l.safetensors"), nn.Linear(300, 20))
    _assert_same(layer, fresh, exact_zeros=False)  # non-zeros bit for bit; zeros come back as +0.0
    assert get_mask(fresh, "weight") is None
    assert (tmp_path / "l.safetensors").stat().st_size < 0.2 * 300 * 20 * 4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_round_trip(tmp_path: Path, dtype: torch.dtype) -> None:
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 4)).to(dtype)
    pk.prune_weights(model, 0.7)
    fresh = pk.load(
        pk.save(model, tmp_path / "m.safetensors"),
        nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 4)).to(dtype),
    )
    _assert_same(model, fresh, exact_zeros=False)


def test_file_size_is_close_to_the_information_limit(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256))
    pk.prune_weights(model, 0.9)
    path = pk.save(model, tmp_path / "m.safetensors")
    limit = information_limit_bits(model) / 8
    assert path.stat().st_size <= 1.05 * limit
    dense = sum(p.numel() * 4 for p in model.parameters())
    assert path.stat().st_size < 0.16 * dense


def test_information_limit_formula() -> None:
    t = torch.zeros(1000)
    t[[1, 5, 900]] = 1.0
    expected = 3 * 32 + math.log2(math.comb(1000, 3))
    assert tensor_information_bits(t) == pytest.approx(expected)
    assert tensor_information_bits(torch.ones(10, dtype=torch.float16)) == 160
    assert tensor_information_bits(torch.zeros(3, dtype=torch.int64)) == 192


@given(
    n=st.integers(1, 5000),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_rice_code_round_trips_any_position_set(n: int, density: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    positions = np.flatnonzero(rng.random(n) < density)
    k, qbits, q, r = rice_encode(positions)
    assert rice_decode(k, qbits, q, r, positions.size).tolist() == positions.tolist()
    assert q.dtype == np.uint8 and r.dtype == np.uint8
    if positions.size > 50 and 0.02 < density < 0.5:  # close to the entropy of the positions
        entropy = math.log2(math.comb(n, positions.size))
        assert (q.size + r.size) * 8 <= 1.15 * entropy + 16


@given(
    widths=st.lists(st.integers(1, 40), min_size=2, max_size=4),
    sparsity=st.floats(0.0, 0.99),
    pattern=st.sampled_from([None, None, "1:2"]),
)
def test_random_models_round_trip(tmp_path_factory, widths, sparsity, pattern) -> None:
    widths = [w * 2 for w in widths]

    def build() -> nn.Sequential:
        return nn.Sequential(*[nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)])

    model = build()
    pk.prune_weights(model, sparsity if pattern is None else None, pattern=pattern)
    path = pk.save(model, tmp_path_factory.mktemp("rt") / "m.safetensors")
    _assert_same(model, pk.load(path, build()), exact_zeros=False)


def test_load_replaces_masks_of_an_already_masked_model(tmp_path: Path) -> None:
    src = nn.Sequential(nn.Linear(16, 16))
    pk.prune_weights(src, 0.5)
    dst = nn.Sequential(nn.Linear(16, 16))
    pk.prune_weights(dst, 0.9, criterion="random")
    pk.load(pk.save(src, tmp_path / "m.safetensors"), dst)
    assert torch.equal(get_mask(dst[0], "weight"), get_mask(src[0], "weight"))
    assert torch.equal(dst[0].weight, src[0].weight)


def test_structured_plan_is_saved_and_reapplied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []

    def apply_plan(model: nn.Module, plan: object) -> None:  # stand-in for prunekit.structured.surgery
        calls.append(plan)
        model[0] = nn.Linear(8, 3)

    import prunekit.structured

    monkeypatch.setattr(prunekit.structured, "apply_plan", apply_plan)
    model = nn.Sequential(nn.Linear(8, 3))
    model._prunekit_plan = [{"fqn": "0", "dim": 0, "kept": [0, 2, 5]}]
    path = pk.save(model, tmp_path / "m.safetensors")
    fresh = nn.Sequential(nn.Linear(8, 6))
    out = pk.load(path, fresh)
    assert out is fresh and out[0].out_features == 3
    assert torch.equal(out[0].weight, model[0].weight)
    assert calls == [model._prunekit_plan] * 2  # once on a trial copy, once for real


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good = pk.save(_pruned_net(), tmp_path / "good.safetensors")
    data = good.read_bytes()
    files = {}

    def write(name: str, content: bytes) -> None:
        files[name] = tmp_path / name
        files[name].write_bytes(content)

    write("truncated", data[: len(data) - 100])
    write("empty", b"")
    write("garbage", b"\x00" * 64)
    flipped = bytearray(data)
    flipped[-5] ^= 0x55
    write("flipped_bit", bytes(flipped))
    files["missing"] = tmp_path / "nope.safetensors"
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    files["foreign"] = tmp_path / "foreign.safetensors"
    for name, meta in {
        "wrong_format": {"format": "other", "version": 1},
        "wrong_version": {"format": "prunekit.model", "version": 99},
        "bad_json": "{not json",
    }.items():
        save_file(
            {"w": torch.zeros(2)},
            str(tmp_path / name),
            metadata={"prunekit": meta if isinstance(meta, str) else json.dumps(meta)},
        )
        files[name] = tmp_path / name
    other = Net(width=16)
    files["shape_mismatch"] = pk.save(other, tmp_path / "narrow.safetensors")
    files["missing_keys"] = pk.save(nn.Sequential(nn.Linear(2, 2)), tmp_path / "small.safetensors")
    return files


BAD_NAMES = [
    "truncated",
    "empty",
    "garbage",
    "flipped_bit",
    "missing",
    "foreign",
    "wrong_format",
    "wrong_version",
    "bad_json",
    "shape_mismatch",
    "missing_keys",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_files_raise_format_error_and_leave_model_untouched(tmp_path: Path, name: str) -> None:
    path = _bad_files(tmp_path)[name]
    model = Net()
    pk.prune_weights(model, 0.3)  # even a masked model keeps its masks when loading fails
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pk.FormatError) as e:
        pk.load(path, model)
    assert str(path) in str(e.value) and ";" in str(e.value)  # what was wrong; how to fix it
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())


def test_shape_mismatch_names_the_tensor_and_both_shapes(tmp_path: Path) -> None:
    path = pk.save(Net(width=16), tmp_path / "n.safetensors")
    with pytest.raises(pk.FormatError, match=r"'conv.weight' is \(16, 8, 3\).*\(32, 8, 3\)"):
        pk.load(path, Net())


def test_gpt2_wanda_nm_prune_save_load_gives_identical_logits(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, 64, (3, 8))
    result = pk.prune_weights(
        model, 0.6, criterion="wanda", data=[({"input_ids": ids}, None)], pattern="2:4", scope="global"
    )
    kinds = {row.kind for row in result.layers}
    assert kinds == {"Conv1D", "Linear"} and result.sparsity == pytest.approx(0.6, abs=1e-4)
    c_fc = model.transformer.h[0].mlp.c_fc.weight  # (in, out): 2:4 along dim 0
    assert bool((c_fc.reshape(8, 4, -1).ne(0).sum(1) <= 2).all())
    path = pk.save(model, tmp_path / "gpt2.safetensors")
    fresh = pk.load(path, transformers.GPT2LMHeadModel(cfg).eval())
    assert fresh.lm_head.weight is fresh.transformer.wte.weight
    assert torch.equal(fresh(ids).logits, model(ids).logits)
