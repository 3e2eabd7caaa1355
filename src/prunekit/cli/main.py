"""The ``prunekit`` command line: a thin layer over the Python API.

Every command prints a rich table (or JSON with ``--json``, or nothing but errors with ``--quiet``).
Errors are one clear line on stderr and a non-zero exit; ``--debug`` shows the traceback. Commands that
write a directory build it in a temporary sibling and rename it at the end, so a failed run leaves
nothing behind that looks like a result.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from typing import Any

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

_EPILOG = """\
examples:
  prunekit demo                                           train, prune and fine-tune a small CNN (< 1 min)
  prunekit summary examples.models:trained_digits_cnn     params, non-zeros, MACs, per-layer table
  prunekit prune examples.models:trained_digits_cnn --recipe examples/magnitude-90.yaml --out runs/mag90
  prunekit analyze runs/mag90 --data digits --out runs/mag90-sensitivity
  prunekit compare runs/ch50 runs/mag90                   sizes, MACs, latency, accuracy side by side

MODEL is a directory written by prunekit, a Hugging Face model directory, or module:factory
(a Python import path, or path/to/file.py:factory, of a function returning a model or
(model, example_inputs)). DATA is module:factory returning a DataLoader (or a (train, test) pair),
or a built-in name: digits, mnist, fashion-mnist (read from --data-dir or $PRUNEKIT_DATA).
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        if getattr(action, "from_config", False) and action.default is not None and text:
            text += " (default: %(default)s)"
        return text


def config_option(
    p: argparse.ArgumentParser | argparse._ArgumentGroup,
    flag: str,
    config_cls: type[Any],
    field: str,
    **kwargs: Any,
) -> argparse.Action:
    """Add ``flag`` mirroring ``config_cls.<field>``: its help is the field's doc, its choices the field's.

    Choices come from a ``Literal[...]`` field type, or (``criterion``) from the criterion registry
    the config looks names up in; ``kwargs`` (type, default, metavar) are passed to ``add_argument``.
    """
    import typing

    from prunekit.core import option_help

    kwargs.setdefault("help", option_help(config_cls)[field])
    if "choices" not in kwargs:
        try:
            hint = typing.get_type_hints(config_cls).get(field)
        except (NameError, TypeError):  # pragma: no cover - an unresolvable annotation: no choices
            hint = None
        if typing.get_origin(hint) is typing.Literal:
            kwargs["choices"] = typing.get_args(hint)
    action = p.add_argument(flag, dest=field, **kwargs)
    action.from_config = True  # type: ignore[attr-defined]  # _Formatter appends the default
    return action


def _wrap(text: str) -> str:
    return textwrap.fill(" ".join(text.split()), width=100)


def _out_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", required=True, metavar="DIR", help="output directory (must not exist, or --overwrite)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")


