"""Pruning x quantization of SmolLM2-135M as llama.cpp users deploy it: GGUF file size, llama.cpp speed and quality.

Rows: dense, structured MLP 10% and 25% (as asked, and with the kept width rounded to a multiple of 32: the
`-r32` rows), layers 10% (prunelab's `structured` method, default importance), each
exported to GGUF at f16, q8_0, q4_k_m and q4_0. Per row: file MB (and the tensor types llama.cpp's quantizer
chose), llama.cpp decode tok/s at batch 1 and prefill ms of a 128-token prompt (`prunelab.runtime.llamacpp.bench`:
prunelab's timing protocol, median and IQR), and llama.cpp perplexity on the first 40 x 512-token windows of
WikiText-2 test (the windows prunelab's torch perplexity uses). Per pruning variant: PyTorch float32 decode tok/s
of the same model through `prunelab.measurement.latency.decode`. Then the Pareto frontiers of perplexity vs file
MB and vs llama.cpp tok/s, and for every row the dense row closest in file size (is pruning, quantization or both
the better use of the same bytes?).

llama.cpp's threads spin on barriers: run this ALONE on the machine (any other load collapses its speed).

    python bench/bench_gguf.py --data /work/shared/data/wikitext-2-raw/wiki.test.raw
    # rehearsal (seconds, numbers meaningless): tiny sizes, another output file
    python bench/bench_gguf.py --data wiki.test.raw --variants dense,mlp10,mlp10-r32 --quants f16,q4_0 --windows 1 \
        --seqlen 64 --calib-samples 1 --calib-seqlen 64 --prompt-len 8 --gen-len 4 --repeats 1 --warmup 0 \
        --out /tmp/gguf-rehearsal.json --workdir /tmp/gguf-rehearsal

Results go to bench/results/gguf.json after every row (`--resume` skips rows already there); GGUF files stay in
--workdir (bench/out/gguf, git-ignored).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from prunelab import PruneConfig, data, load_model, prune
from prunelab._util import environment, write_json_atomic
from prunelab.export import export_gguf, gguf_source
from prunelab.measurement.bench import BenchConfig
from prunelab.measurement.latency import decode
from prunelab.measurement.timing import set_threads
from prunelab.report.pareto import pareto_front
from prunelab.runtime import llamacpp as rt
from prunelab.sweep.store import PointRecord

VARIANTS: dict[str, dict[str, Any] | None] = {
    "dense": None,
    "mlp10": {"sparsity": 0.10, "options": {"target": "mlp"}},
    "mlp25": {"sparsity": 0.25, "options": {"target": "mlp"}},
    "layers10": {"sparsity": 0.10, "options": {"target": "layers"}},
    # The same cuts with the kept MLP width rounded to a multiple of 32 (`multiple_of`): llama.cpp quantizes rows
    # in blocks of 32, and keeps a matrix whose rows are not whole blocks at f16 (mlp10's q4_k_m file was larger
    # than the dense one's).
    "mlp10-r32": {"sparsity": 0.10, "options": {"target": "mlp", "multiple_of": 32}},
    "mlp25-r32": {"sparsity": 0.25, "options": {"target": "mlp", "multiple_of": 32}},
}
QUANTS = ("f16", "q8_0", "q4_k_m", "q4_0")


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="WikiText-2 raw test file (wiki.test.raw)")
    ap.add_argument("--model", default=None, help="model to prune (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--quants", default=",".join(QUANTS))
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--calib", default="shakespeare")
    ap.add_argument("--calib-samples", type=int, default=8)
    ap.add_argument("--calib-seqlen", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-len", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--energy", default="auto")
    ap.add_argument("--skip-torch", action="store_true", help="skip the PyTorch float32 decode timing")
    ap.add_argument("--out", default="bench/results/gguf.json")
    ap.add_argument("--workdir", default="bench/out/gguf")
    ap.add_argument("--resume", action="store_true", help="keep rows already in --out and skip them")
    return ap.parse_args()


def load_variant(args: argparse.Namespace, name: str) -> tuple[Any, Any, dict[str, Any]]:
    lm = load_model(args.model)
    spec = VARIANTS[name]
    info: dict[str, Any] = {"variant": name}
    if spec is not None:
        cfg = PruneConfig(
            method="structured",
            sparsity=spec["sparsity"],
            options=spec["options"],
            calib=args.calib,
            calib_samples=args.calib_samples,
            calib_seqlen=args.calib_seqlen,
        )
        result = prune(lm.model, cfg, tokenizer=lm.tokenizer)
        info.update(requested_sparsity=spec["sparsity"], options=spec["options"], achieved=result.achieved_sparsity)
    info["params"] = sum(p.numel() for p in lm.model.parameters())
    return lm, gguf_source(args.model), info


def torch_decode(model: Any, args: argparse.Namespace) -> dict[str, Any]:
    previous = set_threads(None)
    set_threads(args.threads)
    try:
        dec, _ = decode(model, args.prompt_len, args.gen_len, args.warmup, args.repeats, 1)
    finally:
        set_threads(previous)
    return dec.stats.to_dict()


def row_for(path: Path, report: dict[str, Any], windows: Any, args: argparse.Namespace) -> dict[str, Any]:
    cfg = BenchConfig(
        prompt_lens=[args.prompt_len],
        gen_len=args.gen_len,
        batches=[1],
        repeats=args.repeats,
        warmup=args.warmup,
        threads=args.threads,
        energy=args.energy,
    )
    speed = rt.bench(path, cfg)  # timing first, before the long perplexity run heats anything up
    ppl = rt.perplexity(path, windows, threads=args.threads)
    lat = speed["latency"]
    return {
        "file_mb": report["file_bytes"] / 1e6,
        "tensor_types": report["tensor_types"],
        "ppl_llamacpp": ppl.perplexity,
        "decode_tok_s": lat["decode_tokens_per_s"]["median"],
        "decode_tok_s_iqr": lat["decode_tokens_per_s"]["iqr"],
        "prefill_ms": lat["prefill_ms"][str(args.prompt_len)]["median"],
        "prefill_ms_iqr": lat["prefill_ms"][str(args.prompt_len)]["iqr"],
        "peak_rss_mb": speed["memory"]["peak_rss_mb"],
        "energy": {k: speed["energy"].get(k) for k in ("energy_source", "is_estimate", "joules_per_token")},
        "bench": speed,
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = f"{'variant':<9} {'quant':<7} {'MB':>7} {'ppl':>9} {'tok/s':>8} {'±iqr':>6} {'prefill':>8} {'torch':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        torch_s = r.get("torch_f32_decode_tok_s")
        lines.append(
            f"{r['variant']:<9} {r['quant']:<7} {r['file_mb']:>7.1f} {r['ppl_llamacpp']:>9.3f} "
            f"{r['decode_tok_s']:>8.1f} {r['decode_tok_s_iqr']:>6.1f} {r['prefill_ms']:>8.1f} "
            f"{(f'{torch_s:.1f}' if torch_s else '-'):>7}"
        )
    return "\n".join(lines)


def points(rows: list[dict[str, Any]]) -> list[PointRecord]:
    """Rows as the sweep report's records, so its Pareto code ranks them."""
    return [
        PointRecord(
            point_id=f"{r['variant']}-{r['quant']}",
            index=i,
            label=f"{r['variant']} {r['quant']}",
            series=r["variant"],
            method="dense" if r["variant"] == "dense" else "structured",
            pattern=r["quant"],
            sparsity=float(r.get("achieved") or 0.0),
            target=None,
            config={},
            metrics={
                "perplexity": r["ppl_llamacpp"],
                "size_mb": r["file_mb"],
                "decode_tokens_per_s": r["decode_tok_s"],
            },
        )
        for i, r in enumerate(rows)
    ]


