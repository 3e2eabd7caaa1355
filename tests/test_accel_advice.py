"""Speed advice from a GIVEN kernel table: warnings, crossovers and estimates (no timing asserts)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.accel import KernelTable, SpeedupWarning, advise, speedup_estimate, warn_if_no_speedup
from prunekit.kernels import cached_table, save_table, table_path

# A CPU-like table: CSR loses badly at 50%, breaks even near 88% at 1 token and 85% at 128 tokens.
CPU = KernelTable(
    fingerprint="given",
    shape=(1024, 1024),
    tokens=(1, 128),
    sparsities=(0.5, 0.8, 0.9, 0.95),
    dense_ms=(0.1, 2.0),
    csr_ms=((0.45, 10.0), (0.16, 2.6), (0.07, 1.0), (0.035, 0.6)),
    hardware={"threads": 1},
)
BIG = (4096, 4096)


class Row:  # the fields warn_if_no_speedup reads from a WeightPruningResult row
    def __init__(self, name: str, kind: str, shape: tuple[int, int], sparsity: float) -> None:
        self.name, self.kind, self.shape, self.sparsity = name, kind, shape, sparsity


class Result:
    def __init__(self, rows: list[Row], pattern: str | None = None) -> None:
        self.layers, self.pattern = rows, pattern


def test_ratio_and_crossover_by_hand() -> None:
    assert CPU.ratio(tokens=1, sparsity=0.5) == pytest.approx(4.5)
    assert CPU.ratio(tokens=1, sparsity=0.85) == pytest.approx((1.6 + 0.7) / 2)
    # 1 < 1.6 at 0.8, 0.7 at 0.9: crossing at 0.8 + (1.6 - 1) / (1.6 - 0.7) * 0.1
    assert CPU.crossover(tokens=1) == pytest.approx(0.8 + 0.6 / 0.9 * 0.1)
    assert CPU.crossover(tokens=128, margin=100.0) is None
    # dense time is interpolated log-log between 1 token (0.1 ms) and 128 tokens (2.0 ms)
    w = math.log(11) / math.log(128)
    assert CPU.dense_ms_for(1024, 1024, 11) == pytest.approx(0.1 * 20**w)
    assert CPU.dense_ms_for(1024, 1024, 256) == pytest.approx(4.0)  # linear in tokens beyond the table
    assert CPU.dense_ms_for(2048, 1024, 1) == pytest.approx(0.2)


def test_warning_fires_for_2_4_on_cpu_and_names_the_fix() -> None:
    with pytest.warns(SpeedupWarning, match="prune_channels") as rec:
        advice = warn_if_no_speedup(Result([Row("fc", "Linear", BIG, 0.5)], pattern="2:4"), table=CPU)
    assert advice is not None and not advice.can_speed_up
    msg = str(rec[0].message)
    assert "2:4" in msg and f"{advice.crossover:.0%}" in msg
    assert advice.crossover == pytest.approx(min(CPU.crossover(tokens=t, margin=1.1) for t in CPU.tokens))


def test_warning_fires_for_50_percent_unstructured() -> None:
    with pytest.warns(SpeedupWarning, match="50% unstructured"):
        warn_if_no_speedup(Result([Row("fc", "Linear", BIG, 0.5)]), table=CPU)


def test_no_warning_for_95_percent_on_a_big_layer() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        advice = warn_if_no_speedup(Result([Row("fc", "Linear", BIG, 0.95)]), table=CPU)
    assert advice is not None and advice.can_speed_up and advice.best_speedup > 2.5


def test_small_layers_are_not_counted() -> None:
    assert advise([("fc", "Linear", (64, 64), 0.5)], table=CPU) is None
    assert advise([("conv", "Conv2d", (64, 64, 3, 3), 0.5)], table=CPU) is None


def test_without_table_only_the_byte_rule_warns() -> None:
    low = advise([("fc", "Linear", BIG, 0.5)], table=None, pattern="2:4")
    high = advise([("fc", "Linear", BIG, 0.9)], table=None)
    assert low is not None and not low.can_speed_up and "4-byte index" in low.message
    assert high is not None and high.can_speed_up


def test_env_switch_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNEKIT_SPEEDUP_WARNING", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_no_speedup(Result([Row("fc", "Linear", BIG, 0.5)]), table=CPU) is None


def test_prune_weights_warns_with_the_cached_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNEKIT_CACHE_DIR", str(tmp_path))
    from prunekit.kernels import fingerprint

    save_table(KernelTable(**{**vars(CPU), "fingerprint": fingerprint()}))
    assert cached_table() is not None and table_path().parent == tmp_path
    model = nn.Sequential(nn.Linear(1024, 1024, bias=False))  # exactly 2**20 weights: counted
    with pytest.warns(SpeedupWarning, match="2:4"):
        pk.prune_weights(model, pattern="2:4")
    model = nn.Sequential(nn.Linear(1024, 1024, bias=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pk.prune_weights(model, 0.95)


def test_table_round_trip_and_foreign_fingerprint(tmp_path: Path) -> None:
    path = save_table(CPU, tmp_path / "t.json")
    assert KernelTable.from_dict(json.loads(path.read_text())) == CPU
    assert cached_table(path) == CPU  # an explicit path is trusted
    with pytest.raises(pk.FormatError, match="version"):
        KernelTable.from_dict({**CPU.to_dict(), "version": 7})
    with pytest.raises(pk.ConfigError, match="increasing"):
        KernelTable(**{**vars(CPU), "tokens": (128, 1)})


def test_speedup_estimate_from_the_table_without_timing() -> None:
    model = nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1024))
    x = torch.randn(1, 1024)
    est = speedup_estimate(model, x, 0.95, table=CPU, measure=False)
    assert [layer.kernel for layer in est.layers] == ["csr", "csr"]
    # hand-computed: dense 0.1 ms per layer, ratio at 95% and 1 token = 0.35
    assert est.dense_ms == pytest.approx(0.2)
    assert est.predicted_ms == pytest.approx(0.2 * 0.35, rel=0.01)
    slow = speedup_estimate(model, x, "2:4", table=CPU, measure=False)
    assert [layer.kernel for layer in slow.layers] == ["dense", "dense"] and slow.speedup == pytest.approx(
        1.0
    )
    assert all(isinstance(m, nn.Linear) and not hasattr(m, "weight_mask") for m in model if m._parameters)


def test_speedup_estimate_for_channels_scales_by_kept_weights() -> None:
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256))
    x = torch.randn(4, 256)
    est = speedup_estimate(model, x, pk.ChannelPruneConfig(ratio=0.5), table=CPU, measure=False)
    assert [layer.shape for layer in est.layers] == [(256, 256), (256, 256)]
    assert est.predicted_ms == pytest.approx(est.dense_ms / 2)


def test_the_estimate_names_the_tables_fastest_kernel() -> None:
    split = KernelTable(**{**vars(CPU), "kernels": (("csr", "csr"),) * 3 + (("csr/2", "csr/4"),)})
    assert (
        split.kernel(tokens=1, sparsity=0.96) == "csr/2"
        and split.kernel(tokens=100, sparsity=0.95) == "csr/4"
    )
    assert split.kernel(tokens=1, sparsity=0.85) == "csr" and CPU.kernel(tokens=1, sparsity=0.95) == "csr"
    assert KernelTable.from_dict(split.to_dict()) == split
    model = nn.Sequential(nn.Linear(1024, 1024))
    est = speedup_estimate(model, torch.randn(1, 1024), 0.95, table=split, measure=False)
    assert [layer.kernel for layer in est.layers] == ["csr/2"]
    with pytest.raises(pk.ConfigError, match="one name per"):
        KernelTable(**{**vars(CPU), "kernels": (("csr",),)})


def test_a_measured_table_keeps_the_fastest_csr_kernel_per_cell() -> None:
    from prunekit.kernels import jit, measure_table

    t = measure_table(shape=(64, 512), tokens=(1, 4), sparsities=(0.5, 0.9), threads=1, rounds=3)
    assert t.fingerprint and t.shape == (64, 512) and len(t.csr_ms) == 2
    assert all(len(row) == 2 and all(v > 0 for v in row) for row in (t.dense_ms, *t.csr_ms))
    # 512 inputs allow csr/2 (>= 2 x 256 columns) but not csr/4; csr-numba where numba is installed
    allowed = {"csr", "csr/2"} | ({"csr-numba"} if jit.available() else set())
    assert {k for row in t.kernels for k in row} <= allowed
    assert KernelTable.from_dict(json.loads(json.dumps(t.to_dict()))) == t


@pytest.fixture
def timed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """The names of the functions each ``interleaved_ms`` call of the estimate times, in call order."""
    import prunekit.accel.estimate as estimate

    calls: list[tuple[str, ...]] = []
    real = estimate.interleaved_ms

    def spy(fns, **kw):  # type: ignore[no-untyped-def]
        calls.append(tuple(fns))
        return real(fns, **kw)

    monkeypatch.setattr(estimate, "interleaved_ms", spy)
    return calls


class Branches(nn.Module):
    """a and b read x, up reads it too and feeds down through a ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.up, self.down = (nn.Linear(512, 512), nn.Linear(512, 512), nn.Linear(512, 1024),
                                              nn.Linear(1024, 512))  # fmt: skip
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(x) + self.down(self.act(self.up(x)))


