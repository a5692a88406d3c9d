"""Recovery after structured pruning (issue 16): perplexity before and after distillation at several token budgets,
against LoRA next-token fine-tuning at the same tokens, with the decode speedup and the cost of recovery.

Rows: for each target (default mlp+heads and layers, 25% of decoder-block parameters) the pruned model, then
(mode, budget) for mode distill / lora and each budget. Perplexity: the first 40 x 512-token windows of WikiText-2
test (--wikitext) and the held-out Shakespeare split; training text: --data (its calibration split). Decode
speedup: each saved folder against the dense model, A/B in this process, through `prunelab.measurement.latency`.
Each row is one JSON file under --out/rows (atomic; done rows are skipped), and a row's recovery checkpoints in
its model folder, so a killed run resumes where it stopped. --teacher-topk K distills against the teacher's cached
top-K log-probs (rows named `...-topkK`, so they sit beside the uncached rows of the same budget; the row's
`recovery.teacher_cache` has the cache's build seconds and bytes): whether the cache pays is the wall-clock and
perplexity difference between the two rows. Run on a quiet machine:

    nice -n 10 python bench/bench_recover.py --wikitext ../shared/data/wikitext-2-raw/wiki.test.raw
    python bench/bench_recover.py --table
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from prunelab import PruneConfig, evaluate, load_model, prune
from prunelab._util import write_json_atomic
from prunelab.api.recover import recover_model
from prunelab.config.recover import RecoverConfig
from prunelab.measurement.latency import decode
from prunelab.measurement.timing import summarize
from prunelab.models import save_model


def ppl(model: torch.nn.Module, tok: Any, args: argparse.Namespace) -> dict[str, float]:
    sources = [*([f"wikitext2:{args.wikitext}"] if args.wikitext else []), "shakespeare",
               *([args.heldout] if args.heldout else [])]  # fmt: skip
    res = evaluate(model, tok, sources, seqlen=args.eval_seqlen, max_windows=args.max_windows)
    names = {f"wikitext2:{args.wikitext}": "wikitext2", args.heldout: "heldout"}
    return {names.get(k, k): v.perplexity for k, v in res.items()}


def decode_speedup(dense: torch.nn.Module, model: torch.nn.Module, args: argparse.Namespace) -> dict[str, float]:
    """Median decode tokens/s of dense and model, alternated `rounds` times (load hits both sides alike)."""
    d, m = [], []
    for _ in range(args.rounds):
        for side, out in ((dense, d), (model, m)):
            measured, _ = decode(side, 16, args.new_tokens, warmup=1, repeats=args.repeats)
            out.append(measured.stats.median)
    return {"dense_decode_tok_s": statistics.median(d), "decode_tok_s": statistics.median(m),
            "decode_speedup": statistics.median(m) / statistics.median(d)}  # fmt: skip


def row_path(out: Path, name: str) -> Path:
    return out / "rows" / f"{name.replace('+', '-')}.json"


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    lm = load_model(args.model)
    dense, tok = lm.model, lm.tokenizer
    if not row_path(out, "dense").exists():
        write_json_atomic(row_path(out, "dense"), {"name": "dense", "ppl": ppl(dense, tok, args),
                          "params": sum(p.numel() for p in dense.parameters())})  # fmt: skip
    for target in args.targets:
        folder = out / "models" / f"{target.replace('+', '-')}-pruned"
        if not (folder / "prunelab.json").exists():
            student = copy.deepcopy(dense)
            cfg = PruneConfig(method="structured", sparsity=args.sparsity, calib_samples=8, calib_seqlen=args.seqlen,
                              calib=args.calib or args.data, options={"target": target})  # fmt: skip
            result = prune(student, cfg, tokenizer=tok)
            save_model(student, tok, folder, {"removed_layers": result.extra["removed_layers"],
                       "achieved_reduction": result.extra["achieved_reduction"]}, overwrite=True)  # fmt: skip
        meta = json.loads((folder / "prunelab.json").read_text())
        if not row_path(out, f"{target}-pruned").exists():
            pruned = load_model(str(folder)).model
            write_json_atomic(row_path(out, f"{target}-pruned"), {"name": f"{target} pruned", **meta,
                              "ppl": ppl(pruned, tok, args), **speed(dense, pruned, args)})  # fmt: skip
        for mode in args.modes:
            for budget in args.budgets:
                topk = args.teacher_topk if mode == "distill" else 0
                name = f"{target}-{mode}-{budget}" + (f"-topk{topk}" if topk else "")
                name += f"-lr{args.lr:g}" if args.lr else ""
                name += "-bf16" if args.dtype == "bfloat16" else ""
                if row_path(out, name).exists():
                    continue
                student = load_model(str(folder)).model
                cfg = RecoverConfig(mode=mode, tokens=budget, data=args.data, seqlen=args.seqlen,
                                    batch_size=args.batch_size, checkpoint_every=args.checkpoint_every,
                                    teacher_topk=topk, lr=args.lr, dtype=args.dtype)  # fmt: skip
                saved = out / "models" / name.replace("+", "-")
                rec = recover_model(student, tok, cfg, dense if mode == "distill" else None, saved,
                                    meta.get("removed_layers"), {"bench": name})  # fmt: skip
                save_model(student, tok, saved, {**meta, "recovery": rec}, overwrite=True)
                rec.pop("losses")
                row = {"name": name, "target": target, "mode": mode, "tokens": budget, "teacher_topk": topk,
                       "lr": cfg.peak_lr, "ppl": ppl(student, tok, args)}  # fmt: skip
                write_json_atomic(row_path(out, name), {**row, **speed(dense, student, args), "recovery": rec})
                print_table(read_rows(out))


def row_folder(out: Path, row: dict[str, Any]) -> Path | None:
    """The saved model folder a row was measured on (None for the dense row)."""
    if "mode" in row:
        return out / "models" / row["name"].replace("+", "-")
    if row["name"].endswith(" pruned"):
        return out / "models" / f"{row['name'][: -len(' pruned')].replace('+', '-')}-pruned"
    return None


def add_speed(args: argparse.Namespace) -> None:
    """Decode A/B for the rows that were written without it (--no-speed, e.g. while the machine was busy): run this
    alone, so the quality rows can be produced under load and every timing still comes from a quiet machine."""
    out = Path(args.out)
    dense = None
    for path in sorted((out / "rows").glob("*.json")):
        row = json.loads(path.read_text())
        folder = row_folder(out, row)
        if "decode_speedup" in row or folder is None or not (folder / "config.json").exists():
            continue
        if dense is None:
            dense = load_model(args.model).model
        row.update(decode_speedup(dense, load_model(str(folder)).model, args), speed_measured="--add-speed")
        write_json_atomic(path, row)


def speed(dense: torch.nn.Module, model: torch.nn.Module, args: argparse.Namespace) -> dict[str, float]:
    return {} if args.no_speed else decode_speedup(dense, model, args)


def read_rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((out / "rows").glob("*.json"))]


def print_table(rows: list[dict[str, Any]]) -> None:
    """`wall s` is the training loop; `cache s` the teacher top-k cache (fingerprint + build or load), so a cached
    row costs their sum. A cached row's loss is the top-k KL, a lower bound of the full KL of uncached rows."""
    print(f"{'row':34s} {'wikitext2':>10s} {'shakesp.':>9s} {'heldout':>8s} {'speedup':>8s} {'loss last':>10s} "
          f"{'wall s':>8s} {'cache s':>8s} {'tok/s':>8s}")  # fmt: skip
    for r in rows:
        rec, p = r.get("recovery") or {}, r.get("ppl", {})
        cache = rec.get("teacher_cache") or {}
        cells = [p.get("wikitext2", float("nan")), p.get("shakespeare", float("nan")), p.get("heldout", float("nan")),
                 r.get("decode_speedup", float("nan")), rec.get("loss_last10_mean", float("nan")),
                 rec.get("seconds", float("nan")), cache.get("seconds", float("nan")),
                 rec.get("tokens_per_second", float("nan"))]  # fmt: skip
        print(f"{r['name']:34s} {cells[0]:10.2f} {cells[1]:9.2f} {cells[2]:8.2f} {cells[3]:8.3f} {cells[4]:10.4f} "
              f"{cells[5]:8.1f} {cells[6]:8.1f} {cells[7]:8.0f}")  # fmt: skip


