"""Prune speed against the physical floor of the sequential protocol, in one quiet process.

The floor is two forward passes of the decoder (no lm_head) over the calibration tokens, one window per forward
as the engine runs on a CPU. Each method starts from the dense weights (restored from a CPU copy) and is timed
end to end (capture, statistics, pruning, propagation). The floor is measured before and after the methods.

    python bench/bench_core_speed.py --calib ../shared/data/wikitext-2/valid.txt

A config is METHOD:PATTERN with optional method options after `@` (comma-separated KEY=VALUE), so an A/B of one
option runs interleaved in this process: `--configs sparsegpt:2:4@hessian_dtype=float32 sparsegpt:2:4 --rounds 3`
times both configs in each of 3 rounds (floor before the first and after every round) and prints the median and
range of each config.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from prunelab import PruneConfig, data, load_model, prune
from prunelab._util import write_json_atomic


def floor_seconds(model: torch.nn.Module, windows: torch.Tensor) -> float:
    base = model.get_decoder()
    with torch.no_grad():
        base(input_ids=windows[:1], use_cache=False)
        start = time.perf_counter()
        for _ in range(2):
            for i in range(windows.shape[0]):
                base(input_ids=windows[i : i + 1], use_cache=False)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib", default="../shared/data/wikitext-2/valid.txt")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument(
        "--configs",
        nargs="*",
        default=[
            "wanda:unstructured",
            "wanda:2:4",
            "sparsegpt:unstructured",
            "sparsegpt:2:4",
            "magnitude:unstructured",
        ],
    )
    ap.add_argument("--rounds", type=int, default=1, help="time every config this many times, interleaved")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    lm = load_model()
    windows = data.calibration_data(lm.tokenizer, args.calib, args.samples, args.seqlen, seed=0)
    dense = {k: v.clone() for k, v in lm.model.state_dict().items()}
    floors = [floor_seconds(lm.model, windows)]
    rows = []
    for rnd in range(args.rounds):
        for entry in args.configs:
            spec, _, opts = entry.partition("@")
            method, pattern = spec.split(":", 1)
            options = dict(kv.split("=", 1) for kv in opts.split(",")) if opts else {}
            lm.model.load_state_dict(dense)
            cfg = PruneConfig(
                method=method,
                pattern=pattern,
                sparsity=0.5 if pattern == "unstructured" else None,
                calib_samples=args.samples,
                calib_seqlen=args.seqlen,
                options=options,
            )
            start = time.perf_counter()
            result = prune(lm.model, cfg, calib=windows)
            seconds = time.perf_counter() - start
            rows.append({"config": entry, "round": rnd, "seconds": seconds, "achieved": result.achieved_sparsity,
                         "hessian_matmul": result.extra.get("hessian_matmul")})  # fmt: skip
        floors.append(floor_seconds(lm.model, windows))
    floor = statistics.median(floors)
    print(f"threads {torch.get_num_threads()}, calibration {args.samples} x {args.seqlen} tokens, {args.rounds} rounds")
    print(f"floor (2 decoder passes): median {floor:.1f} s of {', '.join(f'{f:.1f}' for f in floors)}")
    print(f"{'config':40s} {'prune s':>8s} {'range':>13s} {'x floor':>8s}")
    summary = []
    for entry in args.configs:
        times = [r["seconds"] for r in rows if r["config"] == entry]
        med = statistics.median(times)
        summary.append({"config": entry, "median_s": med, "min_s": min(times), "max_s": max(times),
                        "x_floor": med / floor})  # fmt: skip
        print(f"{entry:40s} {med:8.1f} {min(times):6.1f}-{max(times):<6.1f} {med / floor:8.2f}")
    if args.json:
        write_json_atomic(
            args.json,
            {
                "floor_s": floor,
                "floors": floors,
                "rows": rows,
                "summary": summary,
                "threads": torch.get_num_threads(),
                "time": time.strftime("%Y-%m-%d %H:%M"),
            },
        )


if __name__ == "__main__":
    main()