@pytest.mark.parametrize("ratio", [0.5, 2.0])
def test_measured_estimate_times_each_layer_in_the_layout_accelerate_gives_it(
    monkeypatch: pytest.MonkeyPatch, ratio: float
) -> None:
    """measure=True: one measurement per (shape, tokens, sparsity, layout), on that layer's real mask; the
    layout of a layer follows what the layers before it were measured to do (a given kernel ratio: no timing)."""
    import prunekit.accel.estimate as estimate
    from prunekit.kernels.kernels import INNER_KERNELS

    calls: list[tuple[str, ...]] = []

    def fastest(fns, rounds):  # type: ignore[no-untyped-def]
        calls.append(tuple(fns))
        return ratio, "csr"

    monkeypatch.setattr(estimate, "_fastest", fastest)
    est = speedup_estimate(Branches(), torch.randn(4, 512), 0.9, table=CPU, rounds=2)
    assert all(c[0] == "dense" and "csr" in c for c in calls)
    if ratio < 1:  # every layer goes sparse
        # a copies x.T, b and up share it (another layout than a's), up returns a transposed view (a ReLU
        # away from down), down reads it: three layouts of 512 -> 512 and 512 -> 1024, one of down
        assert len(calls) == 4
        assert {layer.name: layer.kernel for layer in est.layers} == dict.fromkeys(
            ("a", "b", "up", "down"), "csr"
        )
    else:  # nothing goes sparse: no copy to share, no view to read; b is measured with a
        assert len(calls) == 3
        assert all(layer.kernel == "dense" for layer in est.layers)
    names = ("dense", *INNER_KERNELS, *("compact+" + k for k in INNER_KERNELS))
    assert all(layer.kernel in names for layer in est.layers) and est.predicted_ms > 0


