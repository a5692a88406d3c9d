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
    structured = p.add_argument_group("structured method (shortcuts for its --option values)")
    structured.add_argument("--target", default=None, help="mlp, heads, layers or mlp+heads (default mlp)")
    structured.add_argument("--importance", default=None, help="magnitude, activation or block-influence")
    structured.add_argument("--compensate", action="store_true", default=None, help="FLAP bias compensation")
    structured.add_argument("--recover-steps", type=int, default=None, help="LoRA recovery steps (needs peft)")
    p.add_argument("--ppl", nargs="*", default=None, help="perplexity sources (default shakespeare; none if streaming)")
    p.add_argument("--no-eval-before", action="store_true", help="skip the dense perplexity")
    p.add_argument("--output", default=None, help="folder for the pruned model (HF format + prunelab.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument(
        "--streaming",
        action="store_true",
        help="load, prune and write one block at a time, for models larger than memory (local safetensors folder)",
    )
    p.add_argument("--device-map", default=None, help="auto: spread the model over the GPUs (accelerate)")
    _eval_args(p, 16)

    p = sub.add_parser("eval", help="perplexity and zero-shot accuracy of a model")
    _model_args(p)
    p.add_argument(
        "--ppl",
        nargs="+",
        default=None,
        help="sources: wikitext2[:PATH], shakespeare, FILE (default shakespeare; with --tasks, only those named)",
    )
    p.add_argument(
        "--tasks",
        nargs="+",
        default=None,
        help="zero-shot tasks, comma- or space-separated: lm-evaluation-harness names, or files of --task-data",
    )
    p.add_argument("--task-data", default=None, help="offline: folder of NAME.jsonl task files ('--tasks all' = each)")
    p.add_argument("--limit", type=int, default=None, help="zero-shot: first N examples of each task")
    p.add_argument("--batch-size", type=int, default=None, help="perplexity windows / zero-shot requests per forward")
    p.add_argument("--device-map", default=None, help="auto: spread the model over the GPUs (accelerate)")
    _eval_args(p, None)

    p = sub.add_parser("bench", help="measure latency, throughput, memory, size, energy and carbon of a model")
    _model_args(p)
    p.add_argument("--prompt-len", type=int, nargs="+", default=[128, 512], help="prefill lengths (default 128 512)")
    p.add_argument("--gen-len", type=int, default=64, help="tokens generated per decode run (default 64)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="throughput batch sizes (default 1 8)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--energy", default="auto", help="auto, rapl, nvml, estimate or off (default auto)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--country", default=None, help="ISO 3166-1 alpha-3 code for grid carbon intensity (WLD)")
    where.add_argument("--grid-intensity", type=float, default=None, help="gCO2eq per kWh, your own number")
    p.add_argument("--cpu-watts", type=float, default=4.0, help="estimate only: watts per logical CPU (default 4)")
    p.add_argument("--sparse-kernels", action="store_true", help="run 2:4 layers on sparse GPU kernels (sm80+)")
    p.add_argument("--no-size", action="store_true", help="skip writing checkpoints to measure size on disk")

    _train_aware_parser(sub)
    _sweep_parsers(sub)
    sub.add_parser("methods", help="list the registered pruning methods")
    return parser


_TRAIN_AWARE_OVERRIDES: dict[str, type] = {
    **dict.fromkeys(["epochs", "steps_per_epoch", "batch_size", "seqlen", "last_k", "eval_windows"], int),
    **{"train_chars": int, "seed": int, "lr": float, "threads": int},
}


def _train_aware_parser(sub: Any) -> None:
    p = sub.add_parser("train-aware", help="reproduce training-aware pruning: train, track, prune 10..90%%, evaluate")
    p.add_argument("--preset", default="tiny", help="tiny (minutes), small (~0.8M params), paper (10.7M params)")
    p.add_argument("--json", dest="json_path", default=None, help="write the loss-vs-compression table here")
    p.add_argument("--plot", default=None, help="loss-vs-compression PNG (needs matplotlib: prunelab[plot])")
    p.add_argument("--corpus", default=None, help="shakespeare (default) or wikitext2:PATH / a .txt file")
    for key, kind in _TRAIN_AWARE_OVERRIDES.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=kind, default=None, help="override the preset")
    p.add_argument("--weighting", default=None, help="epoch weights of the average: sqrt (default), linear, uniform")
    p.add_argument("--lr-schedule", default=None, help="cosine (default) or constant")


