"""The `prunelab` command: one module per subcommand, each parse -> typed config -> one API call -> print / JSON.

Bad input gives one line on stderr and exit code 2, never a traceback. Parsing imports no torch: the options are
built from the typed configs (`prunelab.config`) and the registries' names, and each subcommand imports the API
only when it runs, so `prunelab --help` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import PackageNotFoundError, version

from prunelab.cli import bench, calibrate, evaluate, export, generate, methods, prune, report, sweep, train_aware
from prunelab.cli._base import Formatter, Parser
from prunelab.errors import PrunelabError

SUBCOMMANDS = (prune, evaluate, bench, export, calibrate, generate, train_aware, sweep, report, methods)


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


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version (0) and bad flags (2): a return code, like every other outcome
        return e.code if isinstance(e.code, int) else 0
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub", "lm_eval"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import transformers

    transformers.utils.logging.disable_progress_bar()  # our own progress bars say what is going on
    transformers.utils.logging.set_verbosity_error()
    try:
        return int(args.run(args))
    except PrunelabError as e:
        sys.stderr.write(f"prunelab: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("prunelab: interrupted\n")
        return 130


__all__ = ["build_parser", "main"]