def frontiers(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    pts = points(rows)
    return {
        "ppl_vs_file_mb": [p.label for p in pareto_front(pts, ["perplexity", "size_mb"])],
        "ppl_vs_decode_tok_s": [p.label for p in pareto_front(pts, ["perplexity", "decode_tokens_per_s"])],
    }


def equal_size(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each pruned row beside the dense row closest to it in file size."""
    dense = [r for r in rows if r["variant"] == "dense"]
    out = []
    for r in rows:
        if r["variant"] == "dense" or not dense:
            continue
        d = min(dense, key=lambda x: abs(x["file_mb"] - r["file_mb"]))
        out.append(
            {
                "pruned": f"{r['variant']} {r['quant']}",
                "pruned_mb": r["file_mb"],
                "pruned_ppl": r["ppl_llamacpp"],
                "dense": f"dense {d['quant']}",
                "dense_mb": d["file_mb"],
                "dense_ppl": d["ppl_llamacpp"],
                "winner": "pruned" if r["ppl_llamacpp"] < d["ppl_llamacpp"] else "dense",
            }
        )
    return out


def main() -> None:
    args = parse()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    quants = [q.strip() for q in args.quants.split(",") if q.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    out, workdir = Path(args.out), Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    if args.resume and out.is_file():
        import json

        rows = json.loads(out.read_text())["rows"]
    done = {(r["variant"], r["quant"]) for r in rows}
    windows = None
    for name in variants:
        if all((name, q) in done for q in quants):
            continue
        lm, source, info = load_variant(args, name)
        if windows is None:
            ids = data.tokenize(lm.tokenizer, data.load_text(f"wikitext2:{args.data}").text)
            windows = data.eval_windows(ids, args.seqlen, args.windows)
        torch_speed = None if args.skip_torch else torch_decode(lm.model, args)
        for q in quants:
            if (name, q) in done:
                continue
            path = workdir / f"smollm2-{name}-{q}.gguf"
            report = export_gguf(lm.model, lm.tokenizer, path, quant=q, source_gguf=source, overwrite=True)
            row = {**info, "quant": q, "path": str(path), **row_for(path, report, windows, args)}
            if torch_speed is not None:
                row["torch_f32_decode_tok_s"] = torch_speed["median"]
                row["torch_f32_decode"] = torch_speed
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
            write_json_atomic(out, {"rows": rows, "args": vars(args)})
        del lm
    summary = {
        "rows": rows,
        "frontiers": frontiers(rows),
        "equal_size": equal_size(rows),
        "args": vars(args),
        "command": "python " + " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "environment": environment(),
    }
    write_json_atomic(out, summary)
    print()
    print(table(rows))
    for key, labels in summary["frontiers"].items():
        print(f"\nPareto frontier {key}: " + ", ".join(labels))
    print("\nAt (about) equal file size:")
    for e in summary["equal_size"]:
        print(
            f"  {e['pruned']:<16} {e['pruned_mb']:7.1f} MB ppl {e['pruned_ppl']:8.3f}  vs  "
            f"{e['dense']:<12} {e['dense_mb']:7.1f} MB ppl {e['dense_ppl']:8.3f}  -> {e['winner']}"
        )


if __name__ == "__main__":
    main()
