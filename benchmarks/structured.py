"""Structured pruning: prunekit vs Torch-Pruning on the same models, in one run.

For each model (ResNet-50-like, MobileNetV2-like, ViT-B-like with fewer layers, LLaMA-like GQA from a
transformers config) and each tool, on a fresh copy with the same weights:

- pruning wall time (tracing/graph building + importance + surgery) and the ratio prunekit / tp;
- MACs and parameters after (both counted by prunekit.core.metrics: FlopCounterMode, unique parameters);
- measured CPU latency (warm-up, repeats, median; threads fixed; wall time and process CPU time, the
  latter immune to waiting for a core on a shared machine) and the speedup over the dense model,
  divided by the ideal MAC ratio (efficiency; goal >= 0.8 at 50% channels on the CNNs);
- correctness: the pruned model runs and keeps the output shape; for prunekit also the oracle
  (max |pruned - masked original|, the masked reference built from the recorded plan).

A tool that crashes or produces a broken model is reported in the table, never aborts the run.

Command (numbers in README "## Benchmarks"):

    python benchmarks/structured.py --ratio 0.5 --threads 1 --repeats 10 --rounds 3 --prune-repeats 3 --seed 0

``--quick`` uses smaller inputs and fewer repeats (smoke test).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import signal
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from prunekit.core.metrics import count_macs, count_params  # noqa: E402

# --------------------------------------------------------------------------- models


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = 4 * width
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """The ResNet-50 topology (7x7 stem, max-pool, [3, 4, 6, 3] bottlenecks, 1000 classes)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages: list[nn.Module] = []
        cin = 64
        for i, (n, w) in enumerate(zip([3, 4, 6, 3], [64, 128, 256, 512], strict=True)):
            blocks = []
            for j in range(n):
                blocks.append(Bottleneck(cin, w, 2 if i > 0 and j == 0 else 1))
                cin = 4 * w
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, t: int) -> None:
        super().__init__()
        hidden = cin * t
        layers: list[nn.Module] = []
        if t != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """The MobileNetV2 1.0 topology (17 inverted residuals, 1280-wide head, 1000 classes)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        cfg = [
            (1, 16, 1, 1),
            (6, 24, 2, 2),
            (6, 32, 3, 2),
            (6, 64, 4, 2),
            (6, 96, 3, 1),
            (6, 160, 3, 2),
            (6, 320, 1, 1),
        ]
        feats: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(inplace=True))
        ]
        cin = 32
        for t, c, n, s in cfg:
            for i in range(n):
                feats.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        feats.append(
            nn.Sequential(nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6(inplace=True))
        )
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.classifier(x)


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: Tensor) -> Tensor:
        h = self.ln_1(x)
        x = x + self.self_attention(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class ViTB(nn.Module):
    """ViT-B/16 widths (768, 12 heads, MLP 3072) with ``depth`` encoder blocks, class token, pos-embedding."""

    def __init__(self, depth: int = 4, img: int = 224, num_classes: int = 1000) -> None:
        super().__init__()
        dim = 768
        self.conv_proj = nn.Conv2d(3, dim, 16, 16)
        n = (img // 16) ** 2
        self.class_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos_embedding = nn.Parameter(0.02 * torch.randn(1, n + 1, dim))
        self.layers = nn.Sequential(*[EncoderBlock(dim, 12, 3072) for _ in range(depth)])
        self.ln = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)  # (B, N, D)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embedding
        return self.head(self.ln(self.layers(x))[:, 0])


def make_llama(seq: int) -> tuple[nn.Module, tuple[Any, ...]]:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=2048,
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=512,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(cfg).eval()
    return model, (torch.randint(0, 2048, (1, seq), generator=torch.Generator().manual_seed(1)),)


@dataclass(frozen=True, kw_only=True)
class Case:
    name: str
    build: Callable[[], tuple[nn.Module, tuple[Any, ...]]]
    ignore: Callable[[nn.Module], list[nn.Module]]  # output layers tp must be told to keep
    cnn: bool


def _randomize_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model.eval()


def cases(quick: bool) -> list[Case]:
    hw = 96 if quick else 160
    img = lambda: torch.randn(1, 3, hw, hw, generator=torch.Generator().manual_seed(0))  # noqa: E731
    vit_img = 112 if quick else 224
    return [
        Case(
            name="ResNet-50",
            build=lambda: (_randomize_bn(ResNet50()), (img(),)),
            ignore=lambda m: [m.fc],
            cnn=True,
        ),
        Case(
            name="MobileNetV2",
            build=lambda: (_randomize_bn(MobileNetV2()), (img(),)),
            ignore=lambda m: [m.classifier[1]],
            cnn=True,
        ),
        Case(
            name="ViT-B/16 (4 layers)",
            build=lambda: (
                ViTB(depth=4, img=vit_img).eval(),
                (torch.randn(1, 3, vit_img, vit_img, generator=torch.Generator().manual_seed(0)),),
            ),
            ignore=lambda m: [m.head],
            cnn=False,
        ),
        Case(
            name="LLaMA GQA 8/2 (4 layers)",
            build=lambda: make_llama(64 if quick else 128),
            ignore=lambda m: [m.lm_head],
            cnn=False,
        ),
    ]


# --------------------------------------------------------------------------- tools


def _first_tensor(y: Any) -> Tensor:
    if isinstance(y, Tensor):
        return y
    if hasattr(y, "logits"):
        return y.logits
    if isinstance(y, (tuple, list)):
        return _first_tensor(y[0])
    raise TypeError(type(y))


def prune_tp(model: nn.Module, inputs: tuple[Any, ...], case: Case, ratio: float) -> dict[str, Any]:
    import torch_pruning as tp

    kwargs: dict[str, Any] = {}
    if case.name.startswith("ViT"):
        kwargs["num_heads"] = {
            m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)
        }
    if case.name.startswith("LLaMA"):
        heads: dict[nn.Module, int] = {}
        for layer in model.model.layers:  # type: ignore[union-attr]
            a = layer.self_attn
            heads[a.q_proj] = model.config.num_attention_heads  # type: ignore[union-attr]
            heads[a.k_proj] = heads[a.v_proj] = model.config.num_key_value_heads  # type: ignore[union-attr]
        kwargs["num_heads"] = heads
        kwargs["output_transform"] = lambda out: out.logits  # as in Torch-Pruning's LLM example
    pruner = tp.pruner.MetaPruner(
        model,
        inputs[0] if len(inputs) == 1 else inputs,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=case.ignore(model),
        **kwargs,
    )
    pruner.step()
    return {}


def prune_pk(model: nn.Module, inputs: tuple[Any, ...], case: Case, ratio: float) -> dict[str, Any]:
    import prunekit as pk

    pk.prune_channels(model, inputs, ratio=ratio, criterion="l2")  # type: ignore[attr-defined]
    return {"plan": getattr(model, "_prunekit_plan", None)}


def prune_pk_nocheck(model: nn.Module, inputs: tuple[Any, ...], case: Case, ratio: float) -> dict[str, Any]:
    """prunekit without its built-in verification forward (check=False); the benchmark's oracle still runs."""
    import prunekit as pk

    pk.prune_channels(model, inputs, ratio=ratio, criterion="l2", check=False)  # type: ignore[attr-defined]
    return {"plan": getattr(model, "_prunekit_plan", None)}


