"""Structured pruning of SmolLM2-135M: quality, size and real CPU speed against the dense model in the same run.

For every (target, sparsity, variant) row: prune a fresh copy of the embedded model (calibration: 8 x 512
Shakespeare windows, to stay cheap), perplexity on the first 40 x 512-token windows of WikiText-2 test, parameter
count, safetensors size on disk, prefill time of a 128-token prompt and greedy decode speed (64 new tokens,
min_new_tokens = max_new_tokens) with a fixed thread count. Dense and pruned are timed alternately (A/B, warm-up
then the median of a few repeats each), so a change of machine load hits both sides of a ratio alike.
`bound` is the decode speedup the per-token multiplies allow (lm_head included); `of bound` = speedup / bound.
Timings and sizes come from `prunelab.measurement` (`latency.prefill` / `latency.decode`, `size.measure_sizes`),
the protocol of `prunelab bench`: random-token prompts, decode speed between the first and last generated token.

    nice -n 10 python bench/bench_structured.py quality   # prune, perplexity, save each model (bench/out/)
    nice -n 10 python bench/bench_structured.py speed     # time each saved model against dense, A/B
    nice -n 10 python bench/bench_structured.py reeval    # perplexity of each saved folder, reloaded
    python bench/bench_structured.py table                # print the merged table again
    nice -n 10 python bench/bench_structured.py importance  # importance options at mlp+heads 25%, no recovery

Two phases, so quality (slow, load-insensitive) and speed (load-sensitive; rerun when the machine is quiet) are
measured apart; the speed phase loads each saved folder with plain `from_pretrained`, the thing a user gets.
Rows are appended to JSONL files as they finish (a killed run keeps what it measured; done rows are skipped).

`importance` asks which removal decisions need the least recovery: the same mlp+heads 25% cut scored by each
importance option (magnitude, activation, FLAP-compensated activation, Taylor element/vector, Minitron, and
iterative Taylor/Minitron in 4 steps without recovery), perplexity before any recovery. Calibration: 32 x 512
windows of WikiText-2 validation (--calib), seed 0; rows go to structured-importance.jsonl (no timing).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from prunelab import PruneConfig, PrunelabError, evaluate, load_model, prune
from prunelab.measurement.latency import decode, prefill
from prunelab.measurement.size import measure_sizes

SIZES = (0.1, 0.25, 0.5)
TARGETS = ("mlp", "heads", "layers", "mlp+heads")
# Extra rows beside the defaults (activation importance; block influence for layers): (name, sparsity, options).
VARIANTS: tuple[tuple[str, float, dict[str, Any]], ...] = (
    ("mlp magnitude", 0.25, {"target": "mlp", "importance": "magnitude"}),
    ("mlp compensate", 0.25, {"target": "mlp", "compensate": True}),
    ("mlp compensate", 0.5, {"target": "mlp", "compensate": True}),
    ("mlp+heads compensate", 0.5, {"target": "mlp+heads", "compensate": True}),
    ("mlp LoRA30", 0.5, {"target": "mlp", "recover_steps": 30, "recover_lr": 5e-4}),
    ("layers LoRA30", 0.5, {"target": "layers", "recover_steps": 30, "recover_lr": 5e-4}),
)


# The importance comparison (phase `importance`): (name, options), all at mlp+heads --importance-sparsity.
IMPORTANCE_ROWS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("magnitude", {"importance": "magnitude"}),
    ("activation", {"importance": "activation"}),
    ("activation compensate", {"importance": "activation", "compensate": True}),
    ("taylor", {"importance": "taylor"}),
    ("taylor vector", {"importance": "taylor", "taylor": "vector"}),
    ("minitron", {"importance": "minitron"}),
    ("minitron l2-l2", {"importance": "minitron", "minitron_seq": "l2"}),
    ("taylor x4", {"importance": "taylor", "iterative_steps": 4}),
    ("minitron x4", {"importance": "minitron", "iterative_steps": 4}),
)

DECODE_PROMPT = 16  # tokens of the prompt the decode runs start from (decode speed leaves the prefill out)


def timings(model: torch.nn.Module, prompt_len: int, new_tokens: int, repeats: int, cpu_time: bool) -> dict[str, float]:
    """Prefill ms of a `prompt_len`-token prompt and decode tokens/s, by `prunelab.measurement.latency`.

    `cpu_time`: the process's CPU time instead of wall time (a machine shared with other jobs inflates it far
    less; memory bandwidth and caches are still shared).
    """
    pre = prefill(model, prompt_len, warmup=1, repeats=repeats)
    dec, _ = decode(model, DECODE_PROMPT, new_tokens, warmup=1, repeats=repeats)
    if cpu_time:
        return {"prefill_ms": pre.extra["cpu_ms"].median, "decode_tok_s": 1e3 / dec.extra["cpu_ms_per_token"].median}
    return {"prefill_ms": pre.stats.median, "decode_tok_s": dec.stats.median}


def disk_mb(model: torch.nn.Module) -> float:
    return measure_sizes(model, verify=False)["dense_bytes"] / 2**20


def measure_pair(dense: torch.nn.Module, pruned: torch.nn.Module, args: Any) -> dict[str, Any]:
    """A/B timings: dense, pruned, dense, pruned ... (rounds), medians of each side."""
    d, p = [], []
    for _ in range(args.rounds):
        d.append(timings(dense, args.prompt_len, args.new_tokens, args.repeats, args.cpu_time))
        p.append(timings(pruned, args.prompt_len, args.new_tokens, args.repeats, args.cpu_time))

    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    return {
        "dense_decode_tok_s": med(d, "decode_tok_s"),
        "decode_tok_s": med(p, "decode_tok_s"),
        "dense_prefill_ms": med(d, "prefill_ms"),
        "prefill_ms": med(p, "prefill_ms"),
    }


def rows_to_run(args: Any) -> list[tuple[str, float, dict[str, Any]]]:
    rows = [(t, s, {"target": t}) for s in args.sizes for t in args.targets]
    if args.variants:
        rows += [v for v in VARIANTS if v[1] in args.sizes]
    return rows


def slug(name: str, sparsity: float) -> str:
    return f"{name.replace(' ', '_').replace('+', '-')}-{round(sparsity * 100)}"


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def merged(out: Path) -> list[dict[str, Any]]:
    speed = {(r["name"], r["sparsity"]): r for r in read_rows(out.with_suffix(".speed.jsonl"))}
    return [{**r, **speed.get((r["name"], r["sparsity"]), {})} for r in read_rows(out)]


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'row':22s} {'asked':>5s} {'got':>6s} {'params':>7s} {'disk MB':>7s} {'ppl':>7s} {'prefill ms':>11s} "
        f"{'tok/s':>13s} {'speedup':>7s} {'bound':>6s} {'of bound':>8s} {'prune s':>7s}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['name']:22s} {r['sparsity']:5.2f}  refused: {r['error']}")
            continue
        bound = r.get("decode_speedup_bound", 1.0)
        timing = "(not timed)"
        if "decode_tok_s" in r:
            speed = r["decode_tok_s"] / r.get("dense_decode_tok_s", r["decode_tok_s"])
            timing = (
                f"{r['prefill_ms']:5.0f}/{r.get('dense_prefill_ms', r['prefill_ms']):<5.0f} "
                f"{r['decode_tok_s']:6.1f}/{r.get('dense_decode_tok_s', r['decode_tok_s']):<6.1f} {speed:6.2f}x "
                f"{bound:5.2f}x {speed / bound if bound > 1 else 1:7.0%}"
            )
        print(
            f"{r['name']:22s} {r['sparsity']:5.2f} {r.get('achieved_reduction', 0.0):6.3f} {r['params'] / 1e6:6.1f}M "
            f"{r['disk_mb']:7.1f} {r['ppl']:7.2f} {timing} {r.get('prune_seconds', 0.0):7.0f}"
        )


def quality(args: Any, out: Path, models: Path) -> None:
    """Prune each row, measure perplexity, save the model (its safetensors size is the disk size)."""
    from transformers import AutoTokenizer

    from prunelab.models import resolve_model, save_model

    done = {(r["name"], r["sparsity"]) for r in read_rows(out)}
    source = f"wikitext2:{args.wikitext}"
    tok = AutoTokenizer.from_pretrained(resolve_model(None))

    def emit(row: dict[str, Any]) -> None:
        row["load_avg"] = Path("/proc/loadavg").read_text().split()[:3]
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print_table([row])

    if ("dense", 0.0) not in done:
        lm = load_model()
        ppl = evaluate(lm.model, tok, [source], seqlen=512, max_windows=args.max_windows)[source].perplexity
        params = sum(p.numel() for p in lm.model.parameters())
        emit({"name": "dense", "sparsity": 0.0, "params": params, "disk_mb": disk_mb(lm.model), "ppl": ppl,
              "path": resolve_model(None)})  # fmt: skip
    for name, sparsity, options in rows_to_run(args):
        if (name, sparsity) in done:
            continue
        lm = load_model()
        cfg = PruneConfig(method="structured", sparsity=sparsity, calib_samples=8, calib_seqlen=512, options=options)
        try:
            result = prune(lm.model, cfg, tokenizer=tok)
        except PrunelabError as e:
            emit({"name": name, "sparsity": sparsity, "options": options, "error": str(e)})
            continue
        ppl = evaluate(lm.model, tok, [source], seqlen=512, max_windows=args.max_windows)[source].perplexity
        path = save_model(lm.model, tok, models / slug(name, sparsity), {"options": options}, overwrite=True)
        emit({
            "name": name,
            "sparsity": sparsity,
            "options": options,
            "ppl": ppl,
            "params": sum(p.numel() for p in lm.model.parameters()),
            "disk_mb": sum(f.stat().st_size for f in path.glob("*.safetensors")) / 2**20,
            "prune_seconds": result.seconds,
            **{k: result.extra[k] for k in ("achieved_reduction", "flops_ratio", "decode_speedup_bound")},
            "structure": result.extra["structure_after"],
            "recovery": result.extra["recovery"],
            "path": str(path),
        })  # fmt: skip
        del lm


def importance(args: Any, out: Path) -> None:
    """Each importance option on the same mlp+heads cut: perplexity before recovery, one JSON line per row."""
    done = {r["name"] for r in read_rows(out)}
    source = f"wikitext2:{args.wikitext}"

    def emit(row: dict[str, Any]) -> None:
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{row['name']:22s} ppl {row.get('ppl', float('nan')):8.2f} {row.get('error', '')}")

    calib = {"calib": args.calib, "calib_samples": args.calib_samples, "calib_seqlen": args.calib_seqlen, "seed": 0}
    for name, options in (("dense", None), *IMPORTANCE_ROWS):
        if name in done:
            continue
        lm = load_model(args.model)
        row: dict[str, Any] = {"name": name, "options": options, "sparsity": args.importance_sparsity, **calib}
        if options is not None:
            opts = {"target": "mlp+heads", **options}
            cfg = PruneConfig(method="structured", sparsity=args.importance_sparsity, options=opts, **calib)
            try:
                result = prune(lm.model, cfg, tokenizer=lm.tokenizer)
            except PrunelabError as e:
                emit({**row, "error": str(e)})
                continue
            row.update({k: result.extra[k] for k in ("achieved_reduction", "params_after", "structure_after")})
            row["prune_seconds"] = result.seconds
        res = evaluate(lm.model, lm.tokenizer, [source], seqlen=args.seqlen, max_windows=args.max_windows)[source]
        emit({**row, "ppl": res.perplexity, "windows": args.max_windows, "seqlen": args.seqlen})
        del lm


def speed(args: Any, out: Path) -> None:
    """Time every saved model (plain from_pretrained) against the dense one, A/B, same process and threads."""
    from transformers import AutoModelForCausalLM

    rows, shapes = [], set()
    for r in read_rows(out):
        if "path" not in r or r["name"] == "dense" or (set(r["options"]) - {"target"} and not args.all_rows):
            continue  # compensated / recovered rows have their base row's shapes (plus a few biases)
        if (key := json.dumps(r["structure"], sort_keys=True)) not in shapes:
            shapes.add(key)
            rows.append(r)
    speed_out = out.with_suffix(".speed.jsonl")
    done = {(r["name"], r["sparsity"]) for r in read_rows(speed_out)}
    dense_path = next(r["path"] for r in read_rows(out) if r["name"] == "dense")
    dense = AutoModelForCausalLM.from_pretrained(dense_path, dtype=torch.float32).eval()
    for r in rows:
        if (r["name"], r["sparsity"]) in done:
            continue
        pruned = AutoModelForCausalLM.from_pretrained(r["path"], dtype=torch.float32).eval()
        row = {"name": r["name"], "sparsity": r["sparsity"], **measure_pair(dense, pruned, args)}
        row["threads"], row["load_avg"] = args.threads, Path("/proc/loadavg").read_text().split()[:3]
        row["clock"] = "process_time" if args.cpu_time else "wall"
        with speed_out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(row)


def reeval(args: Any, out: Path) -> None:
    """Perplexity of every saved folder again, loaded with plain from_pretrained (what a user gets).

    The quality phase evaluates in memory right after pruning; this checks the saved models and replaces `ppl`
    (the first value is kept as `ppl_in_memory`). Rows are rewritten atomically after each model.
    """
    from prunelab._util import write_text_atomic

    source = f"wikitext2:{args.wikitext}"
    rows = read_rows(out)
    for r in rows:
        if "path" not in r or "ppl_in_memory" in r:
            continue
        if args.rows and f"{r['name']}@{r['sparsity']:g}" not in args.rows:
            continue
        lm = load_model(r["path"])
        ppl = evaluate(lm.model, lm.tokenizer, [source], seqlen=512, max_windows=args.max_windows)[source].perplexity
        r["ppl_in_memory"], r["ppl"] = r["ppl"], ppl
        print(f"{r['name']:22s} {r['sparsity']:.2f}: {r['ppl_in_memory']:.2f} in memory -> {ppl:.2f} reloaded")
        write_text_atomic(out, "".join(json.dumps(x) + "\n" for x in rows))
        del lm


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument(
        "phase",
        choices=["quality", "speed", "reeval", "table", "importance"],
        help="quality first, then speed; reeval re-measures saved folders; table prints; importance compares scores",
    )
    ap.add_argument("--model", default=None, help="importance: model folder (default: the embedded SmolLM2-135M)")
    ap.add_argument("--calib", default="../shared/data/wikitext-2/valid.txt", help="importance: calibration text")
    ap.add_argument("--calib-samples", type=int, default=32, help="importance: calibration windows")
    ap.add_argument("--calib-seqlen", type=int, default=512, help="importance: tokens per calibration window")
    ap.add_argument("--seqlen", type=int, default=512, help="importance: perplexity window length")
    ap.add_argument("--importance-sparsity", type=float, default=0.25)
    ap.add_argument("--importance-json", default="bench/out/structured-importance.jsonl")
    ap.add_argument("--wikitext", default="../shared/data/wikitext-2-raw/wiki.test.raw")
    ap.add_argument("--json", default="bench/out/structured.jsonl", help="rows are appended here (JSON lines)")
    ap.add_argument("--models", default="bench/out/structured-models", help="where pruned models are saved")
    ap.add_argument("--sizes", type=float, nargs="+", default=list(SIZES))
    ap.add_argument("--targets", nargs="+", default=list(TARGETS))
    ap.add_argument("--no-variants", dest="variants", action="store_false")
    ap.add_argument("--max-windows", type=int, default=40)
    ap.add_argument("--rows", nargs="+", default=None, help="reeval only these rows, as NAME@SPARSITY (mlp@0.5)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=128, help="speed: prefill prompt tokens")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="A/B alternations of dense and pruned timings")
    ap.add_argument("--cpu-time", action="store_true", help="speed: time process CPU seconds (use --threads 1)")
    ap.add_argument("--all-rows", action="store_true", help="speed: also time variants of an already timed shape")
    args = ap.parse_args()
    out = Path(args.importance_json if args.phase == "importance" else args.json)
    if args.phase == "table":
        print_table(merged(out))
        return
    torch.set_num_threads(args.threads)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.phase == "importance":
        importance(args, out)
        return
    if args.phase == "quality":
        quality(args, out, Path(args.models))
    elif args.phase == "reeval":
        reeval(args, out)
    else:
        speed(args, out)
    print()
    print_table(merged(out))


if __name__ == "__main__":
    main()
