"""The subcommands of the ``prunekit`` command line (demo, summary, prune, analyze, compare): each takes the parsed arguments and returns the exit code."""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


def make_console(args: argparse.Namespace, stderr: bool = False) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 150  # piped output: do not squeeze tables into 80 columns
    return Console(stderr=stderr, quiet=bool(args.quiet and not stderr), width=width)


def emit_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=json_default) + "\n")


def json_default(obj: Any) -> Any:
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(obj)
    return str(obj)


def cmd_demo(args: argparse.Namespace) -> int:
    import tempfile

    from prunekit.cli.demo import DemoConfig, demo_table, run_demo

    out = None if args.no_report else (args.out or str(Path(tempfile.gettempdir()) / "prunekit-demo"))
    show_progress = not (args.quiet or args.json) and sys.stderr.isatty()
    result = run_demo(DemoConfig(seed=args.seed), progress=show_progress, out_dir=out)
    if args.json:
        emit_json(result.to_dict())
        return EXIT_OK
    console = make_console(args)
    console.print(demo_table(result))
    for note in result.notes:
        console.print(f"note: {note}")
    console.print(f"{result.seconds:.1f} s on {result.hardware}")
    if result.report_dir:
        console.print(f"report: {result.report_dir}/report.html")
    return EXIT_OK


def parse_shape(text: str | None) -> Any:
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


def load_model_spec(
    spec: str, input_shape: str | None = None, trust_code: bool = False, *, log: bool = False
) -> Any:
    from dataclasses import replace

    from prunekit.recipes import load_model

    with log_to_stderr(log):
        loaded = load_model(spec, trust_code=trust_code)
    shape = parse_shape(input_shape)
    if shape is not None:
        loaded = replace(loaded, example_inputs=shape)
    return loaded


def load_data_arg(args: argparse.Namespace, seed: int = 0) -> Any:
    from prunekit.recipes import load_data

    if not getattr(args, "data", None):
        return None
    return load_data(args.data, data_dir=args.data_dir, batch_size=args.batch_size, seed=seed)


def cmd_summary(args: argparse.Namespace) -> int:
    from prunekit.core import count_macs, count_nonzeros, count_params, measure_latency
    from prunekit.io import file_size
    from prunekit.recipes import layer_rows
    from prunekit.weights import sparsity

    loaded = load_model_spec(args.model, args.input_shape, args.trust_code, log=not (args.quiet or args.json))
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
        emit_json(info)
        return EXIT_OK
    from rich.table import Table

    from prunekit.report import fmt_value

    console = make_console(args)
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


