"""How far above the two-pass floor SparseGPT must be before any solve: the cost of its Hessian pass.

SparseGPT's sequential protocol runs each block twice (capture with statistics, then propagation with the
pruned weights); the floor is two plain passes. Its capture pass also accumulates X^T X for every distinct
layer input, which Wanda's squared-norm pass does not. This times, on one block of the model with the real
calibration inputs, interleaved for several rounds in one process: a plain block pass, the statistics pass
with Wanda's statistic and with SparseGPT's Hessian. The lower bound on SparseGPT's prune time over the floor,
with a free solve, is (Hessian pass + plain pass) / (2 x plain pass).

    python bench/bench_hessian_share.py --calib ../shared/data/wikitext-2/valid.txt \
        --json bench/results/hessian_share.json
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

from prunelab import data, load_model
from prunelab._util import write_json_atomic
from prunelab.calibration import (
    Hessian,
    SquaredNorm,
    capture_block_inputs,
    collect_statistics,
    module_device,
    run_block,
)
from prunelab.models import block_linears, find_blocks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="default: prunelab's default model")
    ap.add_argument("--calib", default="../shared/data/wikitext-2/valid.txt")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--block", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    windows = data.calibration_data(lm.tokenizer, args.calib, args.samples, args.seqlen, seed=0)
    _, blocks = find_blocks(lm.model)
    inputs = capture_block_inputs(lm.model, blocks[0], windows, batch_size=1)
    for b in blocks[: args.block]:  # dense propagation up to the chosen block
        run_block(b, inputs, keep_outputs=True)
    block = blocks[args.block]
    layers = block_linears(block)
    device = module_device(block)
    cases: dict[str, Callable[[], object]] = {
        "plain pass": lambda: run_block(block, inputs, keep_outputs=False),
        "squared-norm pass (Wanda)": lambda: collect_statistics(
            block, layers, inputs, lambda m: SquaredNorm(m.in_features, device)
        ),
        "Hessian pass (SparseGPT)": lambda: collect_statistics(
            block, layers, inputs, lambda m: Hessian(m.in_features, device)
        ),
    }
    for fn in cases.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.rounds):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    plain = med["plain pass"]
    rows = []
    print(
        f"block {args.block} of {len(blocks)}, {args.samples} x {args.seqlen} tokens, "
        f"{args.threads} threads, {args.rounds} rounds"
    )
    print("| pass | median ms | min-max ms | x plain pass | bound on prune time / floor |")
    print("|---|---:|---:|---:|---:|")
    for name, v in times.items():
        bound = (med[name] + plain) / (2 * plain)
        rows.append(
            {
                "pass": name,
                "median_s": med[name],
                "min_s": min(v),
                "max_s": max(v),
                "x_plain": med[name] / plain,
                "bound_x_floor": bound,
            }
        )
        print(
            f"| {name} | {med[name] * 1e3:.1f} | {min(v) * 1e3:.1f}-{max(v) * 1e3:.1f} "
            f"| {med[name] / plain:.3f} | {bound:.3f} |"
        )
    if args.json:
        meta = {
            "model": lm.base_model_record(),
            "block": args.block,
            "samples": args.samples,
            "seqlen": args.seqlen,
            "threads": args.threads,
            "rounds": args.rounds,
            "machine": platform.processor() or platform.machine(),
            "date": time.strftime("%Y-%m-%d"),
        }
        write_json_atomic(args.json, {"meta": meta, "rows": rows})


if __name__ == "__main__":
    main()
