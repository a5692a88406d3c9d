"""The `prunelab` command: one module per subcommand, each parse -> typed config -> one API call -> print / JSON.

Bad input gives one line on stderr and exit code 2, never a traceback. Parsing imports no torch: the options are
built from the typed configs (`prunelab.config`) and the registries' names, and each subcommand imports the API
only when it runs, so `prunelab --help` is instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib.metadata import PackageNotFoundError, version

from prunelab import _util
from prunelab.cli import (
    bench,
    calibrate,
    completion,
    evaluate,
    export,
    generate,
    methods,
    prune,
    recover,
    report,
    sweep,
    train_aware,
)
from prunelab.cli._base import Formatter, Parser
from prunelab.errors import PrunelabError

SUBCOMMANDS = (
    prune,
    recover,
    evaluate,
    bench,
    export,
    calibrate,
    generate,
    train_aware,
    sweep,
    report,
    methods,
    completion,
)


def _version() -> str:
    try:
        return version("prunelab")
    except PackageNotFoundError:  # pragma: no cover - a source tree without install
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    description = "Prune causal LMs and measure what it buys."
    parser = Parser(prog="prunelab", description=description, formatter_class=Formatter)
    parser.add_argument("--version", action="version", version=f"prunelab {_version()}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and the result")

    class _Sub(Parser):  # every subcommand's help shows its defaults too
        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs.setdefault("formatter_class", Formatter)
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Sub)
    for module in SUBCOMMANDS:
        module.register(sub)
    return parser


# output-file flags of every subcommand that has them: checked before the job, not after an hour of work
OUTPUT_FLAGS = (("json_path", "--json"), ("html", "--html"), ("plot", "--plot"))


def check_outputs(args: argparse.Namespace) -> None:
    for dest, flag in OUTPUT_FLAGS:
        _util.check_writable(getattr(args, dest, None), "file", flag)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version (0) and bad flags (2): a return code, like every other outcome
        return e.code if isinstance(e.code, int) else 0
    previous = _util.install_signal_handlers()  # SIGTERM ends the job like Ctrl-C: temp paths removed, exit 143
    try:
        return _run(args)
    except PrunelabError as e:
        sys.stderr.write(f"prunelab: error: {e}\n")
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or _util.Terminated for SIGTERM
        sys.stderr.write(_util.interrupt_message(e) + "\n")
        return _util.interrupt_exit_code(e)
    finally:  # main() called in-process (tests, a notebook): its caller's handlers come back
        _util.restore_signal_handlers(previous)


def _run(args: argparse.Namespace) -> int:
    _util.set_quiet(args.quiet)
    if not (sys.stderr is not None and sys.stderr.isatty()):
        # a log file or a pipe: no bars from the libraries either (tqdm reads this when first imported)
        os.environ.setdefault("TQDM_DISABLE", "1")
    check_outputs(args)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub", "lm_eval"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if getattr(args, "light", False):  # e.g. `completion`: no model, no torch
        return int(args.run(args))
    import transformers

    transformers.utils.logging.disable_progress_bar()  # our own progress bars say what is going on
    transformers.utils.logging.set_verbosity_error()
    return int(args.run(args))


__all__ = ["build_parser", "main"]