def prune_pk_normalized(
    model: nn.Module, inputs: tuple[Any, ...], case: Case, ratio: float
) -> dict[str, Any]:
    """prunekit also removing dims under LayerNorm/RMSNorm (transformer hidden size, MHA heads)."""
    import prunekit as pk

    pk.prune_channels(model, inputs, ratio=ratio, criterion="l2", prune_normalized=True)  # type: ignore[attr-defined]
    return {"plan": getattr(model, "_prunekit_plan", None)}


def pk_oracle_diff(
    original: nn.Module, pruned: nn.Module, inputs: tuple[Any, ...], plan: Any
) -> float | None:
    """Max |pruned - masked original| on the example inputs, using tests/oracle.py (None if unavailable)."""
    try:
        from oracle import kept_from_plan, masked_reference
    except ImportError:
        return None
    ref = masked_reference(original, kept_from_plan(plan))
    with torch.no_grad():
        return float((_first_tensor(pruned(*inputs)) - _first_tensor(ref(*inputs))).abs().max())


@dataclass
class Row:
    model: str
    tool: str
    ok: bool = False
    error: str = ""
    prune_s: float = float("nan")
    macs: int = 0
    params: int = 0
    latency_ms: float = float("nan")
    speedup: float = float("nan")
    cpu_ms: float = float("nan")
    cpu_speedup: float = float("nan")
    ideal: float = float("nan")
    oracle: float | None = None
    notes: list[str] = field(default_factory=list)
    pruned: nn.Module | None = None