def test_input_sources_give_each_layer_its_input_kind_given_the_layers_before_it() -> None:
    from prunekit.accel.choice import linear_mask
    from prunekit.accel.engine import input_kind, input_links, input_sources, view_links
    from prunekit.kernels import SparseLinear

    m = Branches()
    x = torch.randn(4, 512)
    with torch.no_grad():
        linears = {n: c for n, c in m.named_children() if isinstance(c, nn.Linear)}
        assert view_links(m, x, linears) == ({"up"}, {"down"})
        assert input_links(m, x, linears) == ({"up"}, {"down"}, {"b", "up"})
    pk.prune_weights(m, 0.9, scope="layer")
    sources = input_sources(m, x, list(linears.items()))
    assert sources["down"].feeders == {"up"} and sources["up"].readers == {"a", "b"}

    def swapped(kernels: dict[str, str]) -> dict[str, tuple[nn.Module, nn.Module]]:
        return {n: (linears[n], SparseLinear(linears[n].weight, linears[n].bias, linear_mask(linears[n]), kernel=k)) for n, k in kernels.items()}  # fmt: skip

    def kinds(kernels: dict[str, str], views: bool = True) -> dict[str, str]:
        return {n: input_kind(n, sources, swapped(kernels), views) for n in linears}

    every = dict.fromkeys(linears, "csr")
    assert kinds(every) == {"a": "fresh", "b": "shared", "up": "shared", "down": "view"}
    assert kinds(every, views=False)["down"] == "fresh"
    assert kinds({}) == dict.fromkeys(linears, "fresh")  # a dense layer makes no copy and returns no view
    assert kinds({"b": "csr"}) == {"a": "fresh", "b": "fresh", "up": "shared", "down": "fresh"}
    # a compact layer gathers its kept columns (no copy to share); a dense inner kernel returns no view
    assert kinds({"a": "compact+csr"})["b"] == "fresh"
    assert kinds({"up": "compact+dense"})["down"] == "fresh"