def _common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument(
        "--json", action="store_true", help="print machine-readable JSON on stdout instead of tables"
    )
    group.add_argument(
        "--quiet", "-q", action="store_true", help="print nothing but errors (files are still written)"
    )
    group.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument(
        "--trust-code",
        action="store_true",
        help="allow a model directory or recipe written by someone else to name Python code that is imported",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``prunekit`` (every sub-command with examples in its help)."""
    parser = argparse.ArgumentParser(
        prog="prunekit",
        description=_wrap("Prune PyTorch models so they really get smaller and faster."),
        epilog=_EPILOG,
        formatter_class=_Formatter,
    )
    from prunekit.version import __version__

    parser.add_argument("--version", action="version", version=f"prunekit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    p = sub.add_parser(
        "demo",
        help="train a small CNN on sklearn's digits, prune it several ways, fine-tune, print a table",
        description=textwrap.dedent(
            """\
            Train a small CNN on sklearn's digits (embedded, no download), prune it at several
            sparsities with magnitude and wanda (activation-aware), remove channels physically when
            structured pruning is available, fine-tune briefly and print a table: sparsity, non-zero
            params, MACs, accuracy before/after fine-tuning, file size, latency. Seeded; < 1 minute.
            """
        ),
        epilog="examples:\n  prunekit demo\n  prunekit demo --out demo-report      # also writes report.html/json\n"
        "  prunekit demo --json --quiet",
        formatter_class=_Formatter,
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="write report.html and report.json into DIR (default: $TMPDIR/prunekit-demo)",
    )
    p.add_argument("--no-report", action="store_true", help="do not write the HTML/JSON report")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    _common(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "summary",
        help="parameters, non-zeros, sparsity, MACs, file size and a per-layer table of a model",
        description=_wrap(
            "Show the size of a model: parameters, non-zeros, weight sparsity, MACs of one forward pass "
            "on its example inputs, file size as prunekit saves it, and a per-layer table."
        ),
        epilog="examples:\n  prunekit summary examples.models:trained_digits_cnn\n  prunekit summary runs/mag90\n"
        "  prunekit summary path/to/hf-model --json\n  prunekit summary my_models.py:resnet --input-shape 1,3,32,32",
        formatter_class=_Formatter,
    )
    p.add_argument(
        "model", metavar="MODEL", help="prunekit directory, Hugging Face directory, or module:factory"
    )
    p.add_argument("--input-shape", metavar="N,C,H,W", help="example input shape when the factory gives none")
    p.add_argument(
        "--latency", action="store_true", help="also measure latency (median of 30 runs, 1 thread)"
    )
    _common(p)
    p.set_defaults(func=_cmd_summary)

    p = sub.add_parser(
        "prune",
        help="run a YAML recipe on a model; write the pruned model, report.html and report.json",
        description=_wrap(
            "Run a pruning recipe (what, how much, criterion, schedule, fine-tuning, exclusions) on MODEL "
            "and write DIR: model.safetensors + prunekit-model.json (a MODEL directory for the other commands), "
            "recipe.yaml, report.json (every number) and report.html (tables and plots). DIR is written only when "
            "the whole run succeeded."
        ),
        epilog="examples:\n"
        "  prunekit prune examples.models:trained_digits_cnn --recipe examples/magnitude-90.yaml --out runs/mag90\n"
        "  prunekit prune --recipe examples/nm-2-4.yaml --out runs/nm24     # MODEL taken from the recipe\n"
        "  prunekit prune runs/mag90 --recipe examples/channels-50.yaml --out runs/mag90-ch50 --data digits\n"
        "  prunekit prune examples.models:mnist_lenet --recipe r.yaml --out runs/mnist --data mnist --data-dir ../data",
        formatter_class=_Formatter,
    )
    p.add_argument("model", metavar="MODEL", nargs="?", help="the model (default: the recipe's 'model')")
    p.add_argument("--recipe", required=True, metavar="RECIPE.yaml", help="the recipe (see examples/*.yaml)")
    _out_args(p)
    _data_args(p, required=False)
    p.add_argument("--no-latency", action="store_true", help="skip latency measurements (faster)")
    p.add_argument(
        "--task",
        default=None,
        metavar="TASK",
        help="what the loss is: classification, embedding, causal-lm, masked-lm, or module:fn (default: "
        "classification; with --calibration text, from the MODEL: causal-lm for *ForCausalLM, masked-lm for "
        "*ForMaskedLM, else embedding)",
    )
    p.add_argument(
        "--calibration",
        metavar="FILE.txt",
        help="text file (one example a line) tokenised with the MODEL's tokenizer: the data, no labels needed",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="show what the recipe's pruning steps would remove (no fine-tuning, nothing written)",
    )
    p.add_argument(
        "--save-pretrained",
        metavar="HF_DIR",
        help="also write a Hugging Face from_pretrained directory (config, weights, tokenizer files)",
    )
    _common(p)
    p.set_defaults(func=_cmd_prune)

    p = sub.add_parser(
        "analyze",
        help="sensitivity analysis: prune each layer alone at several ratios and measure the loss",
        description=_wrap(
            "Sensitivity analysis of MODEL on DATA: every prunable layer is pruned alone at each ratio, "
            "the loss (and accuracy) is measured, and the layer is restored exactly. Writes DIR/report.html, "
            "report.json, sensitivity.csv and sensitivity.json; with --target, also per-layer ratios that reach "
            "that global sparsity with the least predicted loss increase (allocation.json)."
        ),
        epilog="examples:\n  prunekit analyze examples.models:trained_digits_cnn --data digits --out runs/sens\n"
        "  prunekit analyze runs/mag90 --data digits --out runs/sens --ratios 0.25,0.5,0.75 --target 0.8\n"
        "  prunekit analyze examples.models:mnist_lenet --data mnist --data-dir ../shared/data --out runs/sens-mnist",
        formatter_class=_Formatter,
    )
    p.add_argument(
        "model", metavar="MODEL", help="prunekit directory, Hugging Face directory, or module:factory"
    )
    _data_args(p, required=True)
    _out_args(p)
    from prunekit.analysis import AllocationConfig, SensitivityConfig
    from prunekit.core import criterion_registry

    # options that mirror a verb's config take their help and choices from its fields
    config_option(
        p, "--ratios", SensitivityConfig, "ratios", default="0.1,0.3,0.5,0.7,0.9", metavar="R1,R2,..."
    )
    config_option(
        p,
        "--criterion",
        SensitivityConfig,
        "criterion",
        default="magnitude",
        choices=criterion_registry("sensitivity").names(),
    )
    config_option(p, "--granularity", SensitivityConfig, "granularity", default="layer")
    config_option(p, "--max-batches", SensitivityConfig, "max_batches", type=int, default=4)
    config_option(p, "--target", AllocationConfig, "target", type=float, metavar="FRACTION")
    _common(p)
    p.set_defaults(func=_cmd_analyze)

    p = sub.add_parser(
        "compare",
        help="side-by-side sizes, MACs, latency and accuracy of two models or runs",
        description=_wrap(
            "Compare two models (prunekit directories, e.g. two 'prunekit prune' outputs, Hugging Face "
            "directories or module:factory): parameters, non-zeros, MACs, file size, peak forward memory and "
            "latency are measured now, in the same process and conditions; accuracy comes from --data when "
            "given, else from each directory's report.json."
        ),
        epilog="examples:\n  prunekit compare runs/mag90 runs/ch50\n"
        "  prunekit compare examples.models:trained_digits_cnn runs/mag90 --data digits\n"
        "  prunekit compare runs/a runs/b --json --repeats 100 --threads 2",
        formatter_class=_Formatter,
    )
    p.add_argument("model_a", metavar="A", help="first model (the baseline of the ratios)")
    p.add_argument("model_b", metavar="B", help="second model")
    _data_args(p, required=False)
    p.add_argument("--repeats", type=int, default=30, help="timed runs per model (default 30)")
    p.add_argument("--threads", type=int, default=1, help="torch threads while timing (default 1)")
    _common(p)
    p.set_defaults(func=_cmd_compare)
    return parser


def _data_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument(
        "--data",
        required=required,
        metavar="DATA",
        help="digits, mnist, fashion-mnist, or module:factory returning a DataLoader / (train, test)",
    )
    p.add_argument(
        "--data-dir", metavar="DIR", help="folder holding mnist/ and fashion-mnist/ (default $PRUNEKIT_DATA)"
    )
    p.add_argument("--batch-size", type=int, default=64, help="batch size for built-in data (default 64)")


def _console(args: argparse.Namespace, stderr: bool = False) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 150  # piped output: do not squeeze tables into 80 columns
    return Console(stderr=stderr, quiet=bool(args.quiet and not stderr), width=width)


def _emit_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(obj)
    return str(obj)


def _cmd_demo(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from prunekit.cli.demo import DemoConfig, demo_table, run_demo

    out = None if args.no_report else (args.out or str(Path(tempfile.gettempdir()) / "prunekit-demo"))
    show_progress = not (args.quiet or args.json) and sys.stderr.isatty()
    result = run_demo(DemoConfig(seed=args.seed), progress=show_progress, out_dir=out)
    if args.json:
        _emit_json(result.to_dict())
        return EXIT_OK
    console = _console(args)
    console.print(demo_table(result))
    for note in result.notes:
        console.print(f"note: {note}")
    console.print(f"{result.seconds:.1f} s on {result.hardware}")
    if result.report_dir:
        console.print(f"report: {result.report_dir}/report.html")
    return EXIT_OK


def _parse_shape(text: str | None) -> Any:
    if not text:
        return None
    import torch

    from prunekit.errors import ConfigError

    try:
        shape = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--input-shape must be integers like 1,3,32,32; got {text!r}") from None
    if not shape or any(v < 1 for v in shape):
        raise ConfigError(f"--input-shape must be positive integers like 1,3,32,32; got {text!r}")
    return torch.zeros(*shape)


@contextlib.contextmanager
def log_to_stderr(enabled: bool) -> Iterator[None]:
    """Show the library's INFO log lines (``prunekit.*``, ``examples.*``) on stderr while the body runs.

    Loading an example model may train it first (once, then cached); without these lines the
    first ``prunekit summary`` would sit silent for up to a minute.
    """
    if not enabled:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    loggers = [logging.getLogger("prunekit"), logging.getLogger("examples")]
    old = [(lg, lg.level) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for lg, level in old:
            lg.removeHandler(handler)
            lg.setLevel(level)


def _load(spec: str, input_shape: str | None = None, trust_code: bool = False, *, log: bool = False) -> Any:
    from dataclasses import replace

    from prunekit.recipes import load_model

    with log_to_stderr(log):
        loaded = load_model(spec, trust_code=trust_code)
    shape = _parse_shape(input_shape)
    if shape is not None:
        loaded = replace(loaded, example_inputs=shape)
    return loaded


def _data(args: argparse.Namespace, seed: int = 0) -> Any:
    from prunekit.recipes import load_data

    if not getattr(args, "data", None):
        return None
    return load_data(args.data, data_dir=args.data_dir, batch_size=args.batch_size, seed=seed)


def _cmd_summary(args: argparse.Namespace) -> int:
    from prunekit.core import count_macs, count_nonzeros, count_params, measure_latency
    from prunekit.io import file_size
    from prunekit.recipes import layer_rows
    from prunekit.weights import sparsity

    loaded = _load(args.model, args.input_shape, args.trust_code, log=not (args.quiet or args.json))
    model, example = loaded.model, loaded.example_inputs
    info: dict[str, Any] = {
        "model": args.model,
        "type": type(model).__name__,
        "params": count_params(model),
        "nonzeros": count_nonzeros(model),
        "sparsity": float(sparsity(model)),
        "file_bytes": file_size(model),
        "macs": count_macs(model, example) if example is not None else None,
        "layers": layer_rows(model),
    }
    if args.latency and example is not None:
        info["latency"] = measure_latency(model, example).to_dict()
    if args.json:
        _emit_json(info)
        return EXIT_OK
    from rich.table import Table

    from prunekit.report import fmt_value

    console = _console(args)
    head = Table(title=f"{args.model} ({info['type']})", show_header=False)
    head.add_column("metric")
    head.add_column("value", justify="right")
    head.add_row("parameters", fmt_value(info["params"], "int"))
    head.add_row("non-zero parameters", fmt_value(info["nonzeros"], "int"))
    head.add_row("weight sparsity", fmt_value(info["sparsity"], "pct"))
    head.add_row(
        "MACs (one example)",
        fmt_value(info["macs"], "int") if example is not None else "- (no example inputs)",
    )
    head.add_row("file size", fmt_value(info["file_bytes"], "bytes"))
    if "latency" in info:
        lat = info["latency"]
        head.add_row("latency (median, IQR)", f"{lat['median_ms']:.3f} ms ± {lat['iqr_ms']:.3f}")
    console.print(head)
    layers = Table(title="layers")
    for i, col in enumerate(("layer", "type", "shape", "params", "non-zeros", "sparsity")):
        layers.add_column(col, justify="right" if i >= 3 else "left")
    for r in info["layers"]:
        layers.add_row(
            r["name"],
            r["type"],
            "x".join(map(str, r["shape"])),
            f"{r['params']:,}",
            f"{r['nonzeros']:,}",
            f"{r['weight_sparsity']:.1%}",
        )
    console.print(layers)
    return EXIT_OK


def _cmd_prune(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from prunekit.core import atomic_dir
    from prunekit.errors import ConfigError
    from prunekit.recipes import Recipe, save_model_dir, write_pretrained
    from prunekit.report import prune_report, rich_before_after, rich_layers, write_report

    recipe = Recipe.from_yaml(args.recipe)
    spec = args.model or recipe.model
    if not spec:
        raise ConfigError("no MODEL: give it on the command line or as 'model:' in the recipe")
    if args.dry_run:  # the model is loaded for this run only: pruning it changes nothing on disk
        recipe = replace(recipe, finetune=None, measure=replace(recipe.measure, latency=False))
        if recipe.schedule.kind == "iterative":
            recipe = replace(recipe, schedule=type(recipe.schedule)())  # one shot to the final amount
    else:
        _check_out(args.out, args.overwrite)
    if args.no_latency:
        recipe = replace(recipe, measure=replace(recipe.measure, latency=False))
    if not args.model and not args.trust_code and not os.path.isdir(spec):
        raise ConfigError(
            f"the recipe {args.recipe} names Python code for its model ({spec!r}); give MODEL on the command "
            "line, or pass --trust-code if you trust the recipe"
        )
    loaded = _load(spec, trust_code=args.trust_code, log=not (args.quiet or args.json))
    data = _data(args, recipe.seed)
    loss_fn, data = _task(args, loaded, data)
    show_progress = not (args.quiet or args.json) and sys.stderr.isatty()
    result = recipe.run(
        loaded.model, loaded.example_inputs, data=data, progress=show_progress, loss_fn=loss_fn
    )
    report = prune_report(result, model_source={"spec": spec, **loaded.source})
    if args.dry_run:
        if args.json:
            _emit_json({"dry_run": True, **report})
        else:
            console = _console(args)
            console.print(rich_before_after(report))
            console.print(rich_layers(report["layers"]))
            console.print(f"dry run: nothing written ({result.seconds:.1f} s)")
        return EXIT_OK
    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        save_model_dir(replace(loaded, example_inputs=result.example_inputs), tmp, result.model)
        (tmp / "recipe.yaml").write_text(recipe.to_yaml())
        write_report(report, tmp)
    if args.save_pretrained:
        _check_out(args.save_pretrained, args.overwrite)
        with atomic_dir(args.save_pretrained, overwrite=args.overwrite) as hf_tmp:
            write_pretrained(loaded, result.model, hf_tmp)
    if args.json:
        _emit_json({"out": args.out, **report})
        return EXIT_OK
    console = _console(args)
    console.print(rich_before_after(report))
    console.print(rich_layers(report["layers"]))
    console.print(f"wrote {args.out}/report.html, report.json, model.safetensors ({result.seconds:.1f} s)")
    return EXIT_OK


def _task(args: argparse.Namespace, loaded: Any, data: Any) -> tuple[Any, Any]:
    """The recipe's loss for ``--task`` and, with ``--calibration``, the text file's batches as data."""
    from pathlib import Path

    from prunekit.errors import ConfigError
    from prunekit.recipes import hf_tokenizer, task_loss, text_batches

    task = args.task or (default_text_task(loaded.model) if args.calibration else "classification")
    loss_fn = task_loss(task, loaded.model)
    if args.calibration:
        if data is not None:
            raise ConfigError("give --data or --calibration, not both")
        base = loaded.source.get("path") if loaded.source.get("kind") == "hf" else None
        if loaded.path and (Path(loaded.path) / "base-model").is_dir():
            base = str(Path(loaded.path) / "base-model")
        if not base:
            raise ConfigError(
                "--calibration FILE.txt needs a Hugging Face MODEL (its tokenizer reads the text)"
            )
        batches = text_batches(args.calibration, hf_tokenizer(base), batch_size=args.batch_size)
        data = (batches, batches)
        if task == "classification":
            raise ConfigError(
                "--calibration text has no labels: choose --task embedding, causal-lm or masked-lm"
            )
    return loss_fn, data


def default_text_task(model: Any) -> str:
    """The task a calibration text file implies for ``model`` when ``--task`` is not given."""
    name = type(model).__name__
    if name.endswith("ForCausalLM") or name.endswith("LMHeadModel"):
        return "causal-lm"
    if name.endswith("ForMaskedLM"):
        return "masked-lm"
    return "embedding"


def _check_out(out: str, overwrite: bool) -> None:
    from prunekit.core import check_output_dir

    check_output_dir(out, overwrite=overwrite)  # before the run, so a bad --out fails fast


def _accuracy_metric(outputs: Any, targets: Any) -> float:
    logits = getattr(outputs, "logits", outputs)
    return float((logits.argmax(dim=-1) == targets).float().mean())


_accuracy_metric.__name__ = "accuracy"


def _cmd_analyze(args: argparse.Namespace) -> int:
    import torch

    from prunekit.analysis import allocate, sensitivity
    from prunekit.core import atomic_dir
    from prunekit.errors import ConfigError
    from prunekit.recipes import check_fits, measure_model
    from prunekit.report import envelope, rich_before_after, write_report

    try:
        ratios = tuple(float(v) for v in args.ratios.split(",") if v.strip())
    except ValueError:
        raise ConfigError(
            f"--ratios must be comma-separated numbers in (0, 1); got {args.ratios!r}"
        ) from None
    _check_out(args.out, args.overwrite)
    loaded = _load(args.model, trust_code=args.trust_code)
    data = _data(args)
    check_fits(loaded.model, data)
    model = loaded.model
    show_progress = not (args.quiet or args.json) and sys.stderr.isatty()
    result = sensitivity(
        model,
        data.test,
        torch.nn.functional.cross_entropy,
        ratios=ratios,
        criterion=args.criterion,
        granularity=args.granularity,
        metric=_accuracy_metric,
        max_batches=args.max_batches,
        progress=show_progress,
    )
    sens = result.to_dict()
    allocation = None
    if args.target is not None:
        allocation = allocate(result, target=args.target).to_dict()
    before = measure_model(model, loaded.example_inputs, data.test, latency=False)
    from prunekit.core import hardware_info

    report = envelope(
        "analyze",
        f"prunekit: sensitivity of {args.model}",
        model={"spec": args.model, **loaded.source},
        before=before,
        hardware=hardware_info().to_dict(),
        sensitivity=sens,
        allocation=allocation,
        settings={
            "ratios": list(ratios),
            "criterion": args.criterion,
            "granularity": args.granularity,
            "max_batches": args.max_batches,
            "data": args.data,
        },
    )
    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        write_report(report, tmp)
        result.to_csv(tmp / "sensitivity.csv")
        result.to_json(tmp / "sensitivity.json")
        if allocation is not None:
            (tmp / "allocation.json").write_text(json.dumps(allocation, indent=2) + "\n")
    if args.json:
        _emit_json({"out": args.out, **report})
        return EXIT_OK
    console = _console(args)
    console.print(rich_before_after(report))
    console.print(_sensitivity_table(sens, allocation))
    console.print(f"wrote {args.out}/report.html, report.json, sensitivity.csv")
    return EXIT_OK


def _sensitivity_table(sens: dict[str, Any], allocation: dict[str, Any] | None) -> Any:
    from rich.table import Table

    from prunekit.report import sensitivity_curves

    curves = sensitivity_curves(sens)
    table = Table(
        title=f"loss increase when one layer alone is pruned (baseline loss {sens['baseline_loss']:.4f})"
    )
    table.add_column("layer")
    ratios = next(iter(curves.values()))[0] if curves else []
    for r in ratios:
        table.add_column(f"{r:.0%}", justify="right")
    if allocation is not None:
        table.add_column("allocated", justify="right")
    for name, (_, deltas) in curves.items():
        cells = [f"{d:+.4f}" for d in deltas]
        if allocation is not None:
            cells.append(f"{allocation['ratios'].get(name, 0.0):.2f}")
        table.add_row(name, *cells)
    return table


def _cmd_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from prunekit.recipes import measure_model
    from prunekit.report import flatten_metrics, fmt_value, load_report

    data = _data(args)
    columns = []
    for spec in (args.model_a, args.model_b):
        loaded = _load(spec, trust_code=args.trust_code)
        m = measure_model(
            loaded.model,
            loaded.example_inputs,
            data.test if data else None,
            repeats=args.repeats,
            threads=args.threads,
        )
        source = "measured"
        if m["accuracy"] is None and (Path(spec) / "report.json").exists():
            rep = load_report(spec)
            after = rep.get("after") or rep.get("before") or {}
            m["accuracy"], m["loss"] = after.get("accuracy"), after.get("loss")
            source = "report.json"
        m["accuracy_source"] = source if m["accuracy"] is not None else None
        columns.append(m)
    rows = []
    flat = [flatten_metrics(c) for c in columns]
    for key, label, kind in (
        ("params", "parameters", "int"),
        ("nonzeros", "non-zero parameters", "int"),
        ("sparsity", "weight sparsity", "pct"),
        ("macs", "MACs (one example)", "int"),
        ("file_bytes", "file size", "bytes"),
        ("peak_forward_bytes", "peak forward memory", "bytes"),
        ("latency_ms", "latency, median", "ms"),
        ("latency_iqr_ms", "latency, IQR", "ms"),
        ("accuracy", "accuracy", "pct"),
        ("loss", "loss", "float"),
    ):
        a, b = flat[0].get(key), flat[1].get(key)
        ratio = (
            f"{b / a:.3f}x"
            if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a and kind != "pct"
            else "-"
        )
        rows.append(
            {
                "metric": key,
                "label": label,
                "a": a,
                "b": b,
                "ratio_b_over_a": b / a
                if ratio != "-" and isinstance(a, (int, float)) and isinstance(b, (int, float))
                else None,
                "a_text": fmt_value(a, kind),
                "b_text": fmt_value(b, kind),
                "ratio_text": ratio,
            }
        )
    hardware = (columns[0].get("latency") or {}).get("hardware")
    if args.json:
        _emit_json(
            {
                "a": args.model_a,
                "b": args.model_b,
                "rows": rows,
                "hardware": hardware,
                "a_metrics": columns[0],
                "b_metrics": columns[1],
            }
        )
        return EXIT_OK
    from rich.table import Table

    table = Table(title="prunekit compare")
    table.add_column("metric")
    table.add_column(f"A: {args.model_a}", justify="right")
    table.add_column(f"B: {args.model_b}", justify="right")
    table.add_column("B / A", justify="right")
    for r in rows:
        table.add_row(str(r["label"]), str(r["a_text"]), str(r["b_text"]), str(r["ratio_text"]))
    console = _console(args)
    console.print(table)
    if hardware:
        from prunekit.core import HardwareInfo

        console.print(
            f"latency: median of {args.repeats} runs after 5 warm-up runs on {HardwareInfo(**hardware)}"
        )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``prunekit`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        sys.stderr.write("prunekit: interrupted\n")
        return 130
    except Exception as e:  # noqa: BLE001 - the one place that turns any error into one clear line
        if args.debug:
            raise
        sys.stderr.write(f"prunekit {args.command}: error: {_one_line(e)}\n")
        return EXIT_ERROR


def _one_line(e: BaseException) -> str:
    from prunekit.errors import PrunekitError

    text = " ".join(str(e).split()) or type(e).__name__
    if not isinstance(e, PrunekitError):
        text = f"{type(e).__name__}: {text}"
    return text + " (run with --debug for the traceback)" if not isinstance(e, PrunekitError) else text


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