def run_tool(
    tool: str,
    prune: Callable[[nn.Module, tuple[Any, ...], Case, float], dict[str, Any]],
    case: Case,
    dense: nn.Module,
    inputs: tuple[Any, ...],
    dense_macs: int,
    dense_ms: float,
    args: argparse.Namespace,
) -> Row:
    row = Row(model=case.name, tool=tool)
    model = copy.deepcopy(dense)
    with torch.no_grad():
        want = tuple(_first_tensor(dense(*inputs)).shape)
    try:
        torch.set_num_threads(args.threads)
        times = []
        extra: dict[str, Any] = {}
        for r in range(args.prune_repeats):
            model = copy.deepcopy(dense)
            t0 = time.perf_counter()
            with warnings.catch_warnings(), _timeout(args.tool_timeout):
                warnings.simplefilter("ignore")
                extra = prune(model, inputs, case, args.ratio)
            times.append(time.perf_counter() - t0)
            del r
        row.prune_s = statistics.median(times)
    except Exception as e:  # a tool's failure is a result, not a crash of the benchmark
        row.error = f"prune failed: {type(e).__name__}: {str(e).splitlines()[0][:90] if str(e) else ''}"
        if args.verbose:
            traceback.print_exc()
        return row
    try:
        with torch.no_grad():
            got = tuple(_first_tensor(model(*inputs)).shape)
    except Exception as e:
        row.error = f"pruned model fails: {type(e).__name__}: {str(e).splitlines()[0][:90] if str(e) else ''}"
        if args.verbose:
            traceback.print_exc()
        return row
    row.macs, row.params = count_macs(model, inputs), count_params(model)
    if got != want:
        row.error = f"output shape {got} != {want}"
        return row
    if tool.startswith("prunekit") and extra.get("plan") is not None:
        try:
            row.oracle = pk_oracle_diff(dense, model, inputs, extra["plan"])
        except Exception as e:
            row.notes.append(f"oracle n/a ({type(e).__name__})")
    row.ok = row.oracle is None or row.oracle < 1e-3 * max(1.0, _scale(dense, inputs))
    if not row.ok:
        row.error = f"oracle mismatch {row.oracle:.2e}"
    row.ideal = dense_macs / max(1, row.macs)
    row.pruned = model
    return row


class ToolTimeout(Exception):
    """A tool ran longer than --tool-timeout seconds."""