def step_ab(args: argparse.Namespace) -> None:
    """Tokens/s of the distillation loop itself in float32 and under bfloat16 autocast, alternated `rounds` times
    in this process on the first target's pruned folder (run the main bench once first): `--step-ab STEPS` steps
    per side and round, no checkpoints; the JSON (the timing protocol's `summarize` of each side) goes to
    --out/step-ab.json."""
    out = Path(args.out)
    folder = out / "models" / f"{args.targets[0].replace('+', '-')}-pruned"
    if not (folder / "prunelab.json").exists():
        print(f"error: --step-ab needs {folder} (run the bench with this --out and --targets once first)",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(2)
    meta = json.loads((folder / "prunelab.json").read_text())
    lm = load_model(args.model)
    dense, tok = lm.model, lm.tokenizer
    rates: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    for _ in range(args.rounds):
        for dtype, got in rates.items():
            student = load_model(str(folder)).model
            cfg = RecoverConfig(tokens=args.step_ab * args.batch_size * args.seqlen, data=args.data,
                                seqlen=args.seqlen, batch_size=args.batch_size, lr=args.lr, dtype=dtype)  # fmt: skip
            rec = recover_model(student, tok, cfg, dense, None, meta.get("removed_layers"))
            got.append(rec["tokens_per_second"])
            print(f"{dtype:9s} {rec['tokens_per_second']:8.1f} tokens/s  loss {rec['loss_first']:.4f} -> "
                  f"{rec['loss_last']:.4f}")  # fmt: skip
    summary = {k: summarize(v).to_dict() for k, v in rates.items()}
    speedup = summary["bfloat16"]["median"] / summary["float32"]["median"]
    write_json_atomic(out / "step-ab.json", {"steps_per_side": args.step_ab, "batch_size": args.batch_size,
                      "seqlen": args.seqlen, "threads": args.threads, "target": args.targets[0], "tokens_per_second":
                      summary, "bf16_speedup": speedup})  # fmt: skip
    for k, v in summary.items():
        print(f"{k:9s} median {v['median']:8.1f} tokens/s (range {v['min']:.1f}-{v['max']:.1f})")
    print(f"bfloat16 autocast / float32: {speedup:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    ap.add_argument("--wikitext", default=None, help="wiki.test.raw for the WikiText-2 perplexity")
    ap.add_argument("--data", default="shakespeare", help="recovery and calibration text (its calibration split)")
    ap.add_argument("--calib", default=None, help="pruning calibration text (default: --data)")
    ap.add_argument("--heldout", default=None, help="a text source never trained on, for choosing settings "
                    "(e.g. a held-out part of the training file); reported as `heldout`")  # fmt: skip
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default: RecoverConfig's); "
                    "rows get an -lrX suffix")  # fmt: skip
    ap.add_argument("--targets", nargs="+", default=["mlp+heads", "layers"])
    ap.add_argument("--sparsity", type=float, default=0.25)
    ap.add_argument("--modes", nargs="+", default=["distill", "lora"])
    ap.add_argument("--budgets", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--checkpoint-every", type=int, default=50)
    ap.add_argument("--teacher-topk", type=int, default=0, help="distill rows against the cached teacher top-K "
                    "(0 = teacher forward every step); rows get a -topkK suffix")  # fmt: skip
    ap.add_argument("--eval-seqlen", type=int, default=512)
    ap.add_argument("--max-windows", type=int, default=40)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-speed", action="store_true", help="skip the decode timings (rehearsals, or a busy machine)")
    ap.add_argument("--add-speed", action="store_true", help="only add the decode timings to rows that lack them")
    ap.add_argument("--out", default="bench/out/recover")
    ap.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16"],
        default="auto",
        help="recovery compute dtype (bfloat16 rows are named `...-bf16`)",
    )
    ap.add_argument(
        "--step-ab",
        type=int,
        default=0,
        metavar="STEPS",
        help="only time the recovery loop, float32 vs bfloat16, STEPS steps per side and round",
    )
    ap.add_argument("--table", action="store_true", help="print the table of the rows so far")
    args = ap.parse_args()
    if not args.table:
        torch.set_num_threads(args.threads)
        if args.step_ab:
            return step_ab(args)
        add_speed(args) if args.add_speed else run(args)
    print_table(read_rows(Path(args.out)))


if __name__ == "__main__":
    main()
