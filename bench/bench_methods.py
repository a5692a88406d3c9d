"""Issue 15 table: Wanda, SparseGPT and RIA, each alone, + DSnoT, + block reconstruction, + both, at 50/60/70%,
2:4 and 4:8, on SmolLM2-135M: WikiText-2 test perplexity, prune seconds and peak RSS.

The core benchmark's protocol (bench/bench_core.py): calibration 32 x 512 tokens of wikitext-2/valid.txt, seed 0;
perplexity on the first 40 x 512 windows of wikitext-2-raw/wiki.test.raw. Each row runs in its own
`prunelab prune` process (so peak RSS is its own) and writes its JSON as soon as it is done; an existing row is
skipped, so an interrupted run resumes. A method that is not registered (RIA before it is merged) is skipped with
a note. Rehearse with tiny sizes only, e.g. `--calib-samples 2 --ppl-windows 1`; time it on a quiet machine.

    python bench/bench_methods.py --shared ../shared --out bench/out/methods
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench_core import run

from prunelab._util import write_json_atomic
from prunelab.pruning import METHODS

LEVELS = ["50%", "60%", "70%", "2:4", "4:8"]
STAGES = {"alone": [], "dsnot": ["--refine", "dsnot"], "reconstruct": ["--reconstruct"],
          "both": ["--refine", "dsnot", "--reconstruct"]}  # fmt: skip


DEFAULT_METHODS = ["wanda", "sparsegpt", "ria"]


def level_tag(level: str) -> str:
    """A level as it appears in row file names: 50% -> 50, 2:4 -> 2of4 (bench/table_methods.py reads them back)."""
    return level.replace(":", "of").rstrip("%")


def level_flags(level: str) -> list[str]:
    return ["--pattern", level] if ":" in level else ["--sparsity", str(float(level.rstrip("%")) / 100)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default="../shared", help="folder holding data/wikitext-2*/")
    ap.add_argument("--out", default="bench/out/methods")
    ap.add_argument("--model", default=None, help="default: prunelab's default model (SmolLM2-135M)")
    ap.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    ap.add_argument("--levels", nargs="+", default=LEVELS, choices=LEVELS)
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--ppl-windows", type=int, default=40)
    ap.add_argument("--reconstruct-steps", type=int, default=None, help="default: the config's")
    ap.add_argument("--reconstruct-target", default="block", choices=["block", "model"],
                    help="reconstruct: dense block on pruned inputs, or the dense model's hidden states; rows not "
                    "'block' are named with it")  # fmt: skip
    ap.add_argument("--allocation", default="uniform", help="layer-wise allocation (e.g. alpha, owl); rows not "
                    "uniform are named with it")  # fmt: skip
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    calib = f"{args.shared}/data/wikitext-2/valid.txt"
    test = f"wikitext2:{args.shared}/data/wikitext-2-raw/wiki.test.raw"
    model = ["--model", args.model] if args.model else []
    cli = [sys.executable, "-m", "prunelab.cli", "-q"]
    common = ["--seqlen", str(args.seqlen), "--max-windows", str(args.ppl_windows)]

    dense_json = out / "dense.json"
    if not dense_json.exists():
        run([*cli, "eval", *model, "--ppl", test, *common, "--json", str(dense_json)])
    rows = []
    for method in args.methods:
        if method not in METHODS:
            print(f"skipping method '{method}': not registered in this tree", file=sys.stderr)
            continue
        for level in args.levels:
            for stage in args.stages:
                name = f"{method}-{level_tag(level)}-{stage}"
                rec = "--reconstruct" in STAGES[stage]
                if args.allocation != "uniform":
                    name += f"-{args.allocation}"
                if rec and args.reconstruct_target != "block":
                    name += f"-target{args.reconstruct_target}"
                target = out / f"{name}.json"
                flags = list(STAGES[stage])
                if args.reconstruct_steps and rec:
                    flags += ["--reconstruct-steps", str(args.reconstruct_steps)]
                if rec and args.reconstruct_target != "block":
                    flags += ["--reconstruct-target", args.reconstruct_target]
                if args.allocation != "uniform":
                    flags += ["--allocation", args.allocation]
                if not target.exists():
                    run([*cli, "prune", *model, "--method", method, *level_flags(level), "--calib", calib,
                         "--calib-samples", str(args.calib_samples), "--calib-seqlen", str(args.seqlen), "--ppl",
                         test, *common, "--no-eval-before", *flags, "--json", str(target)])  # fmt: skip
                r = json.loads(target.read_text())
                rows.append({"method": method, "level": level, "stages": stage, "allocation": args.allocation,
                             "reconstruct_target": args.reconstruct_target if rec else None,
                             "ppl": next(iter(r["perplexity"].values())), "achieved": r["achieved_sparsity"],
                             "prune_s": r["prune_seconds"], "peak_rss_mb": r["peak_rss_mb"],
                             "recipe": r["recipe"]})  # fmt: skip

    dense = json.loads(dense_json.read_text())
    dense_ppl = next(iter(dense["perplexity"].values()))
    print(f"{'method':10s} {'level':6s} {'stages':12s} {'ppl':>10s} {'achieved':>9s} {'prune s':>8s} {'RSS MiB':>8s}")
    print(f"{'dense':10s} {'-':6s} {'-':12s} {dense_ppl:10.3f} {0:9.4f} {'-':>8s} {dense['peak_rss_mb']:8.0f}")
    for r in rows:
        print(f"{r['method']:10s} {r['level']:6s} {r['stages']:12s} {r['ppl']:10.3f} {r['achieved']:9.4f} "
              f"{r['prune_s']:8.1f} {r['peak_rss_mb']:8.0f}")  # fmt: skip
    summary = {"dense_ppl": dense_ppl, "rows": rows, "time": time.strftime("%Y-%m-%d %H:%M"),
               "protocol": {"calib": calib, "calib_samples": args.calib_samples, "seqlen": args.seqlen,
                            "ppl": test, "ppl_windows": args.ppl_windows}}  # fmt: skip
    write_json_atomic(out / "summary.json", summary)


if __name__ == "__main__":
    main()
