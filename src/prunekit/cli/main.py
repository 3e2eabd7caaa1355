"""The ``prunekit`` command line: a thin layer over the Python API.

Every command prints a rich table (or JSON with ``--json``, or nothing but errors with ``--quiet``).
Errors are one clear line on stderr and a non-zero exit; ``--debug`` shows the traceback. Commands that
write a directory build it in a temporary sibling and rename it at the end, so a failed run leaves
nothing behind that looks like a result.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

from prunekit.cli.commands import (
    EXIT_ERROR,
    EXIT_USAGE,
    accuracy_metric,
    cmd_analyze,
    cmd_compare,
    cmd_demo,
    cmd_prune,
    cmd_summary,
    flag_of,
)

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
    p.set_defaults(func=cmd_demo)

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
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser(
        "prune",
        help="prune a model by a YAML recipe or one --what step; write the pruned model, report.html and report.json",
        description=_wrap(
            "Run a pruning recipe (what, how much, criterion, schedule, fine-tuning, exclusions) on MODEL, or one "
            "step given on the command line (--what and the step's options, which are the fields of the verb's "
            "config), and write DIR: model.safetensors + prunekit-model.json (a MODEL directory for the other "
            "commands), recipe.yaml, report.json (every number) and report.html (tables and plots). DIR is written "
            "only when the whole run succeeded."
        ),
        epilog="examples:\n"
        "  prunekit prune examples.models:trained_digits_cnn --recipe examples/magnitude-90.yaml --out runs/mag90\n"
        "  prunekit prune --recipe examples/nm-2-4.yaml --out runs/nm24     # MODEL taken from the recipe\n"
        "  prunekit prune runs/mag90 --recipe examples/channels-50.yaml --out runs/mag90-ch50 --data digits\n"
        "  prunekit prune examples.models:mnist_lenet --recipe r.yaml --out runs/mnist --data mnist --data-dir ../data\n"
        "  prunekit prune examples.models:trained_digits_cnn --what weights --sparsity 0.9 --exclude fc --out runs/w90\n"
        "  prunekit prune examples.models:trained_digits_cnn --what channels --ratio 0.3 --out runs/ch30\n"
        "  prunekit prune examples.models:trained_digits_resmlp --what layers --n 2 --out runs/l2\n"
        "  prunekit prune HF_DIR --heads 'encoder.layer.0.attention.self:0,3' --out runs/heads   # --what heads",
        formatter_class=_Formatter,
    )
    p.add_argument("model", metavar="MODEL", nargs="?", help="the model (default: the recipe's 'model')")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--recipe", metavar="RECIPE.yaml", help="the recipe (see examples/*.yaml)")
    _out_args(p)
    _data_args(p, required=False)
    p.add_argument("--no-latency", action="store_true", help="skip latency measurements (faster)")
    _task_args(p)
    p.add_argument(
        "--loss",
        metavar="LOSS",
        help="the fine-tuning loss (recipe 'finetune' section): module:function, fn(model, batch) -> scalar "
        "tensor, or a task name (default: the recipe's finetune.loss, else --task). Fine-tuning trains on "
        "--data, or on the --calibration text",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="show what the recipe's pruning steps would remove (no fine-tuning, nothing written)",
    )
    p.add_argument(
        "--states",
        action="store_true",
        help="also measure the deployment states of the pruned model: pk.accelerate'd, ONNX fp32 and ONNX "
        "int8 (files exported.onnx, quantized.onnx in DIR; positional-input models only): params, non-zeros, "
        "MACs, file size, latency at batch 1 and 8, peak memory and an energy estimate each, in the report",
    )
    p.add_argument(
        "--save-pretrained",
        metavar="HF_DIR",
        help="also write a Hugging Face from_pretrained directory (config, weights, tokenizer files)",
    )
    _common(p)
    step_options(p, how)
    p.set_defaults(func=cmd_prune, parser=p)

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
    _data_args(p, required=False)
    _task_args(p)
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
    p.set_defaults(func=cmd_analyze)

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
    p.set_defaults(func=cmd_compare)
    return parser


#: a step option whose values are looked up in a criterion registry: step kind -> granularity
_CRITERION_REGISTRY = {"weights": "weight", "channels": "channel"}


def step_options(p: argparse.ArgumentParser, how: argparse._MutuallyExclusiveGroup) -> None:
    """``--what KIND`` and one option per field of every step kind's config, grouped by kind.

    The options are the recipe step's keys (:meth:`prunekit.recipes.config_steps.ConfigStep.keys`), added with
    :func:`config_option`: help is the field's doc, choices come from ``Literal`` types and the criterion
    registry. An option shared by several kinds (``--sparsity``, ``--criterion``) is listed once, under the
    first kind, and named in the later kinds' group headers; its choices are the union of the kinds'.
    """
    import dataclasses
    import typing

    from prunekit.core import criterion_registry, option_help
    from prunekit.recipes import STEP_KINDS

    how.add_argument(
        "--what",
        choices=list(STEP_KINDS),
        help="prune without a recipe: one step of this kind, with the options below (its config's fields)",
    )
    owners: dict[str, list[str]] = {}
    for what, kind in STEP_KINDS.items():
        for name in kind.keys():
            owners.setdefault(name, []).append(what)
    defaults = {
        w: {f.name: f.default for f in dataclasses.fields(k.config_cls)} for w, k in STEP_KINDS.items()
    }
    done: set[str] = set()
    for what, kind in STEP_KINDS.items():
        cls = kind.config_cls
        shared = [n for n in kind.keys() if n in done]
        group = p.add_argument_group(
            f"--what {what} ({cls.__name__}; the keys of a '{what}' recipe step)",
            f"also takes {', '.join(flag_of(n) for n in shared)} (listed above)" if shared else None,
        )
        for name in kind.keys():
            if name in done:
                continue
            done.add(name)
            kinds = owners[name]
            choices: list[Any] = []
            for k in kinds:
                k_hint = typing.get_type_hints(STEP_KINDS[k].config_cls).get(name)
                if name == "criterion" and k in _CRITERION_REGISTRY:
                    choices += criterion_registry(_CRITERION_REGISTRY[k]).names()
                elif typing.get_origin(k_hint) is typing.Literal:
                    choices += typing.get_args(k_hint)
                else:
                    choices = []
                    break
            doc = " ".join(option_help(cls).get(name, "").split())
            shown = {k: STEP_KINDS[k].default_notes.get(name, defaults[k].get(name)) for k in kinds}
            shown = {k: v for k, v in shown.items() if v is not None and v is not dataclasses.MISSING}
            if any(name in STEP_KINDS[k].required for k in kinds):
                doc += " (required)"
            elif len(set(map(repr, shown.values()))) == 1 and len(shown) == len(kinds):
                doc += f" (default: {next(iter(shown.values()))})"
            elif shown:
                doc += f" (default: {'; '.join(f'{k}: {v}' for k, v in shown.items())})"
            if len(kinds) > 1:
                doc += f" [{', '.join(kinds)}]"
            config_option(
                group,
                flag_of(name),
                cls,
                name,
                help=doc.replace("%", "%%"),
                type=_OptionValue(kind, name),
                choices=list(dict.fromkeys(choices)) or None,
                metavar=None if choices else name.upper(),
            )


class _OptionValue:
    """argparse ``type=``: one option value read as its recipe key's YAML value (a list: comma-separated)."""

    def __init__(self, kind: Any, name: str) -> None:
        self.kind, self.name = kind, name
        self.__name__ = "value"  # argparse names it in "invalid value" errors

    def __call__(self, text: str) -> Any:
        from prunekit.errors import ConfigError

        try:
            return self.kind.parse_option(self.name, text)
        except ConfigError as e:  # argparse shows this text (a usage error, exit 2)
            raise argparse.ArgumentTypeError(str(e)) from None


def _task_args(p: argparse.ArgumentParser) -> None:
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


accuracy_metric.__name__ = "accuracy"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``prunekit`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    func: Callable[[argparse.Namespace], int] = args.func
    if args.command == "prune" and not args.recipe and not args.what and not getattr(args, "heads", None):
        args.parser.error(
            "give --recipe RECIPE.yaml, or --what KIND and the step's options (see --help), or --heads SPEC"
        )
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
