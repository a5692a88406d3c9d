"""Core benchmark: SmolLM2-135M, dense vs magnitude / Wanda / SparseGPT at 50% unstructured and 2:4.

Each configuration runs in its own `prunelab prune` process so that peak RSS is that configuration's own. The
speed floor of the sequential protocol (two forward passes of the decoder over the calibration tokens, one window
per forward as the engine does on a CPU) is measured in a separate process before and after the runs and printed
beside each method.

    python bench/bench_core.py --shared ../shared --out bench/out/core
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from prunelab._util import write_json_atomic

CONFIGS = [
    ("magnitude", "unstructured"),
    ("wanda", "unstructured"),
    ("sparsegpt", "unstructured"),
    ("magnitude", "2:4"),
    ("wanda", "2:4"),
    ("sparsegpt", "2:4"),
]

FLOOR_CODE = """
import json, sys, time, torch
from prunelab import load_model, data
lm = load_model()
windows = data.calibration_windows(data.tokenize(lm.tokenizer, data.load_text(sys.argv[1], "calib").text),
                                   int(sys.argv[2]), int(sys.argv[3]), 0)
base = lm.model.model
with torch.no_grad():
    base(input_ids=windows[:1], use_cache=False)  # warm-up
    times = []
    for _ in range(2):
        t = time.perf_counter()
        for i in range(windows.shape[0]):
            base(input_ids=windows[i : i + 1], use_cache=False)
        times.append(time.perf_counter() - t)
print(json.dumps({"two_passes_s": sum(times), "passes": times}))
"""


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def floor(calib: str, samples: int, seqlen: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", FLOOR_CODE, calib, str(samples), str(seqlen)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["two_passes_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default="../shared", help="folder holding data/wikitext-2*/")
    ap.add_argument("--out", default="bench/out/core")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--only", nargs="*", default=None, help="method:pattern entries to run (default all)")
    ap.add_argument("--full", default="wanda:unstructured", help="config also evaluated on all windows at 2048")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    calib = f"{args.shared}/data/wikitext-2/valid.txt"
    test = f"wikitext2:{args.shared}/data/wikitext-2-raw/wiki.test.raw"
    common = ["--seqlen", str(args.seqlen), "--max-windows", str(args.windows)]

    floors = []
    floors.append(floor(calib, args.samples, args.seqlen))
    dense_json = out / "dense.json"
    if not dense_json.exists():
        run(["prunelab", "-q", "eval", "--ppl", test, *common, "--json", str(dense_json)])
    for method, pattern in CONFIGS:
        key = f"{method}:{pattern}"
        if args.only and key not in args.only:
            continue
        name = f"{method}-{pattern.replace(':', 'of')}"
        target = out / f"{name}.json"
        if target.exists():
            continue
        cmd = [
            "prunelab",
            "-q",
            "prune",
            "--method",
            method,
            "--pattern",
            pattern,
            "--calib",
            calib,
            "--calib-samples",
            str(args.samples),
            "--calib-seqlen",
            str(args.seqlen),
            "--ppl",
            test,
            *common,
            "--no-eval-before",
            "--json",
            str(target),
        ]
        if pattern == "unstructured":
            cmd += ["--sparsity", "0.5"]
        if key == args.full:
            cmd += ["--output", str(out / f"model-{name}"), "--overwrite"]
        run(cmd)
    floors.append(floor(calib, args.samples, args.seqlen))
    floor_s = statistics.mean(floors)

    full_rows = []
    if args.full:
        name = args.full.replace(":", "-").replace("2of4", "2:4").replace(":", "of")
        for label, model in (("dense", None), (args.full, out / f"model-{name}")):
            fj = out / f"full2048-{label.replace(':', '-')}.json"
            if not fj.exists() and (model is None or model.exists()):
                cmd = ["prunelab", "-q", "eval", "--ppl", test, "--seqlen", "2048", "--json", str(fj)]
                if model is not None:
                    cmd += ["--model", str(model)]
                run(cmd)
            if fj.exists():
                r = json.loads(fj.read_text())
                ev = next(iter(r["perplexity_eval"].values()))
                full_rows.append((label, ev["perplexity"], ev["windows"], ev["seconds"]))

    dense = json.loads(dense_json.read_text())
    dense_ppl = next(iter(dense["perplexity"].values()))
    print(
        f"\nfloor (2 decoder passes over {args.samples}x{args.seqlen} calibration tokens): "
        f"{floor_s:.1f} s (before {floors[0]:.1f}, after {floors[1]:.1f})"
    )
    print(f"{'config':24s} {'ppl':>9s} {'achieved':>9s} {'prune s':>8s} {'x floor':>8s} {'peak RSS MiB':>13s}")
    print(f"{'dense':24s} {dense_ppl:9.3f} {0:9.4f} {'-':>8s} {'-':>8s} {dense['peak_rss_mb']:13.0f}")
    rows = []
    for method, pattern in CONFIGS:
        target = out / f"{method}-{pattern.replace(':', 'of')}.json"
        if not target.exists():
            continue
        r = json.loads(target.read_text())
        ppl = next(iter(r["perplexity"].values()))
        ratio = r["prune_seconds"] / floor_s
        rows.append(
            {
                "method": method,
                "pattern": pattern,
                "ppl": ppl,
                "achieved": r["achieved_sparsity"],
                "prune_s": r["prune_seconds"],
                "x_floor": ratio,
                "peak_rss_mb": r["peak_rss_mb"],
            }
        )
        print(
            f"{method + ' ' + pattern:24s} {ppl:9.3f} {r['achieved_sparsity']:9.4f} {r['prune_seconds']:8.1f} "
            f"{ratio:8.2f} {r['peak_rss_mb']:13.0f}"
        )
    for label, ppl, windows, secs in full_rows:
        print(f"all windows @2048  {label:20s} ppl {ppl:.3f} ({windows} windows, {secs:.0f} s)")
    summary = {"floor_s": floor_s, "floors": floors, "dense_ppl": dense_ppl, "rows": rows, "full2048": full_rows,
               "time": time.strftime("%Y-%m-%d %H:%M")}  # fmt: skip
    write_json_atomic(out / "summary.json", summary)


if __name__ == "__main__":
    main()
