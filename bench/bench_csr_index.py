"""CSR index width on a CPU: torch's default int64 indices against the int32 ones `runtime.kernels.to_csr` makes.

Why it matters: a decode token reads every stored weight once, so a CSR product pays values (4 bytes) plus column
indices (8 bytes as int64, 4 as int32) per kept weight; torch's int32 CSR products also take a faster path. One
token (matrix-vector), each SmolLM2 Linear shape, `--copies` layers cycled so the weights come from memory, the
three kernels interleaved in every round; us per token per layer, median of the rounds. Run on a quiet machine:

    python bench/bench_csr_index.py --threads 2
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable

import torch

from prunelab._util import environment, write_json_atomic
from prunelab.measurement.timing import set_threads, summarize, time_runs
from prunelab.runtime import kernels as K

SHAPES = ((576, 576), (576, 192), (576, 1536), (1536, 576))  # (in, out): q/o, k/v, gate/up, down


def _cycle(mats: list[torch.Tensor], x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        for m in mats:
            torch.mv(m, x)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sparsities", nargs="*", type=float, default=[0.5, 0.7, 0.8])
    ap.add_argument("--copies", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default="bench/results/csr_index.json")
    args = ap.parse_args()
    threads = set_threads(args.threads)
    warnings.simplefilter("ignore", UserWarning)  # torch's "sparse CSR is beta"
    gen = torch.Generator().manual_seed(0)
    rows = []
    print(f"{'shape (in x out)':16s} {'sparsity':>8s} {'dense':>8s} {'csr int64':>10s} {'csr int32':>10s} "
          f"{'int32 x dense':>13s}")  # fmt: skip
    for in_f, out_f in SHAPES:
        for s in args.sparsities:
            ws = []
            for _ in range(args.copies):
                w = torch.randn(out_f, in_f, generator=gen)
                w[torch.rand(out_f, in_f, generator=gen) < s] = 0.0
                ws.append(w)
            c64 = [w.to_sparse_csr() for w in ws]
            c32 = [K.to_csr(w) for w in ws]
            assert c32[0].col_indices().dtype == torch.int32
            x = torch.randn(in_f, generator=gen)
            runs = {k: _cycle(mats, x) for k, mats in (("dense", ws), ("csr_int64", c64), ("csr_int32", c32))}
            times: dict[str, list[float]] = {k: [] for k in runs}
            for _ in range(args.rounds):
                for k, fn in runs.items():
                    seconds, _ = time_runs(fn, 1, args.repeats)
                    times[k].append(summarize(seconds).median * 1e6 / args.copies)
            med = {k: summarize(v) for k, v in times.items()}
            row = {"shape": f"{in_f}x{out_f}", "sparsity": s,
                   **{f"{k}_us": m.median for k, m in med.items()}, **{f"{k}_iqr_us": m.iqr for k, m in med.items()},
                   "int32_speedup_vs_dense": med["dense"].median / med["csr_int32"].median,
                   "int32_speedup_vs_int64": med["csr_int64"].median / med["csr_int32"].median}  # fmt: skip
            rows.append(row)
            print(f"{row['shape']:16s} {s:8.2f} {row['dense_us']:8.1f} {row['csr_int64_us']:10.1f} "
                  f"{row['csr_int32_us']:10.1f} {row['int32_speedup_vs_dense']:13.2f}", flush=True)  # fmt: skip
    write_json_atomic(args.json, {"threads": threads, "copies": args.copies, "rounds": args.rounds,
                                  "environment": environment(), "rows": rows})  # fmt: skip
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