@contextlib.contextmanager
def _timeout(seconds: float) -> Iterator[None]:
    """Interrupt the block after ``seconds`` (SIGALRM; the tools are Python loops, so it lands)."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise ToolTimeout(f"no result after {seconds:.0f} s (interrupted)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def interleaved_latency(
    models: list[nn.Module], inputs: tuple[Any, ...], args: argparse.Namespace
) -> list[tuple[float, float]]:
    """(wall, CPU) median latency in ms of each model, timed round-robin so load drift hits all alike.

    Each of ``args.rounds`` rounds runs every model ``warmup`` + ``args.repeats`` times (eval, inference
    mode, ``args.threads`` intra-op threads) and keeps the median; the result is the median over rounds.
    CPU time is the process CPU time of the forward: on a shared machine it excludes the time the process
    waited for a core, which wall time does not (with more threads it sums over them).
    """
    wall: list[list[float]] = [[] for _ in models]
    cpu: list[list[float]] = [[] for _ in models]
    old = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        with torch.inference_mode():
            for _ in range(args.rounds):
                for i, m in enumerate(models):
                    m.eval()
                    for _w in range(2):
                        m(*inputs)
                    w_runs, c_runs = [], []
                    for _r in range(args.repeats):
                        t0, c0 = time.perf_counter(), time.process_time()
                        m(*inputs)
                        c_runs.append((time.process_time() - c0) * 1e3)
                        w_runs.append((time.perf_counter() - t0) * 1e3)
                    wall[i].append(statistics.median(w_runs))
                    cpu[i].append(statistics.median(c_runs))
    finally:
        torch.set_num_threads(old)
    return [(statistics.median(w), statistics.median(c)) for w, c in zip(wall, cpu, strict=True)]


def _scale(model: nn.Module, inputs: tuple[Any, ...]) -> float:
    with torch.no_grad():
        return float(_first_tensor(model(*inputs)).abs().max())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of channels removed per group")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads for timing")
    p.add_argument("--repeats", type=int, default=10, help="timed forward passes per round (median)")
    p.add_argument("--rounds", type=int, default=3, help="round-robin timing rounds over dense/pruned models")
    p.add_argument(
        "--tool-timeout", type=float, default=300.0, help="seconds before a tool's pruning is abandoned"
    )
    p.add_argument("--prune-repeats", type=int, default=1, help="pruning runs per tool (median time)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", default="", help="comma-separated name prefixes (default: all)")
    p.add_argument("--tools", default="prunekit,prunekit-nocheck,prunekit-normalized,torch-pruning")
    p.add_argument("--quick", action="store_true", help="small inputs, few repeats (smoke test)")
    p.add_argument("--verbose", action="store_true", help="print tracebacks of failures")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.rounds = min(args.repeats, 5), 1
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    import torch_pruning as tp

    import prunekit as pk

    tools = {
        "prunekit": prune_pk,
        "prunekit-nocheck": prune_pk_nocheck,
        "prunekit-normalized": prune_pk_normalized,
        "torch-pruning": prune_tp,
    }
    chosen = [t for t in args.tools.split(",") if t]
    print(f"torch {torch.__version__}, torch-pruning {tp.__version__}, prunekit {pk.__version__}")
    print(
        f"ratio={args.ratio} threads={args.threads} repeats={args.repeats} seed={args.seed} quick={args.quick}"
    )
    rows: list[Row] = []
    dense_info: dict[str, tuple[int, int, float, float]] = {}
    for case in cases(args.quick):
        if args.models and not any(case.name.lower().startswith(m.lower()) for m in args.models.split(",")):
            continue
        torch.manual_seed(args.seed)
        dense, inputs = case.build()
        dense_macs, dense_params = count_macs(dense, inputs), count_params(dense)
        print(f"\n{case.name}: dense {dense_macs / 1e9:.3f} GMACs, {dense_params / 1e6:.2f} M params")
        case_rows: list[Row] = []
        for tool in chosen:
            if tool.startswith("prunekit") and not hasattr(pk, "prune_channels"):
                case_rows.append(Row(model=case.name, tool=tool, error="pk.prune_channels not available"))
                continue
            row = run_tool(tool, tools[tool], case, dense, inputs, dense_macs, 0.0, args)
            case_rows.append(row)
            print(f"  {tool:14s} {'ok' if row.ok else 'FAIL'} {row.error} prune {row.prune_s:.2f} s")
        timed = [r for r in case_rows if r.ok and r.pruned is not None]
        lat = interleaved_latency([dense] + [r.pruned for r in timed], inputs, args)  # type: ignore[misc]
        dense_ms, dense_cpu = lat[0]
        for r, (ms, cpu) in zip(timed, lat[1:], strict=True):
            r.latency_ms, r.speedup = ms, dense_ms / ms
            r.cpu_ms, r.cpu_speedup = cpu, dense_cpu / cpu
            r.pruned = None
        dense_info[case.name] = (dense_macs, dense_params, dense_ms, dense_cpu)
        print(
            f"  latency wall/CPU dense {dense_ms:.1f}/{dense_cpu:.1f} ms; "
            + ", ".join(f"{r.tool} {r.latency_ms:.1f}/{r.cpu_ms:.1f} ms" for r in timed)
        )
        rows += case_rows
    print()
    print(render(rows, dense_info))
    return 0


def render(rows: list[Row], dense: dict[str, tuple[int, int, float, float]]) -> str:
    head = (
        "| model | tool | prune time s | time pk/tp | GMACs after (dense) | M params after (dense) | "
        "wall ms (dense) | CPU ms (dense) | speedup wall / CPU | ideal (MAC ratio) | CPU speedup / ideal | correct |"
    )
    lines = [head, "|" + "|".join(["---"] * 12) + "|"]
    by = {(r.model, r.tool): r for r in rows}
    for r in rows:
        dm, dp, dms, dcpu = dense[r.model]
        other = by.get((r.model, "torch-pruning"))
        ratio = (
            f"{r.prune_s / other.prune_s:.2f}"
            if r.tool.startswith("prunekit")
            and other is not None
            and other.prune_s == other.prune_s
            and r.prune_s == r.prune_s
            else ""
        )
        if r.ok:
            correct = "yes" + (f" (oracle {r.oracle:.1e})" if r.oracle is not None else "")
            lines.append(
                f"| {r.model} | {r.tool} | {r.prune_s:.2f} | {ratio} | {r.macs / 1e9:.3f} ({dm / 1e9:.3f}) | "
                f"{r.params / 1e6:.2f} ({dp / 1e6:.2f}) | {r.latency_ms:.1f} ({dms:.1f}) | "
                f"{r.cpu_ms:.1f} ({dcpu:.1f}) | {r.speedup:.2f}x / {r.cpu_speedup:.2f}x | "
                f"{r.ideal:.2f}x | {r.cpu_speedup / r.ideal:.2f} | {correct} |"
            )
        else:
            macs = f"{r.macs / 1e9:.3f} ({dm / 1e9:.3f})" if r.macs else f"- ({dm / 1e9:.3f})"
            params = f"{r.params / 1e6:.2f} ({dp / 1e6:.2f})" if r.params else f"- ({dp / 1e6:.2f})"
            t = f"{r.prune_s:.2f}" if r.prune_s == r.prune_s else "-"
            lines.append(
                f"| {r.model} | {r.tool} | {t} | {ratio} | {macs} | {params} | - ({dms:.1f}) | - ({dcpu:.1f}) | - | - | - | "
                f"NO: {r.error} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
