"""From pruned to fast: measured speedups of prunekit.accel, ratios against dense in the same process.

Parts (each prints a table; all ratios are dense / variant, timed in alternating rounds, medians):

1. ``bert``: a BERT-base-shaped encoder (hidden 768, MLP 3072, 12 layers, 12 heads, random weights,
   transformers ``BertModel``, no download), sequence 128, at 80/90/95% unstructured sparsity
   (every Linear, layer scope), batch 1 and 8: dense vs ``pk.accelerate``'d (its defaults: a model that
   runs slower as a whole with its sparse layers stays dense); the slowest chosen
   layer (never below 1.0x: a layer switches only if it wins by the margin); and
   ``speedup_estimate``'s prediction (from the kernel table, dense model timed) vs the measured latency.
2. ``cnn``: the demo CNN (``prunekit.demo.DigitsCNN``) and a ResNet-50-like model (224 px) at 50%
   channels (``pk.prune_channels``): eager, channels-last, ``torch.compile`` and onnxruntime, each form
   dense vs pruned, speedup / ideal MAC ratio (efficiency), and ``speedup_estimate``'s error against the
   eager pruned model.
3. ``cnn-sparse``: the ResNet-50-like model (224 px, batch 1) at 90% and 95% unstructured sparsity
   (``pk.prune_weights``, layer scope, every conv and the Linear): dense vs ``pk.accelerate``'d
   (``SparseConv2d`` / ``SparseLinear``), the kernels chosen, the slowest switched layer, ``speedup_estimate``'s
   prediction vs the measured latency, and the largest output difference to the masked model.

Command (numbers in README.md, "From pruned to fast" > "Measured")::

    python benchmarks/speed.py --threads 1 --rounds 10

``--quick`` (2 BERT layers, fewer rounds, no compile) is a smoke test. ``--parts bert`` or ``cnn``
runs one part (``cnn-sparse`` is not in the default parts: ``--parts cnn-sparse``). The kernel table is cached in ``$PRUNEKIT_CACHE_DIR`` (default here:
/tmp/prunekit-cache, so a benchmark run leaves no file in your home directory).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("PRUNEKIT_CACHE_DIR", "/tmp/prunekit-cache")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import prunekit as pk  # noqa: E402
from prunekit.accel import AccelerateConfig, accelerate, kernel_table, speedup_estimate  # noqa: E402
from prunekit.accel.deploy import OnnxModel, export_onnx  # noqa: E402
from prunekit.core import count_macs, hardware_info  # noqa: E402
from prunekit.kernels import interleaved_ms  # noqa: E402
from prunekit.weights import WeightPruningConfig  # noqa: E402


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    sys.stdout.flush()


# --------------------------------------------------------------------------- BERT


def bert(layers: int) -> nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=layers, num_attention_heads=12,
                     attn_implementation="sdpa")  # fmt: skip
    return BertModel(cfg, add_pooling_layer=False).eval()


def run_bert(args: argparse.Namespace) -> list[dict[str, Any]]:
    dense = bert(2 if args.quick else 12)
    results: list[dict[str, Any]] = []
    kt = kernel_table()
    assert kt is not None
    for batch in (int(b) for b in args.batches.split(",")):
        ids = torch.randint(0, 30000, (batch, 128), generator=torch.Generator().manual_seed(1))
        for s in (0.8, 0.9, 0.95):
            est = speedup_estimate(dense, (ids,), WeightPruningConfig(sparsity=s, scope="layer"), table=kt,
                                   rounds=args.rounds)  # fmt: skip
            model = copy.deepcopy(dense)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pk.prune_weights(model, s, scope="layer", include=[nn.Linear])
            with torch.no_grad():
                ref = model(ids).last_hidden_state  # the masked model: what accelerate must compute
            t0 = time.perf_counter()
            res = accelerate(model, (ids,), config=AccelerateConfig(rounds=args.rounds))
            acc_s = time.perf_counter() - t0
            with torch.no_grad():
                err = float((model(ids).last_hidden_state - ref).abs().max())
            ms = interleaved_ms({"dense": lambda i=ids: dense(i), "accelerated": lambda m=model, i=ids: m(i)},
                                rounds=args.rounds, warmup=2, target_s=0.0)  # fmt: skip
            layer_gain = min((c.speedup for c in res.replaced), default=1.0)
            row = {"batch": batch, "sparsity": s, "dense_ms": ms["dense"], "accelerated_ms": ms["accelerated"],
                   "speedup": ms["dense"] / ms["accelerated"], "replaced": len(res.replaced),
                   "layers": len(res.layers), "min_layer_speedup": layer_gain,
                   "estimate_ms": est.predicted_ms, "estimate_error": est.predicted_ms / ms["accelerated"] - 1,
                   "accelerate_s": acc_s, "max_abs_error": err,
                   "kernels": {k: sum(c.kernel == k for c in res.layers) for k in sorted({c.kernel for c in res.layers})},
                   "transposed_outputs": sum(c.transposed_output for c in res.layers)}  # fmt: skip
            results.append(row)
            print(json.dumps(row), flush=True)
            del model
    rows = [[str(r["batch"]), f"{r['sparsity']:.0%}", f"{r['dense_ms']:.1f}", f"{r['accelerated_ms']:.1f}",
             f"{r['speedup']:.2f}x", f"{r['replaced']}/{r['layers']}", f"{r['min_layer_speedup']:.2f}x",
             f"{r['estimate_ms']:.1f}", f"{r['estimate_error']:+.0%}", f"{r['max_abs_error']:.1e}",
             f"{r['accelerate_s']:.1f}"]
            for r in results]  # fmt: skip
    table(f"BERT-base-shaped encoder, seq 128, {args.threads} thread(s): dense vs pk.accelerate",
          ["batch", "sparsity", "dense ms", "accel ms", "speedup", "sparse layers", "slowest layer", "estimate ms",
           "estimate err", "max |diff|", "accelerate s"], rows)  # fmt: skip
    return results


# --------------------------------------------------------------------------- CNNs


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = 4 * width
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else None)  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        idt = x if self.down is None else self.down(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + idt)


class ResNet50(nn.Module):
    """ResNet-50 topology: 7x7 stem, max-pool, [3, 4, 6, 3] bottlenecks, 1000 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))  # fmt: skip
        blocks, cin = [], 64
        for i, (n, w) in enumerate(zip([3, 4, 6, 3], [64, 128, 256, 512], strict=True)):
            for j in range(n):
                blocks.append(Bottleneck(cin, w, 2 if i > 0 and j == 0 else 1))
                cin = 4 * w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(2048, 1000)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