def _train_aware(args: argparse.Namespace) -> int:
    from prunelab import train_aware

    keys = [*_TRAIN_AWARE_OVERRIDES, "corpus", "weighting", "lr_schedule"]
    overrides = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    cfg = train_aware.make_config(args.preset, **overrides)
    report = train_aware.run(cfg, args.preset, json_path=args.json_path, plot_path=args.plot)
    labels = list(train_aware.METHODS)
    print(
        f"{report['model']['params']:,} parameters, trained {report['training']['seconds']:.0f} s; "
        f"validation loss (perplexity) by compression of the decoder linear weights:"
    )
    print("compression  " + "  ".join(f"{label:>20s}" for label in labels))
    rows = {(r["compression"], r["method"]): r for r in report["levels"]}
    for c in cfg.levels:
        cells = [rows[(c, label)] for label in labels]
        print(f"{c:11.0%}  " + "  ".join(f"{r['val_loss']:10.4f} ({r['perplexity']:7.3f})" for r in cells))
    for r in report["threshold_sweep"]:
        print(f"PruneRate {r['prune_rate']:<5g} -> sparsity {r['achieved_sparsity']:.3f}, val loss {r['val_loss']:.4f}")
    print(
        f"wall time {report['wall_seconds']:.0f} s"
        + (f"; json {args.json_path}" if args.json_path else "")
        + (f"; plot {report['plot']}" if report.get("plot") else "")
    )
    return 0


def _sweep_parsers(sub: Any) -> None:
    p = sub.add_parser("sweep", help="run (or resume) a grid of methods x sparsities x patterns; see docs/sweep.md")
    p.add_argument("config", help="sweep YAML (see examples/sweep-quick.yaml)")
    p.add_argument("--out", required=True, help="sweep folder: results.sqlite, results.csv, report.html")
    p.add_argument("--executor", default="local", choices=["local", "ray"], help="local (in order) or ray")
    p.add_argument("--ray-address", default=None, help="Ray cluster to join (default: start a local instance)")
    p.add_argument("--num-cpus", type=float, default=1.0, help="ray: CPUs per point (default 1)")
    p.add_argument("--num-gpus", type=float, default=0.0, help="ray: GPUs per point (default 0)")
    p.add_argument("--json", dest="json_path", default=None, help="write the outcome and report summary here")
    p = sub.add_parser("report", help="Pareto frontier, recommendation and HTML report of a sweep folder")
    p.add_argument("sweep_dir", help="a folder written by `prunelab sweep`")
    p.add_argument("--html", default=None, help="HTML file to write (default SWEEP_DIR/report.html)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--max-ppl-increase", type=float, default=None, help="relative budget, e.g. 0.10 (default)")
    budget.add_argument("--min-accuracy", type=float, default=None, help="minimum mean zero-shot accuracy, e.g. 0.45")
    p.add_argument("--cost", default=None, help="cost to minimise: compact_size_mb (default), decode_tokens_per_s, ...")
    p.add_argument("--json", dest="json_path", default=None, help="write frontier, recommendation and points here")


