"""Prune speed against the physical floor of the sequential protocol, in one quiet process.

The floor is two forward passes of the decoder (no lm_head) over the calibration tokens, one window per forward
as the engine runs on a CPU. Each method starts from the dense weights (restored from a CPU copy) and is timed
end to end (capture, statistics, pruning, propagation). The floor is measured before and after the methods.

    python bench/bench_core_speed.py --calib ../shared/data/wikitext-2/valid.txt
"""

from __future__ import annotations

import argparse
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
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    lm = load_model()
    windows = data.calibration_data(lm.tokenizer, args.calib, args.samples, args.seqlen, seed=0)
    dense = {k: v.clone() for k, v in lm.model.state_dict().items()}
    floors = [floor_seconds(lm.model, windows)]
    rows = []
    for entry in args.configs:
        method, pattern = entry.split(":", 1)
        lm.model.load_state_dict(dense)
        cfg = PruneConfig(
            method=method,
            pattern=pattern,
            sparsity=0.5 if pattern == "unstructured" else None,
            calib_samples=args.samples,
            calib_seqlen=args.seqlen,
        )
        start = time.perf_counter()
        result = prune(lm.model, cfg, calib=windows)
        rows.append({"config": entry, "seconds": time.perf_counter() - start, "achieved": result.achieved_sparsity})
    floors.append(floor_seconds(lm.model, windows))
    floor = sum(floors) / 2
    print(f"threads {torch.get_num_threads()}, calibration {args.samples} x {args.seqlen} tokens")
    print(f"floor (2 decoder passes): {floor:.1f} s (before {floors[0]:.1f} s, after {floors[1]:.1f} s)")
    print(f"{'config':24s} {'prune s':>8s} {'x floor':>8s}")
    for r in rows:
        print(f"{r['config']:24s} {r['seconds']:8.1f} {r['seconds'] / floor:8.2f}")
    if args.json:
        write_json_atomic(args.json, {"floor_s": floor, "floors": floors, "rows": rows})


if __name__ == "__main__":
    main()