def randomize_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model.eval()


def forms(model: nn.Module, x: Tensor, tmp: Path, tag: str, compile_: bool, threads: int) -> dict[str, Any]:
    """Callable deployed forms of ``model``: eager, channels-last, torch.compile, onnxruntime."""
    out: dict[str, Any] = {"eager": lambda: model(x)}
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    xcl = x.contiguous(memory_format=torch.channels_last)
    out["channels-last"] = lambda: cl(xcl)
    if compile_:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = torch.compile(copy.deepcopy(model).to(memory_format=torch.channels_last))
            with torch.inference_mode():
                compiled(xcl)  # compile outside the timing
        out["compile+cl"] = lambda: compiled(xcl)
    onnx = OnnxModel(export_onnx(model, (x,), tmp / f"{tag}.onnx"), threads=threads)
    out["onnxruntime"] = lambda: onnx(x)
    return out


def run_cnns(args: argparse.Namespace) -> list[dict[str, Any]]:
    from prunekit.cli.demo import DigitsCNN

    torch.manual_seed(0)
    cases = [("demo CNN (DigitsCNN), batch 64", randomize_bn(DigitsCNN()), torch.randn(64, 1, 8, 8)),
             ("ResNet-50-like, 224 px, batch 1", randomize_bn(ResNet50()), torch.randn(1, 3, 224, 224))]  # fmt: skip
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        for title, dense, x in cases:
            pruned = copy.deepcopy(dense)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pk.prune_channels(pruned, (x,), 0.5)
            ideal = count_macs(dense, (x,)) / count_macs(pruned, (x,))
            est = speedup_estimate(dense, (x,), pk.ChannelPruneConfig(ratio=0.5), rounds=args.rounds)
            fd = forms(dense, x, Path(d), "dense", args.compile, args.threads)
            fp = forms(pruned, x, Path(d), "pruned", args.compile, args.threads)
            fns = {f"dense/{k}": v for k, v in fd.items()} | {f"pruned/{k}": v for k, v in fp.items()}
            ms = interleaved_ms(fns, rounds=args.rounds, warmup=2, target_s=0.0)
            rows = []
            for form in fd:
                d_ms, p_ms = ms[f"dense/{form}"], ms[f"pruned/{form}"]
                r = {"model": title, "form": form, "dense_ms": d_ms, "pruned_ms": p_ms, "speedup": d_ms / p_ms,
                     "ideal": ideal, "efficiency": d_ms / p_ms / ideal,
                     "vs_dense_eager": ms["dense/eager"] / p_ms}  # fmt: skip
                if form == "eager":  # speedup_estimate predicts eager PyTorch
                    r |= {"estimate_ms": est.predicted_ms, "estimate_error": est.predicted_ms / p_ms - 1}
                results.append(r)
                rows.append([form, f"{d_ms:.2f}", f"{p_ms:.2f}", f"{r['speedup']:.2f}x", f"{ideal:.2f}x",
                             f"{r['efficiency']:.2f}", f"{r['vs_dense_eager']:.2f}x",
                             f"{r['estimate_error']:+.0%}" if "estimate_error" in r else "-"])  # fmt: skip
                print(json.dumps(r), flush=True)
            table(f"{title}, 50% channels, {args.threads} thread(s)",
                  ["form", "dense ms", "pruned ms", "speedup", "ideal (MACs)", "efficiency", "vs dense eager",
                   "estimate err"],
                  rows)  # fmt: skip
    return results