def _sweep_or_report(args: argparse.Namespace) -> int:
    from prunelab import api

    if args.command == "sweep":
        result = api.sweep_job(args.config, args.out, args.executor, args.ray_address, args.num_cpus, args.num_gpus)
        outcome = result["outcome"]
        print(
            f"sweep {outcome['folder']}: {outcome['ran']} points run, {outcome['already_done']} already done, "
            f"{len(outcome['failed'])} failed, of {outcome['total']} ({outcome['seconds']:.0f} s)"
        )
        for label, error in outcome["failed"]:
            print(f"failed: {label}: {error}")
        report = result.get("report")
        if args.json_path:
            from prunelab._util import write_json_atomic

            write_json_atomic(args.json_path, {k: v for k, v in result.items() if k != "markdown"})
    else:
        report = api.report_job(
            args.sweep_dir, args.html, args.max_ppl_increase, args.min_accuracy, args.cost, args.json_path
        )
        result, outcome = {}, {"failed": []}
    if report:
        print(report["markdown"])
        if report.get("html"):
            print(f"report: {report['html']}")
        elif report.get("html_skipped"):
            print(f"no HTML report: {report['html_skipped']}")
    elif result.get("report_error"):
        print(f"no report: {result['report_error']}")
    return 1 if outcome["failed"] else 0


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


def _prune_options(args: argparse.Namespace) -> dict[str, Any]:
    """--option values plus the structured shortcuts, which only that method accepts."""
    options = _parse_options(args.option)
    shortcuts = {
        k: v
        for k, v in (
            ("target", args.target),
            ("importance", args.importance),
            ("compensate", args.compensate),
            ("recover_steps", args.recover_steps),
        )
        if v is not None
    }
    if shortcuts and args.method != "structured":
        flags = ", ".join("--" + k.replace("_", "-") for k in shortcuts)
        raise PrunelabError(f"{flags} only apply to --method structured (got --method {args.method})")
    return {**options, **shortcuts}


def _print_prune(report: dict[str, Any]) -> None:
    before, after = report.get("perplexity_before", {}), report.get("perplexity", {})
    if "params_before" in report:  # structured: units removed, not weights zeroed
        print(
            f"{report['method']} {report['pattern']} sparsity {report['sparsity']:.3g}: removed "
            f"{report['achieved_reduction']:.4f} of {report['block_params_before']:,} decoder-block params, "
            f"params {report['params_before']:,} -> {report['params_after']:,}, "
            f"FLOPs/token x{report['flops_ratio']:.3f} in {report['prune_seconds']:.1f} s, "
            f"peak RSS {report['peak_rss_mb']:.0f} MiB"
        )
    else:
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


def _print_bench(r: dict[str, Any]) -> None:
    lat, mem, size, energy, carbon, hw = (r[k] for k in ("latency", "memory", "size", "energy", "carbon", "hardware"))
    print(f"{r['model']} ({hw['dtype']}, {hw['device']}, {hw['torch_threads']} threads, {hw['cpu']})")
    for length, st in lat["prefill_ms"].items():
        cpu = lat["prefill_cpu_ms"][length]["median"]
        print(
            f"prefill {length:>5} tokens: {st['median']:9.1f} ms       "
            f"(IQR {st['iqr']:.1f}, n={st['n']}; CPU time {cpu:.1f} ms)"
        )
    st = lat["decode_tokens_per_s"]
    print(f"decode:              {st['median']:9.2f} tokens/s (IQR {st['iqr']:.2f})")
    for batch, st in lat["throughput_tokens_per_s"].items():
        print(f"throughput batch {batch:>3}: {st['median']:8.2f} tokens/s (IQR {st['iqr']:.2f})")
    phases = ", ".join(f"{k} {v['peak_rss_mb']:.0f}" for k, v in mem["phases"].items())
    print(f"peak RSS: {mem['peak_rss_mb']:.0f} MiB ({phases})")
    if "dense_bytes" in size:
        line = f"size: dense {size['dense_bytes'] / 1e6:.1f} MB, compact {size['compact_bytes'] / 1e6:.1f} MB"
        line += f" ({size['compact_ratio']:.1%}), {size['nonzero_params']:,} of {size['params']:,} params non-zero"
        if "float16" in size:
            f16 = size["float16"]
            line += f"; float16: {f16['dense_bytes'] / 1e6:.1f} -> {f16['compact_bytes'] / 1e6:.1f} MB"
        print(line)
    if energy.get("joules") is not None:
        label = "ESTIMATE" if energy["is_estimate"] else "measured"
        print(
            f"energy [{energy['energy_source']}, {label}]: {energy['joules']:.2f} J per run, "
            f"{energy['joules_per_token']:.3f} J/token, {energy['joules_per_1k_prefill_tokens']:.2f} J per 1k "
            f"prefill tokens (meter overhead {energy['overhead_fraction']:.2e} of metered time)"
        )
        print(
            f"carbon [{carbon['country'] or 'user'} {carbon['grid_intensity']:g} gCO2eq/kWh]: "
            f"{carbon['g_co2eq_per_1k_tokens']:.4f} g per 1k generated tokens, "
            f"{carbon['g_co2eq_per_million_requests'] / 1000:.2f} kg per million requests"
        )
    for note in r.get("notes", []):
        print(f"note: {note}")


