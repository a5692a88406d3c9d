"""The `prunelab` command: parse, build a config, make one API call, print and write JSON.

Bad input gives one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, NoReturn

from prunelab.errors import PrunelabError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"prunelab: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(2)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="HF folder, hub id or .gguf (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--dtype", default="auto", help="auto (float32 on CPU), float32, float16, bfloat16")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--json", dest="json_path", default=None, help="write the machine-readable report here")


def _eval_args(p: argparse.ArgumentParser, default_windows: int | None) -> None:
    p.add_argument("--seqlen", type=int, default=512, help="tokens per evaluation window (default 512)")
    p.add_argument(
        "--max-windows",
        type=int,
        default=default_windows,
        help=f"cap on windows per source (default {default_windows})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="prunelab", description="Prune causal LMs and measure what it buys.")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and the result")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("prune", help="prune a model, evaluate before/after, save it")
    _model_args(p)
    p.add_argument("--method", default="wanda", help="see `prunelab methods` (default wanda)")
    p.add_argument("--sparsity", type=float, default=None, help="fraction of weights removed (default 0.5)")
    p.add_argument("--pattern", default="unstructured", help="unstructured or N:M, e.g. 2:4 (N kept of every M)")
    p.add_argument("--calib", default="shakespeare", help="calibration source (default shakespeare, offline)")
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--calib-seqlen", type=int, default=512)
    p.add_argument(
        "--calib-batch-size", type=int, default=None, help="windows per forward (default 1 on CPU, 8 on GPU)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allocation", default="uniform", choices=["uniform", "owl"], help="per-block sparsity")
    p.add_argument("--owl-lambda", type=float, default=0.08, help="OWL: max deviation from the target")
    p.add_argument("--owl-m", type=float, default=5.0, help="OWL: outlier = score above M x block mean")
    p.add_argument("--targets", nargs="+", default=None, help="layer names or re:REGEX to prune (default all)")
    p.add_argument("--ignore", nargs="+", default=[], help="layer names or re:REGEX to leave dense")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="method option, repeatable")
    p.add_argument("--ppl", nargs="*", default=["shakespeare"], help="perplexity sources (default shakespeare)")
    p.add_argument("--no-eval-before", action="store_true", help="skip the dense perplexity")
    p.add_argument("--output", default=None, help="folder for the pruned model (HF format + prunelab.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    _eval_args(p, 16)

    p = sub.add_parser("eval", help="perplexity of a model on one or more sources")
    _model_args(p)
    p.add_argument("--ppl", nargs="+", default=["shakespeare"], help="sources: wikitext2[:PATH], shakespeare, FILE")
    p.add_argument("--batch-size", type=int, default=None)
    _eval_args(p, None)

    sub.add_parser("methods", help="list the registered pruning methods")
    return parser


def _parse_options(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PrunelabError(f"--option expects KEY=VALUE, got '{item}'")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _print_prune(report: dict[str, Any]) -> None:
    before, after = report.get("perplexity_before", {}), report.get("perplexity", {})
    print(
        f"{report['method']} {report['pattern']} sparsity {report['sparsity']:.3g}: "
        f"achieved {report['achieved_sparsity']:.4f} of {report['prunable_params']:,} prunable weights "
        f"in {report['prune_seconds']:.1f} s, peak RSS {report['peak_rss_mb']:.0f} MiB"
    )
    for source, value in after.items():
        b = before.get(source)
        change = f"{b:.3f} -> {value:.3f} ({(value / b - 1) * 100:+.1f}%)" if b else f"{value:.3f}"
        print(f"perplexity [{source}]: {change}")
    if report.get("output"):
        print(f"saved to {report['output']}")


def _run(args: argparse.Namespace) -> int:
    from prunelab import api
    from prunelab.config import PruneConfig, build
    from prunelab.pruning import METHODS

    if args.command == "methods":
        for name, cls in METHODS.items():
            print(f"{name:12s} {cls.summary}")
        return 0
    if args.command == "prune":
        sparsity = args.sparsity
        if sparsity is None and args.pattern == "unstructured":
            sparsity = 0.5
        cfg = build(
            PruneConfig,
            {
                "method": args.method,
                "sparsity": sparsity,
                "pattern": args.pattern,
                "targets": args.targets,
                "ignore": args.ignore,
                "calib": args.calib,
                "calib_samples": args.calib_samples,
                "calib_seqlen": args.calib_seqlen,
                "calib_batch_size": args.calib_batch_size,
                "seed": args.seed,
                "allocation": args.allocation,
                "owl_lambda": args.owl_lambda,
                "owl_m": args.owl_m,
                "options": _parse_options(args.option),
            },
            "prune settings",
        )
        report = api.prune_job(
            cfg,
            model=args.model,
            output=args.output,
            overwrite=args.overwrite,
            ppl=args.ppl,
            seqlen=args.seqlen,
            max_windows=args.max_windows,
            evaluate_before=not args.no_eval_before,
            dtype=args.dtype,
            device=args.device,
            json_path=args.json_path,
        )
        _print_prune(report)
        return 0
    if args.command == "eval":
        report = api.eval_job(
            model=args.model,
            ppl=args.ppl,
            seqlen=args.seqlen,
            max_windows=args.max_windows,
            batch_size=args.batch_size,
            dtype=args.dtype,
            device=args.device,
            json_path=args.json_path,
        )
        for source, value in report["perplexity"].items():
            ev = report["perplexity_eval"][source]
            print(
                f"perplexity [{source}]: {value:.3f} ({ev['windows']} x {ev['seqlen']} tokens, {ev['seconds']:.1f} s)"
            )
        return 0
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import transformers

    transformers.utils.logging.disable_progress_bar()  # our own progress bars say what is going on
    transformers.utils.logging.set_verbosity_error()
    try:
        return _run(args)
    except PrunelabError as e:
        sys.stderr.write(f"prunelab: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("prunelab: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