def run_cnn_sparse(args: argparse.Namespace) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    dense = randomize_bn(ResNet50())
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    results: list[dict[str, Any]] = []
    kt = kernel_table()
    for s in (0.9, 0.95):
        est = speedup_estimate(dense, (x,), WeightPruningConfig(sparsity=s, scope="layer"), table=kt,
                               rounds=args.rounds)  # fmt: skip
        model = copy.deepcopy(dense)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pk.prune_weights(model, s, scope="layer")  # every Conv2d and the Linear
        with torch.no_grad():
            ref = model(x)  # the masked model: what accelerate must compute
        t0 = time.perf_counter()
        res = accelerate(model, (x,), config=AccelerateConfig(rounds=args.rounds))
        acc_s = time.perf_counter() - t0
        with torch.no_grad():
            err = float((model(x) - ref).abs().max())
        ms = interleaved_ms({"dense": lambda: dense(x), "accelerated": lambda m=model: m(x)},
                            rounds=args.rounds, warmup=2, target_s=0.0)  # fmt: skip
        convs = [c for c in res.layers if c.kind == "conv2d"]

        def kind(c: Any) -> str:
            return "1x1" if c.weight_shape[2:] == (1, 1) else f"{c.weight_shape[2]}x{c.weight_shape[3]}"

        by_kind = {k: [c for c in convs if kind(c) == k] for k in sorted({kind(c) for c in convs})}
        row = {"sparsity": s, "dense_ms": ms["dense"], "accelerated_ms": ms["accelerated"],
               "speedup": ms["dense"] / ms["accelerated"], "replaced": len(res.replaced), "layers": len(res.layers),
               "convs_replaced": {k: f"{sum(c.kernel != 'dense' for c in v)}/{len(v)}" for k, v in by_kind.items()},
               "kernels": {k: sum(c.kernel == k for c in res.layers) for k in sorted({c.kernel for c in res.layers})},
               "min_layer_speedup": min((c.speedup for c in res.replaced), default=1.0),
               "max_layer_speedup": max((c.speedup for c in res.replaced), default=1.0),
               "accelerate_s": acc_s, "max_abs_error": err, "max_abs_output": float(ref.abs().max()),
               "estimate_ms": est.predicted_ms, "estimate_error": est.predicted_ms / ms["accelerated"] - 1,
               "layer_choices": [{"name": c.name, "weight_shape": list(c.weight_shape or c.shape), "kernel": c.kernel,
                                  "speedup": c.timings_ms["dense"] / min(c.timings_ms.values()) if c.timings_ms else 1.0,
                                  "input_shape": list(c.input_shape)} for c in res.layers]}  # fmt: skip
        results.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "layer_choices"}), flush=True)
        del model
    rows = [[f"{r['sparsity']:.0%}", f"{r['dense_ms']:.1f}", f"{r['accelerated_ms']:.1f}", f"{r['speedup']:.2f}x",
             f"{r['replaced']}/{r['layers']}", " ".join(f"{k} {v}" for k, v in r["convs_replaced"].items()),
             ", ".join(f"{k} {v}" for k, v in r["kernels"].items()),
             f"{r['min_layer_speedup']:.2f}-{r['max_layer_speedup']:.2f}x", f"{r['estimate_ms']:.1f}",
             f"{r['estimate_error']:+.0%}", f"{r['max_abs_error']:.1e}", f"{r['accelerate_s']:.1f}"]
            for r in results]  # fmt: skip
    table(f"ResNet-50-like, 224 px, batch 1, {args.threads} thread(s), unstructured (layer scope): dense vs "
          "pk.accelerate", ["sparsity", "dense ms", "accel ms", "speedup", "sparse layers", "convs switched",
                            "kernels", "switched layers", "estimate ms", "estimate err", "max |diff|",
                            "accelerate s"], rows)  # fmt: skip
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--parts", default="bert,cnn")
    p.add_argument("--batches", default="1,8", help="BERT batch sizes (sequences of 128 tokens)")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="/tmp/prunekit-speed.json")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.compile = min(args.rounds, 3), False
    torch.set_num_threads(args.threads)
    print(f"hardware: {hardware_info(args.threads)}")
    out: dict[str, Any] = {"hardware": hardware_info(args.threads).to_dict(), "args": vars(args)}
    parts = args.parts.split(",")
    if "bert" in parts:
        out["bert"] = run_bert(args)
    if "cnn" in parts:
        out["cnn"] = run_cnns(args)
    if "cnn-sparse" in parts:
        out["cnn_sparse"] = run_cnn_sparse(args)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
