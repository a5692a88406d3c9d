"""One-off A/B behind bench/RESULTS.md "Third measurement: the fused kernel": SmolLM2-135M decode at batch 1, dense
against activation sparsity run by the stock kernels (auto without `fused`) and by auto with `fused`, in one
process, interleaved, several rounds. Run from the repository root on a quiet machine:

    python bench/oneoff/fused_vs_stock.py --levels 0.05 0.4 0.5 --rounds 5

Level 0.05 keeps ~95% of the inputs: with `fused` it shows what the kernel alone buys against torch's dense
Linear, so the share of the speedup that is sparsity (fused 0.4 / fused 0.05) is visible beside the share that is a
better batch-1 matrix-vector product. Uniform allocation, the model-level protocol of bench_activation_sparsity.py
(calibration 16 x 512 of wikitext-2/valid.txt, prompt 64, 64 new tokens). Writes bench/results/fused_vs_stock.json.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Any

import torch

from prunelab import data, load_model
from prunelab._util import environment, write_json_atomic
from prunelab.measurement import latency
from prunelab.measurement.timing import set_threads, summarize
from prunelab.runtime import apply_activation_sparsity, calibrate_thresholds, fused


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib", default="../shared/data/wikitext-2/valid.txt")
    ap.add_argument("--levels", nargs="+", type=float, default=[0.05, 0.4, 0.5])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--gen-len", type=int, default=64)
    ap.add_argument("--model", default=None)
    ap.add_argument("--calib-samples", type=int, default=16)
    ap.add_argument("--json", default="bench/results/fused_vs_stock.json")
    args = ap.parse_args()
    set_threads(args.threads)
    if not fused.available():
        raise SystemExit(f"fused kernel unavailable: {fused.reason()}")
    lm = load_model(args.model)
    model = lm.model
    calib = data.calibration_data(lm.tokenizer, args.calib, args.calib_samples, 512, seed=0)
    table = calibrate_thresholds(model, calib)

    def decode() -> float:
        measured, _ = latency.decode(model, args.prompt_len, args.gen_len, warmup=1, repeats=1)
        return measured.stats.median

    settings = [("dense", None, None)]
    for level in args.levels:
        settings += [(f"stock {level:g}", level, False), (f"fused {level:g}", level, True)]
    speeds: dict[str, list[float]] = {name: [] for name, _, _ in settings}
    kernels: dict[str, Any] = {}
    for r in range(args.rounds):
        for name, level, with_fused in settings:
            if level is None:
                speeds[name].append(decode())
                continue
            with contextlib.nullcontext() if with_fused else fused.switched_off("stock run"):
                handle = apply_activation_sparsity(model, table, level, kernels="auto")
                try:
                    speeds[name].append(decode())
                    kernels.setdefault(name, handle.info["kernels_by_shape"])
                finally:
                    handle.remove()
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in speeds.items()), flush=True)
    dense = summarize(speeds["dense"]).median
    rows = {}
    for name, values in speeds.items():
        s = summarize(values)
        rows[name] = {"tokens_per_s": s.to_dict(), "speedup_vs_dense": s.median / dense,
                      "rounds_speedup": [a / b for a, b in zip(values, speeds["dense"], strict=True)],
                      "kernels_by_shape": kernels.get(name)}  # fmt: skip
    print(f"\n{'setting':12s} {'tok/s':>8s} {'IQR':>6s} {'x dense':>8s}  kernels (rows 1)")
    for name, row in rows.items():
        ks = row["kernels_by_shape"] or {}
        k1 = ", ".join(f"{shape} {by.get(1, by.get('1', '?'))}" for shape, by in ks.items())
        t = row["tokens_per_s"]
        print(f"{name:12s} {t['median']:8.2f} {t['iqr']:6.2f} {row['speedup_vs_dense']:8.3f}  {k1}")
    write_json_atomic(args.json, {"rows": rows, "args": vars(args), "time": time.strftime("%Y-%m-%d %H:%M"),
                                  "environment": environment(), "torch_threads": torch.get_num_threads()})  # fmt: skip


if __name__ == "__main__":
    main()
