"""The ``prunekit`` command line: a thin layer over the Python API.

Every command prints a rich table (or JSON with ``--json``, or nothing but errors with ``--quiet``).
Errors are one clear line on stderr and a non-zero exit; ``--debug`` shows the traceback. Commands that
write a directory build it in a temporary sibling and rename it at the end, so a failed run leaves
nothing behind that looks like a result.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

_EPILOG = """\
examples:
  prunekit demo                                   train, prune and fine-tune a small CNN (< 1 min)
  prunekit summary examples.models:digits_cnn     params, non-zeros, MACs, per-layer table
  prunekit prune examples.models:digits_cnn --recipe examples/magnitude-90.yaml --out runs/mag90
  prunekit analyze runs/mag90 --data digits --out runs/mag90-sensitivity
  prunekit compare runs/dense runs/mag90          sizes, MACs, latency, accuracy side by side

MODEL is a directory written by prunekit, a Hugging Face model directory, or module:factory
(a Python import path, or path/to/file.py:factory, of a function returning a model or
(model, example_inputs)). DATA is module:factory returning a DataLoader (or a (train, test) pair),
or a built-in name: digits, mnist, fashion-mnist (read from --data-dir or $PRUNEKIT_DATA).
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def _common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument(
        "--json", action="store_true", help="print machine-readable JSON on stdout instead of tables"
    )
    group.add_argument(
        "--quiet", "-q", action="store_true", help="print nothing but errors (files are still written)"
    )
    group.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``prunekit`` (every sub-command with examples in its help)."""
    parser = argparse.ArgumentParser(
        prog="prunekit",
        description="Prune PyTorch models so they really get smaller and faster.",
        epilog=_EPILOG,
        formatter_class=_Formatter,
    )
    from prunekit import __version__

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
    p.add_argument("--out", metavar="DIR", help="write report.html and report.json into DIR")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    _common(p)
    p.set_defaults(func=_cmd_demo)
    return parser


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
    from prunekit.demo import DemoConfig, demo_table, run_demo

    show_progress = not (args.quiet or args.json) and sys.stderr.isatty()
    result = run_demo(DemoConfig(seed=args.seed), progress=show_progress, out_dir=args.out)
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