def cmd_prune(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from prunekit.core import atomic_dir
    from prunekit.errors import ConfigError, PrunekitError
    from prunekit.recipes import Recipe, save_model_dir, write_pretrained
    from prunekit.report import prune_report, rich_before_after, rich_layers, rich_states, write_report

    if not args.what and args.recipe is None and getattr(args, "heads", None) is not None:
        args.what = "heads"  # --heads alone is the one-step 'heads' recipe
    if args.what:  # one step from the command line: its options are the fields of the verb's config
        if not args.model:
            raise ConfigError(
                f"--what {args.what}: give MODEL (a directory, a Hugging Face directory or module:factory)"
            )
        recipe = Recipe(steps=(step_from_args(args),))
    else:
        recipe = Recipe.from_yaml(args.recipe)
    spec = args.model or recipe.model
    if not spec:
        raise ConfigError("no MODEL: give it on the command line or as 'model:' in the recipe")
    recipe, batch_loss = finetune_loss_arg(args, recipe)
    if args.dry_run:  # the model is loaded for this run only: pruning it changes nothing on disk
        recipe, batch_loss = (
            replace(recipe, finetune=None, measure=replace(recipe.measure, latency=False)),
            None,
        )
        if recipe.schedule.kind == "iterative":
            recipe = replace(recipe, schedule=type(recipe.schedule)())  # one shot to the final amount
    else:
        check_out(args.out, args.overwrite)
        if args.save_pretrained:
            check_out(args.save_pretrained, args.overwrite)
    if args.no_latency:
        recipe = replace(recipe, measure=replace(recipe.measure, latency=False))
    if not args.model and not args.trust_code and not os.path.isdir(spec):
        raise ConfigError(
            f"the recipe {args.recipe} names Python code for its model ({spec!r}); give MODEL on the command "
            "line, or pass --trust-code if you trust the recipe"
        )
    loaded = load_model_spec(spec, trust_code=args.trust_code, log=not (args.quiet or args.json))
    data = load_data_arg(args, recipe.seed)
    loss_fn, data = task_for(args, loaded, data)
    show_progress = not (args.quiet or args.json) and sys.stderr.isatty()
    dense = copy.deepcopy(loaded.model) if args.states and not args.dry_run else None
    try:
        result = recipe.run(
            loaded.model, loaded.example_inputs, data=data, progress=show_progress, loss_fn=loss_fn,
            trust_code=args.trust_code, batch_loss=batch_loss,
        )  # fmt: skip
    except PrunekitError as e:
        prefix = "recipe: prune[0] (heads): "  # a heads step from --heads has no recipe line to name
        if getattr(args, "heads", None) and str(e).startswith(prefix):
            raise type(e)("--heads: " + str(e)[len(prefix) :]) from None
        raise
    report = prune_report(result, model_source={"spec": spec, **loaded.source})
    if args.dry_run:
        if args.json:
            emit_json({"dry_run": True, **report})
        else:
            console = make_console(args)
            console.print(rich_before_after(report))
            console.print(rich_layers(report["layers"]))
            console.print(f"dry run: nothing written ({result.seconds:.1f} s)")
        return EXIT_OK
    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        if dense is not None:
            if not (args.quiet or args.json):
                print("measuring the deployment states (accelerate, ONNX, int8) ...", file=sys.stderr)
            from prunekit.accel import deployment_states

            # accelerate checks the accelerated model against the pruned one; the ONNX files are not evaluated
            after = (report.get("after") or {}).get("accuracy")
            accuracy = {"dense": (report.get("before") or {}).get("accuracy"), "pruned": after, "accelerated": after}
            report["states"] = deployment_states(dense, result.model, result.example_inputs, tmp, accuracy=accuracy,
                                                 threads=recipe.measure.threads)  # fmt: skip
        save_model_dir(replace(loaded, example_inputs=result.example_inputs), tmp, result.model)
        (tmp / "recipe.yaml").write_text(recipe.to_yaml())
        write_report(report, tmp)
        if args.save_pretrained:  # inside: a model its config cannot express leaves neither directory
            check_out(args.save_pretrained, args.overwrite)
            with atomic_dir(args.save_pretrained, overwrite=args.overwrite) as hf_tmp:
                write_pretrained(loaded, result.model, hf_tmp)
    if args.json:
        emit_json({"out": args.out, **report})
        return EXIT_OK
    console = make_console(args)
    console.print(rich_before_after(report))
    console.print(rich_layers(report["layers"]))
    if dense is not None:
        console.print(rich_states(report["states"]))
    console.print(f"wrote {args.out}/report.html, report.json, model.safetensors ({result.seconds:.1f} s)")
    return EXIT_OK


def step_from_args(args: argparse.Namespace) -> Any:
    """The one recipe step that ``--what`` and the step options describe.

    Raises:
        ConfigError: an option that is not one of the kind's, or a value its config refuses (named by flag).
    """
    from prunekit.errors import ConfigError
    from prunekit.recipes import STEP_KINDS

    kind = STEP_KINDS[args.what]
    owners = {
        n: [w for w, k in STEP_KINDS.items() if n in k.keys()] for k in STEP_KINDS.values() for n in k.keys()
    }
    values = {n: getattr(args, n) for n in owners if getattr(args, n, None) is not None}
    foreign = [n for n in values if n not in kind.keys()]
    if foreign:
        raise ConfigError(
            "; ".join(f"{flag_of(n)} is not an option of --what {args.what} (it is one of --what "
                      f"{', '.join(owners[n])})" for n in foreign)
        )  # fmt: skip
    return kind.from_mapping(values, label=lambda key: flag_of(key) if key else f"--what {args.what}")


def flag_of(name: str) -> str:
    """The command-line flag of a config field (``round_to`` -> ``--round-to``)."""
    return "--" + name.replace("_", "-")


def finetune_loss_arg(args: argparse.Namespace, recipe: Any) -> tuple[Any, Any]:
    """``--loss``: a task name replaces the recipe's ``finetune.loss``; ``module:function`` is imported."""
    from dataclasses import replace

    from prunekit.errors import ConfigError
    from prunekit.recipes import check_loss_name, import_batch_loss

    if not getattr(args, "loss", None):
        return recipe, None
    if recipe.finetune is None:
        raise ConfigError(
            f"--loss is the fine-tuning loss, but the recipe {args.recipe or ''} has no 'finetune' section"
        )
    try:
        check_loss_name(args.loss)
    except ValueError as e:
        raise ConfigError(f"--loss: {e}") from None
    if ":" in args.loss:  # named on the command line by the user: no --trust-code needed
        return recipe, import_batch_loss(args.loss)
    return replace(recipe, finetune=replace(recipe.finetune, loss=args.loss)), None


def task_for(args: argparse.Namespace, loaded: Any, data: Any) -> tuple[Any, Any]:
    """The recipe's loss for ``--task`` and, with ``--calibration``, the text file's batches as data."""

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


def check_out(out: str, overwrite: bool) -> None:
    from prunekit.core import check_output_dir

    check_output_dir(out, overwrite=overwrite)  # before the run, so a bad --out fails fast


def accuracy_metric(outputs: Any, targets: Any) -> float:
    logits = getattr(outputs, "logits", outputs)
    return float((logits.argmax(dim=-1) == targets).float().mean())


def cmd_analyze(args: argparse.Namespace) -> int:
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
    check_out(args.out, args.overwrite)
    loaded = load_model_spec(args.model, trust_code=args.trust_code)
    data = load_data_arg(args)
    if data is None and not args.calibration:
        raise ConfigError(
            "analyze needs data: --data DATA (labelled batches) or --calibration FILE.txt (text)"
        )
    loss_fn, data = task_for(args, loaded, data)  # --task / --calibration: encoders and LLMs too
    eval_batches = data.test if hasattr(data, "test") else data[1]
    if hasattr(data, "test"):
        check_fits(loaded.model, data, loss_fn)
    model = loaded.model
    show_progress = not (args.quiet or args.json) and sys.stderr.isatty()
    result = sensitivity(
        model,
        eval_batches,
        loss_fn or torch.nn.functional.cross_entropy,
        ratios=ratios,
        criterion=args.criterion,
        granularity=args.granularity,
        metric=accuracy_metric if loss_fn is None else None,
        max_batches=args.max_batches,
        progress=show_progress,
    )
    sens = result.to_dict()
    allocation = None
    if args.target is not None:
        allocation = allocate(result, target=args.target).to_dict()
    before = measure_model(model, loaded.example_inputs, eval_batches, latency=False, loss_fn=loss_fn)
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
        emit_json({"out": args.out, **report})
        return EXIT_OK
    console = make_console(args)
    console.print(rich_before_after(report))
    console.print(sensitivity_table(sens, allocation))
    console.print(f"wrote {args.out}/report.html, report.json, sensitivity.csv")
    return EXIT_OK


def sensitivity_table(sens: dict[str, Any], allocation: dict[str, Any] | None) -> Any:
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


def cmd_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from prunekit.recipes import measure_model
    from prunekit.report import flatten_metrics, fmt_value, load_report

    data = load_data_arg(args)
    columns = []
    for spec in (args.model_a, args.model_b):
        loaded = load_model_spec(spec, trust_code=args.trust_code)
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
        emit_json(
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
    console = make_console(args)
    console.print(table)
    if hardware:
        from prunekit.core import HardwareInfo

        console.print(
            f"latency: median of {args.repeats} runs after 5 warm-up runs on {HardwareInfo(**hardware)}"
        )
    return EXIT_OK


__all__ = [
    "accuracy_metric",
    "check_out",
    "cmd_analyze",
    "cmd_compare",
    "cmd_demo",
    "cmd_prune",
    "cmd_summary",
    "default_text_task",
    "emit_json",
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_USAGE",
    "finetune_loss_arg",
    "flag_of",
    "load_data_arg",
    "load_model_spec",
    "log_to_stderr",
    "make_console",
    "parse_shape",
    "step_from_args",
    "task_for",
]