class SmallCNN(nn.Module):
    """Two same-shape 3x3 convs (one measurement), a 1x1 conv, a depthwise conv (accelerate keeps it
    dense) and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(32, 32, 3, padding=1)
        self.b = nn.Conv2d(32, 32, 3, padding=1)
        self.pw = nn.Conv2d(32, 128, 1)  # 4096 weights: just enough for accelerate to time it
        self.dw = nn.Conv2d(128, 128, 3, padding=1, groups=128)
        self.bn = nn.BatchNorm2d(128)
        self.fc = nn.Linear(128, 10)  # 1280 weights: accelerate leaves it dense untimed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.b(torch.relu(self.a(x))))
        y = torch.relu(self.bn(self.dw(self.pw(y))))
        return self.fc(y.mean((2, 3)))


def test_conv_layers_are_estimated_from_the_table_without_timing() -> None:
    model = SmallCNN().eval()
    x = torch.randn(1, 32, 16, 16)
    est = speedup_estimate(model, x, 0.95, table=CPU, measure=False)
    by = {layer.name: layer for layer in est.layers}
    assert set(by) == {"fc", "a", "b", "pw"}  # the depthwise conv has no sparse kernel: not estimated
    a = by["a"]
    # a conv is the (out, in * kh * kw) matrix it multiplies, on its output positions (16 x 16)
    assert (a.kind, a.shape, a.tokens, a.kernel) == ("conv2d", (32, 288), 256, "csr")
    assert a.sparsity == pytest.approx(0.95, abs=0.01)
    assert a.dense_ms == pytest.approx(CPU.dense_ms_for(32, 288, 256))
    assert a.predicted_ms == pytest.approx(a.dense_ms * CPU.ratio(tokens=256, sparsity=a.sparsity))
    # 10 x 128 weights: fewer than accelerate's min_weights, so it stays dense
    assert by["fc"].kernel == "dense" and by["fc"].predicted_ms == by["fc"].dense_ms
    slow = speedup_estimate(model, x, "2:4", table=CPU, measure=False)
    assert all(layer.kernel == "dense" for layer in slow.layers) and slow.speedup == pytest.approx(1.0)
    assert not any(hasattr(m, "weight_mask") for m in model.modules())  # the model is untouched


def test_measured_conv_estimate_times_accelerates_conv_kernels(timed: list[tuple[str, ...]]) -> None:
    calls = timed
    est = speedup_estimate(SmallCNN().eval(), torch.randn(1, 32, 16, 16), 0.9, table=CPU, rounds=2)
    model_calls = [c for c in calls if "__model__" in c]
    assert (
        len(model_calls) == 1 and {"a", "b", "pw", "fc"} <= set(model_calls[0]) and "dw" not in model_calls[0]
    )
    kernel_calls = [c for c in calls if "__model__" not in c]
    # a and b share one measurement; the 3x3 convs get "taps", the 1x1 conv does not (compact+ kernels
    # join where the random mask happens to zero whole channels); the small fc is not timed at all
    assert len(kernel_calls) == 2 and all(c[:2] == ("dense", "csr") for c in kernel_calls)
    assert sorted("taps" in c for c in kernel_calls) == [False, True]
    fc = {layer.name: layer for layer in est.layers}["fc"]
    assert fc.sparsity > 0.8 and fc.kernel == "dense" and fc.predicted_ms == fc.dense_ms
    assert {layer.kind for layer in est.layers} == {"linear", "conv2d"} and est.predicted_ms > 0
    assert est.other_ms >= 0 and est.dense_ms > 0


def test_channel_estimate_times_every_pruned_conv_on_its_new_shape(timed: list[tuple[str, ...]]) -> None:
    calls = timed
    model = SmallCNN().eval()
    x = torch.randn(1, 32, 16, 16)
    est = speedup_estimate(
        model, x, pk.ChannelPruneConfig(ratio=0.5, exclude=[model.fc]), table=CPU, rounds=2
    )
    assert len(calls) == 1  # dense model, dense layers and pruned layers in the same alternating rounds
    assert {f"{n}:after" for n in ("a", "b", "pw", "dw")} <= set(calls[0])
    by = {layer.name: layer for layer in est.layers}
    assert by["dw"].kind == "conv2d" and by["dw"].shape == (64, 9)  # depthwise convs shrink too
    assert by["a"].shape == (16, 288) and by["b"].shape == (16, 144)  # a reads the model's input
    assert est.predicted_ms > 0 and est.other_ms >= 0
    # without measuring: the dense time scaled by kept weights x output positions
    flat = speedup_estimate(model, x, pk.ChannelPruneConfig(ratio=0.5, exclude=[model.fc]), table=CPU,
                            measure=False)  # fmt: skip
    fl = {layer.name: layer for layer in flat.layers}
    assert fl["a"].predicted_ms == pytest.approx(fl["a"].dense_ms / 2)
    assert fl["b"].predicted_ms == pytest.approx(fl["b"].dense_ms / 4)


def test_the_warning_counts_large_convs() -> None:
    conv = Row("conv", "Conv2d", (512, 512, 3, 3), 0.5)  # 2.4M weights
    with pytest.warns(SpeedupWarning, match="Linear/Conv2d"):
        advice = warn_if_no_speedup(Result([conv], pattern="2:4"), table=CPU)
    assert advice is not None and advice.counted == ("conv",)
    assert advise([("conv", "Conv2d", (512, 512, 3, 3), 0.95)], table=CPU).can_speed_up  # type: ignore[union-attr]
    assert advise([("dw", "Conv2d", (512, 1, 3, 3), 0.5)], table=CPU) is None  # too small to count


def fake_times(monkeypatch: pytest.MonkeyPatch, model_ms: dict[str, float]) -> None:
    """``interleaved_ms`` of the estimate returns ``model_ms`` for the model call, and for a kernel call
    dense 1.0 and every candidate 0.25 (no timing)."""
    import prunekit.accel.estimate as estimate

    def fake(fns, **kw):  # type: ignore[no-untyped-def]
        if "__model__" in fns:
            return {k: model_ms[k] for k in fns}
        return {k: 1.0 if k == "dense" else 0.25 for k in fns}

    monkeypatch.setattr(estimate, "interleaved_ms", fake)


def two_layers() -> nn.Module:
    return nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 1024)).eval()


def test_time_outside_the_layers_is_measured_and_in_model_extra_follows_the_weight_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # model 10 ms; with stand-in layers 2 ms; the layers alone 2 + 4 ms: 2 ms more inside the model,
    # split 1:2 by weights; at 90% a sparse kernel keeps 2 x 10% of the bytes
    fake_times(monkeypatch, {"__model__": 10.0, "__stub__": 2.0, "0": 2.0, "2": 4.0})
    est = speedup_estimate(two_layers(), torch.randn(4, 512), 0.9, table=CPU, rounds=2)
    assert est.other_ms == pytest.approx(2.0) and est.dense_ms == pytest.approx(10.0)
    by = {layer.name: layer for layer in est.layers}
    assert by["0"].dense_ms == pytest.approx(2 + 2 / 3) and by["2"].dense_ms == pytest.approx(4 + 4 / 3)
    assert est.other_ms + sum(layer.dense_ms for layer in est.layers) == pytest.approx(est.dense_ms)
    assert by["0"].predicted_ms == pytest.approx(
        2 * 0.25 + 2 / 3 * 0.2, rel=1e-4
    )  # sparsity from a float32 mean
    assert by["2"].predicted_ms == pytest.approx(4 * 0.25 + 4 / 3 * 0.2, rel=1e-4)
    assert est.predicted_ms == pytest.approx(2.0 + 0.5 + 2 / 15 + 1.0 + 4 / 15, rel=1e-4)


def test_without_stand_ins_the_rest_of_the_model_time_is_other(monkeypatch: pytest.MonkeyPatch) -> None:
    class Needs(nn.Module):  # control flow on a layer's output: zeros from a stand-in break it
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(512, 512)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.fc(x)
            if not bool(y.abs().sum() > 0):
                raise ValueError("all zero")
            return y

    fake_times(monkeypatch, {"__model__": 10.0, "fc": 4.0})
    model = Needs().eval()
    est = speedup_estimate(model, torch.randn(4, 512), 0.9, table=CPU, rounds=2)
    assert est.other_ms == pytest.approx(6.0)
    assert est.layers[0].dense_ms == pytest.approx(4.0) and est.layers[0].predicted_ms == pytest.approx(1.0)
    assert "forward" not in model.fc.__dict__


def test_stand_in_run_skips_the_layers_and_leaves_the_model_as_it_was() -> None:
    from prunekit.accel.estimate import _shapes, _stubbed_model

    model = two_layers()
    x = torch.randn(3, 512)
    want = model(x).detach()
    ran: list[str] = []
    for n, m in model.named_children():
        m.register_forward_pre_hook(lambda mod, args, n=n: ran.append(n))
    shapes = _shapes(model, x)
    ran.clear()
    calls = {"n": 0}
    real = nn.Linear.forward

    def counting(self, inp):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        return real(self, inp)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nn.Linear, "forward", counting)
        run = _stubbed_model(model, ["0", "2"], shapes, (x,), {})
        assert run is not None
        out = run()
        assert calls["n"] == 0  # neither Linear computed
    assert out.shape == want.shape and not bool(out.any())
    assert ran and set(ran) >= {"0", "1", "2"}  # hooks still run; the ReLU computed
    assert all("forward" not in m.__dict__ for m in model.modules())
    torch.testing.assert_close(model(x), want)