def _print_zeroshot(report: dict[str, Any]) -> None:
    for task, r in report.get("zeroshot", {}).items():
        err = r["stderr"].get("acc")
        norm = f", acc_norm {r['acc_norm']:.4f}" if r["acc_norm"] is not None else ""
        print(
            f"zero-shot [{task}]: acc {r['acc']:.4f}{f' ± {err:.4f}' if err is not None else ''}{norm} "
            f"(n={r['n']}, {r['seconds']:.1f} s, {r['examples_per_s']:.1f} examples/s)"
        )
    if report.get("zeroshot_mean") is not None:
        print(f"zero-shot mean acc: {report['zeroshot_mean']:.4f} over {len(report['zeroshot'])} tasks")


def _run(args: argparse.Namespace) -> int:
    from prunelab import api
    from prunelab.config import PruneConfig, build
    from prunelab.pruning import METHODS

    if args.command == "train-aware":
        return _train_aware(args)
    if args.command in ("sweep", "report"):
        return _sweep_or_report(args)
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
                "options": _prune_options(args),
            },
            "prune settings",
        )
        if args.streaming:
            if args.ppl or args.device_map:
                flag = "--ppl (evaluate the output with `prunelab eval`)" if args.ppl else "--device-map"
                raise PrunelabError(f"--streaming does not take {flag}")
            report = api.prune_streaming_job(
                cfg, args.model, args.output, args.overwrite, args.dtype, args.device, args.json_path
            )
            _print_prune(report)
            return 0
        report = api.prune_job(
            cfg,
            model=args.model,
            output=args.output,
            overwrite=args.overwrite,
            ppl=["shakespeare"] if args.ppl is None else args.ppl,
            seqlen=args.seqlen,
            max_windows=args.max_windows,
            evaluate_before=not args.no_eval_before,
            dtype=args.dtype,
            device=args.device,
            json_path=args.json_path,
            device_map=args.device_map,
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
            device_map=args.device_map,
            tasks=[t for item in args.tasks for t in item.split(",") if t] if args.tasks else None,
            task_data=args.task_data,
            limit=args.limit,
        )
        for source, value in report["perplexity"].items():
            ev = report["perplexity_eval"][source]
            print(
                f"perplexity [{source}]: {value:.3f} ({ev['windows']} x {ev['seqlen']} tokens, {ev['seconds']:.1f} s)"
            )
        _print_zeroshot(report)
        return 0
    if args.command == "bench":
        from prunelab.measurement.bench import BenchConfig

        bench_cfg = build(
            BenchConfig,
            {
                "prompt_lens": args.prompt_len,
                "gen_len": args.gen_len,
                "batches": args.batch,
                "repeats": args.repeats,
                "warmup": args.warmup,
                "threads": args.threads,
                "energy": args.energy,
                "country": args.country,
                "grid_intensity": args.grid_intensity,
                "cpu_watts": args.cpu_watts,
                "sparse_kernels": args.sparse_kernels,
                "size": not args.no_size,
            },
            "bench settings",
        )
        report = api.bench_job(
            bench_cfg, model=args.model, dtype=args.dtype, device=args.device, json_path=args.json_path
        )
        _print_bench(report)
        return 0
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
        return _run(args)
    except PrunelabError as e:
        sys.stderr.write(f"prunelab: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("prunelab: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
