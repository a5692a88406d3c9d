"""What pruning buys on this machine: SmolLM2-135M dense vs Wanda 50% vs Wanda 2:4, over separate runs.

    nice -n 10 python bench/bench_measure.py --runs 3 --threads 1 --out bench/out/measure

Each pruned model is made once (load, Wanda with 8 x 512 tokens of Shakespeare, seed 0: small, because timing and
not quality is measured here) in its own process, which measures the prune phase's peak memory, and saved as a
plain Hugging Face folder. Then every (model, run) is benchmarked in a fresh process with
`prunelab.api.bench_job`, runs interleaved across models so slow drifts of the shared machine hit all alike: the
spread across runs includes everything that differs between invocations, and the inference memory is that of a
served model, not of a process that has just pruned. Prints one table: per metric the median of the per-run
medians and [min, max] across runs; every run's JSON is kept next to it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

CONFIGS: dict[str, dict[str, Any] | None] = {
    "dense": None,
    "wanda-50%": {"method": "wanda", "sparsity": 0.5},
    "wanda-2:4": {"method": "wanda", "pattern": "2:4"},
}


def matmul_control(threads: int, repeats: int = 15) -> str:
    """Kernel-level control: the same `F.linear` with a dense weight and with 50% / 2:4 zeros, interleaved in one
    process, wall and CPU time. If zeros made dense kernels faster, it would show here first."""
    import time

    import torch
    import torch.nn.functional as F

    from prunelab.measurement.timing import summarize

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    lines = ["| shape (out x in), tokens | weight | wall ms | CPU ms |", "|---|---|---|---|"]
    for out_f, in_f, tokens in [(1536, 576, 512), (576, 1536, 512), (1536, 576, 1)]:
        x = torch.randn(tokens, in_f, generator=gen)
        dense = torch.randn(out_f, in_f, generator=gen)
        unstructured = torch.where(torch.rand(dense.shape, generator=gen) < 0.5, 0.0, dense)
        two_four = dense.clone()
        groups = two_four.view(-1, 4)
        groups.scatter_(1, groups.abs().argsort(dim=1)[:, :2], 0.0)
        weights = {"dense": dense, "50% zeros": unstructured, "2:4 zeros": two_four}
        reps = 20 if tokens > 1 else 2000  # one-token products take microseconds: time a batch of them
        wall: dict[str, list[float]] = {k: [] for k in weights}
        cpu: dict[str, list[float]] = {k: [] for k in weights}
        for _ in range(repeats):
            for name, w in weights.items():  # interleaved: machine drift hits every weight alike
                c0, t0 = time.process_time(), time.perf_counter()
                for _ in range(reps):
                    F.linear(x, w)
                wall[name].append((time.perf_counter() - t0) / reps * 1e3)
                cpu[name].append((time.process_time() - c0) / reps * 1e3)
        for name in weights:
            w_s, c_s = summarize(wall[name]), summarize(cpu[name])
            lines.append(
                f"| {out_f} x {in_f}, {tokens} | {name} | {w_s.median:.3f} (IQR {w_s.iqr:.3f}) "
                f"| {c_s.median:.3f} (IQR {c_s.iqr:.3f}) |"
            )
    return "\n".join(lines)


def prune_child(name: str, out: Path, folder: Path) -> None:
    from prunelab import load_model, prune
    from prunelab._util import write_json_atomic
    from prunelab.config import PruneConfig
    from prunelab.measurement.memory import PeakMemory
    from prunelab.models import save_model

    cfg = PruneConfig(**CONFIGS[name], calib="shakespeare", calib_samples=8, calib_seqlen=512, seed=0)
    lm = load_model(None)
    with PeakMemory("prune") as mem:
        result = prune(lm.model, cfg, tokenizer=lm.tokenizer)
    meta = {k: v for k, v in result.to_dict().items() if k != "layers"}
    save_model(lm.model, lm.tokenizer, folder, {"config": cfg.model_dump(), **meta}, overwrite=True)
    write_json_atomic(out, {"prune_memory": mem.to_dict(), **meta})


def bench_child(folder: Path | None, out: Path, args: argparse.Namespace) -> None:
    from prunelab import api
    from prunelab.config import BenchConfig, ModelConfig

    cfg = BenchConfig(
        prompt_lens=args.prompt_len,
        gen_len=args.gen_len,
        batches=args.batch,
        repeats=args.repeats,
        warmup=args.warmup,
        threads=args.threads,
        energy=args.energy,
        country=args.country,
    )
    api.bench_job(cfg, ModelConfig(model=str(folder) if folder else args.model), json_path=str(out))


def _slug(name: str) -> str:
    return name.replace(":", "-").replace("%", "")


def _get(r: dict[str, Any], path: str) -> float | None:
    cur: Any = r
    for key in path.split("."):
        if not isinstance(cur, dict) or key not in cur:
            return None
        cur = cur[key]
    return cur


def table(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> str:
    p0, p1 = args.prompt_len[0], args.prompt_len[-1]
    rows = [
        (f"prefill {p0} tok (ms)", f"latency.prefill_ms.{p0}.median", 1, "{:.0f}"),
        (f"prefill {p1} tok (ms)", f"latency.prefill_ms.{p1}.median", 1, "{:.0f}"),
        (f"prefill {p0} tok, CPU (ms)", f"latency.prefill_cpu_ms.{p0}.median", 1, "{:.0f}"),
        (f"prefill {p1} tok, CPU (ms)", f"latency.prefill_cpu_ms.{p1}.median", 1, "{:.0f}"),
        ("decode (tok/s)", "latency.decode_tokens_per_s.median", 1, "{:.2f}"),
        ("generate CPU ms/token", "latency.generate_cpu_ms_per_token.1.median", 1, "{:.1f}"),
        *[
            (f"throughput b{b} (tok/s)", f"latency.throughput_tokens_per_s.{b}.median", 1, "{:.2f}")
            for b in args.batch
            if b != 1
        ],
        ("peak RSS inference (MiB)", "memory.phases.inference.peak_rss_mb", 1, "{:.0f}"),
        ("peak RSS load (MiB)", "memory.phases.load.peak_rss_mb", 1, "{:.0f}"),
        ("peak RSS prune, once (MiB)", "prune.prune_memory.peak_rss_mb", 1, "{:.0f}"),
        ("prune time, once (s)", "prune.prune_seconds", 1, "{:.0f}"),
        ("non-zero params (M)", "size.nonzero_params", 1e-6, "{:.1f}"),
        ("dense fp32 (MB)", "size.dense_bytes", 1e-6, "{:.1f}"),
        ("compact fp32 (MB)", "size.compact_bytes", 1e-6, "{:.1f}"),
        ("dense fp16 (MB)", "size.float16.dense_bytes", 1e-6, "{:.1f}"),
        ("compact fp16 (MB)", "size.float16.compact_bytes", 1e-6, "{:.1f}"),
        ("energy J/token [est.]", "energy.joules_per_token", 1, "{:.3f}"),
        ("energy J/1k prefill [est.]", "energy.joules_per_1k_prefill_tokens", 1, "{:.2f}"),
        ("gCO2eq/1k tokens [est.]", "carbon.g_co2eq_per_1k_tokens", 1, "{:.4f}"),
        ("meter overhead (frac)", "energy.overhead_fraction", 1, "{:.1e}"),
    ]
    names = list(results)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, path, scale, fmt in rows:
        cells = []
        for name in names:
            vals = [v * scale for r in results[name] if (v := _get(r, path)) is not None]
            if not vals:
                cells.append("-")
            elif max(vals) == min(vals):
                cells.append(fmt.format(vals[0]))
            else:
                med = statistics.median(vals)
                cells.append(f"{fmt.format(med)} [{fmt.format(min(vals))}, {fmt.format(max(vals))}]")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--prompt-len", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--gen-len", type=int, default=32)
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--energy", default="auto")
    ap.add_argument("--country", default=None)
    ap.add_argument("--out", type=Path, default=Path("bench/out/measure"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-folder", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-config", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--table-only", action="store_true", help="print the table from existing JSON files")
    ap.add_argument("--matmul-only", action="store_true", help="only the kernel-level dense-vs-zeros control")
    args = ap.parse_args()

    if args.matmul_only:
        print(matmul_control(args.threads))
        return 0

    if args.child == "prune":
        prune_child(args.child_config, args.child_out, args.child_folder)
        return 0
    if args.child == "bench":
        bench_child(args.child_folder, args.child_out, args)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    forwarded = [a for a in sys.argv[1:] if a != "--table-only"]
    folders: dict[str, Path | None] = {}
    for name in args.configs:
        folders[name] = None if CONFIGS[name] is None else args.out / "models" / _slug(name)
        prune_json = args.out / f"{_slug(name)}-prune.json"
        if folders[name] is not None and not args.table_only and not (folders[name] / "config.json").is_file():
            print(f"pruning: {name}", file=sys.stderr, flush=True)
            cmd = [sys.executable, __file__, *forwarded, "--child", "prune", "--child-out", str(prune_json)]
            subprocess.run([*cmd, "--child-folder", str(folders[name]), "--child-config", name], check=True)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in args.configs}
    for run in range(args.runs):
        for name in args.configs:  # interleaved, so slow drifts of the machine hit every model alike
            path = args.out / f"{_slug(name)}-run{run}.json"
            if not args.table_only:
                print(f"run {run + 1}/{args.runs}: {name}", file=sys.stderr, flush=True)
                cmd = [sys.executable, __file__, *forwarded, "--child", "bench", "--child-out", str(path)]
                if folders[name] is not None:
                    cmd += ["--child-folder", str(folders[name])]
                subprocess.run(cmd, check=True)
            if path.is_file():
                r = json.loads(path.read_text())
                prune_json = args.out / f"{_slug(name)}-prune.json"
                if prune_json.is_file():
                    r["prune"] = json.loads(prune_json.read_text())
                results[name].append(r)
    print(table(results, args))
    if not args.table_only:
        print("\n" + matmul_control(args.threads))
    hw = next(r for rs in results.values() for r in rs)["hardware"]
    print(
        f"\n{hw['cpu']}, {hw['cpu_count']} CPUs, {hw['memory_total_mb'] / 1024:.0f} GiB, torch {hw['torch']}, "
        f"{hw['torch_threads']} thread(s), {hw['dtype']}; energy source: "
        f"{next(r for rs in results.values() for r in rs)['energy']['energy_source']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
