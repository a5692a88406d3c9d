"""Activation sparsity and sparse weight kernels on a CPU: kernel level, model level, and where a decode step goes.

Run on a quiet machine (nothing else running; timings on shared cores are meaningless):

    python bench/bench_activation_sparsity.py --wikitext ../shared/data/wikitext-2-raw/wiki.test.raw \\
        --calib ../shared/data/wikitext-2/valid.txt --pruned

Sections (each can be skipped): `kernels` (time per token of each SmolLM2 Linear shape against the kept fraction
of input channels and against weight sparsity, beside the bytes-read bound; plus the row-layout experiment behind
the width-1536 case), `model` (decode tok/s at batch 1 A/B interleaved with the dense model over several rounds,
median and IQR; perplexity of the first 40 x 512 WikiText-2 windows), `profile` (torch.profiler of one decode
step). Every timing goes through prunelab.measurement (timing.time_runs / latency.decode). Writes
bench/results/activation_sparsity.json and prints tables.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from prunelab import PruneConfig, data, load_model, prune
from prunelab._util import environment, write_json_atomic
from prunelab.evaluation.perplexity import perplexity
from prunelab.measurement import latency
from prunelab.measurement.timing import set_threads, summarize, time_runs
from prunelab.runtime import apply_activation_sparsity, apply_weight_sparsity, calibrate_thresholds
from prunelab.runtime import kernels as K

SHAPES = ("576x576", "576x192", "576x1536", "1536x576")  # in x out: q/o, k/v, gate/up, down
KEEPS = (1.0, 0.75, 0.6, 0.5, 0.4, 0.25, 0.1)
WEIGHT_SPARSITIES = (0.5, 0.6, 0.7, 0.8, 0.9)
LEVELS = (0.0, 0.25, 0.4, 0.5, 0.6)


# ---------------------------------------------------------------- (a) kernels


def _median_us(fn: Any, warmup: int, repeats: int, per: int) -> float:
    seconds, _ = time_runs(fn, warmup, repeats)
    return summarize(seconds).median * 1e6 / per


def kernel_section(args: argparse.Namespace) -> dict[str, Any]:
    """Per shape: us per token of one layer, with `copies` layers cycled so the weights come from memory."""
    out: dict[str, Any] = {}
    gen = torch.Generator().manual_seed(0)
    for shape in args.shapes:
        in_f, out_f = (int(v) for v in shape.split("x"))
        weights = [torch.randn(out_f, in_f, generator=gen) for _ in range(args.copies)]
        wts = [w.t().contiguous() for w in weights]
        dense_fns = [lambda x, w=w: F.linear(x, w) for w in weights]
        row: dict[str, Any] = {"bytes_per_layer": in_f * out_f * 4, "activation": {}, "weight": {}, "layout": {}}
        for keep in args.keeps:
            times = K.measure_act_kernels(
                wts, [None] * len(wts), keep, 1, dense_fns, warmup=2, repeats=args.kernel_repeats
            )
            dense = times["dense"] * 1e6 / len(wts)
            row["activation"][f"{keep:g}"] = {
                **{k: v * 1e6 / len(wts) for k, v in times.items()},
                "bytes_bound": dense * keep,
            }
        # Which rows are gathered matters, not only how many: random kept rows, one contiguous block, every other.
        half = in_f // 2
        patterns = {
            "random": torch.randperm(in_f, generator=gen)[:half].sort().values,
            "contiguous": torch.arange(half),
            "strided": torch.arange(0, in_f, 2),
        }
        for name, idx in patterns.items():
            row["layout"][name] = _median_us(
                lambda idx=idx, wts=wts: [wt.index_select(0, idx) for wt in wts], 2, args.kernel_repeats, len(wts)
            )
        for s in args.weight_sparsities:
            pruned = [w.masked_fill(torch.rand(w.shape, generator=gen) < s, 0.0) for w in weights]
            csrs = [K.to_csr(w) for w in pruned]
            times = K.measure_weight_kernels(
                [lambda x, w=w: F.linear(x, w) for w in pruned], csrs, in_f, repeats=args.kernel_repeats
            )
            nnz = sum(c.values().numel() for c in csrs) / len(csrs)
            csr_bytes = nnz * (4 + 8) + (out_f + 1) * 8
            dense = times["dense"] * 1e6 / len(csrs)
            row["weight"][f"{s:g}"] = {
                "dense": dense,
                "csr": times["csr"] * 1e6 / len(csrs),
                "bytes_bound": dense * csr_bytes / (in_f * out_f * 4),
            }
        out[shape] = row
    return out


def print_kernels(res: dict[str, Any]) -> None:
    for shape, row in res.items():
        print(f"\n[{shape}] activation sparsity: us/token per layer (kept fraction of input channels)")
        names = [k for k in K.ACT_KERNELS if any(k in v for v in row["activation"].values())]
        print(f"{'keep':>6s} " + " ".join(f"{n:>20s}" for n in [*names, "bytes_bound"]))
        for keep, t in row["activation"].items():
            print(f"{keep:>6s} " + " ".join(f"{t.get(n, float('nan')):20.1f}" for n in [*names, "bytes_bound"]))
        print("  gather 50% of rows, by pattern (us): " + ", ".join(f"{k} {v:.1f}" for k, v in row["layout"].items()))
        print(f"[{shape}] weight sparsity: us/token per layer")
        for s, t in row["weight"].items():
            print(f"  {s:>5s}: dense {t['dense']:.1f}  csr {t['csr']:.1f}  bound {t['bytes_bound']:.1f}")


# ---------------------------------------------------------------- (b) model level


def _decode_round(model: torch.nn.Module, args: argparse.Namespace) -> float:
    measured, _ = latency.decode(model, args.prompt_len, args.gen_len, warmup=1, repeats=1)
    return measured.stats.median


def _settings(args: argparse.Namespace, model: torch.nn.Module, calib: torch.Tensor) -> list[dict[str, Any]]:
    tables = {alloc: calibrate_thresholds(model, calib, allocation=alloc) for alloc in args.allocations}
    return [
        {"name": f"act {alloc} {level:g}", "table": tables[alloc], "level": level, "allocation": alloc}
        for alloc in args.allocations
        for level in args.levels
    ]


def _apply(model: torch.nn.Module, setting: dict[str, Any], args: argparse.Namespace, prefill: str = "dense"):
    if setting.get("table") is not None:
        return apply_activation_sparsity(
            model, setting["table"], setting["level"], kernels=args.sparse_kernels, prefill=prefill
        )
    if setting.get("weights"):
        return apply_weight_sparsity(model, kernels="off" if args.sparse_kernels == "off" else "auto")
    return None


def model_rows(
    label: str,
    model: torch.nn.Module,
    settings: list[dict[str, Any]],
    windows: torch.Tensor | None,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """A/B: each round times the dense model and every setting in turn (interleaved), in this one process."""
    speeds: dict[str, list[float]] = {"dense": []}
    kernels: dict[str, Any] = {}
    for _ in range(args.rounds):
        speeds["dense"].append(_decode_round(model, args))
        for s in settings:
            handle = _apply(model, s, args)
            try:
                speeds.setdefault(s["name"], []).append(_decode_round(model, args))
                kernels[s["name"]] = handle.info if handle is not None else {}
            finally:
                if handle is not None:
                    handle.remove()
    rows = []
    base_ppl = None
    for name in ["dense", *[s["name"] for s in settings]]:
        stats = summarize(speeds[name])
        row: dict[str, Any] = {"model": label, "setting": name, "decode_tokens_per_s": stats.to_dict()}
        setting = next((s for s in settings if s["name"] == name), None)
        if windows is not None:
            handle = _apply(model, setting, args, prefill="threshold") if setting else None
            try:
                row["perplexity"] = perplexity(model, windows).perplexity
            finally:
                if handle is not None:
                    handle.remove()
            base_ppl = row["perplexity"] if name == "dense" else base_ppl
            row["ppl_ratio"] = row["perplexity"] / base_ppl
        row["speedup"] = stats.median / summarize(speeds["dense"]).median
        info = kernels.get(name, {})
        row["kernels_by_shape"] = info.get("kernels_by_shape")
        row["csr_layers"] = info.get("csr_layers")
        rows.append(row)
    return rows


def model_section(args: argparse.Namespace) -> list[dict[str, Any]]:
    lm = load_model(args.model)
    calib = data.calibration_data(lm.tokenizer, args.calib, args.calib_samples, args.calib_seqlen, seed=0)
    windows = None
    if args.wikitext:
        ids = data.tokenize(lm.tokenizer, data.load_text(f"wikitext2:{args.wikitext}").text)
        windows = data.eval_windows(ids, args.ppl_seqlen, args.ppl_windows)
    rows = model_rows("dense", lm.model, _settings(args, lm.model, calib), windows, args)
    if args.pruned:
        variants = {
            "wanda-50%": PruneConfig(method="wanda", sparsity=0.5),
            "structured-mlp-25%": PruneConfig(method="structured", sparsity=0.25, options={"target": "mlp"}),
        }
        for label, cfg in variants.items():
            m = copy.deepcopy(lm.model)
            cfg = cfg.model_copy(update={"calib_samples": args.calib_samples, "calib_seqlen": args.calib_seqlen})
            prune(m, cfg, calib=calib)
            rows += model_rows(label, m, _settings(args, m, calib), windows, args)
            del m
        for s in args.weight_model_sparsities:
            m = copy.deepcopy(lm.model)
            prune(
                m,
                PruneConfig(
                    method="wanda", sparsity=s, calib_samples=args.calib_samples, calib_seqlen=args.calib_seqlen
                ),
                calib=calib,
            )
            rows += model_rows(f"wanda-{s:.0%}", m, [{"name": "csr weights", "weights": True}], windows, args)
            del m
    return rows


def print_models(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'model':20s} {'setting':22s} {'tok/s':>8s} {'IQR':>6s} {'x dense':>8s} {'ppl':>8s} {'x ppl':>6s}")
    for r in rows:
        d = r["decode_tokens_per_s"]
        ppl = r.get("perplexity", float("nan"))
        ratio = r.get("ppl_ratio", float("nan"))
        print(
            f"{r['model']:20s} {r['setting']:22s} {d['median']:8.2f} {d['iqr']:6.2f} {r['speedup']:8.2f} "
            f"{ppl:8.2f} {ratio:6.3f}"
        )


# ---------------------------------------------------------------- (c) profile


def _category(name: str) -> str:
    if name in ("aten::mm", "aten::addmm", "aten::linear", "aten::matmul", "aten::bmm", "aten::mv"):
        return "matmul"
    if name in ("aten::embedding_bag", "aten::_embedding_bag", "aten::index_select", "aten::_sparse_csr_mm"):
        return "sparse gather"
    if "attention" in name or name in ("aten::softmax", "aten::_softmax"):
        return "attention"
    return "other ops"


def profile_section(args: argparse.Namespace) -> dict[str, Any]:
    """One decode step (1 token, cache of `prompt_len`), dense and at one level: op time by category."""
    from torch.profiler import ProfilerActivity, profile, record_function

    lm = load_model(args.model)
    model = lm.model
    calib = data.calibration_data(lm.tokenizer, args.calib, args.calib_samples, args.calib_seqlen, seed=0)
    table = calibrate_thresholds(model, calib)
    ids = latency.random_prompt(model, 1, args.prompt_len)
    head = model.get_output_embeddings()
    results: dict[str, Any] = {}
    for label, level in (("dense", None), (f"act {args.profile_level:g}", args.profile_level)):
        handle = apply_activation_sparsity(model, table, level, kernels=args.sparse_kernels) if level else None
        try:
            with torch.inference_mode():
                out = model(input_ids=ids, use_cache=True)
                past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
                ctx: list[Any] = []
                pre = head.register_forward_pre_hook(
                    lambda *_, ctx=ctx: ctx.append(record_function("lm_head").__enter__())
                )
                post = head.register_forward_hook(lambda *_, ctx=ctx: ctx.pop().__exit__(None, None, None))
                try:
                    for _ in range(2):  # warm-up
                        model(input_ids=nxt, past_key_values=copy.deepcopy(past), use_cache=True)
                    cache = copy.deepcopy(past)
                    with profile(activities=[ProfilerActivity.CPU]) as prof:
                        start = time.perf_counter()
                        model(input_ids=nxt, past_key_values=cache, use_cache=True)
                        wall = (time.perf_counter() - start) * 1e6
                finally:
                    pre.remove()
                    post.remove()
        finally:
            if handle is not None:
                handle.remove()
        cats: dict[str, float] = {}
        lm_head_us = 0.0
        for evt in prof.key_averages():
            if evt.key == "lm_head":
                lm_head_us = evt.cpu_time_total
                continue
            cats[_category(evt.key)] = cats.get(_category(evt.key), 0.0) + evt.self_cpu_time_total
        ops = sum(cats.values())
        results[label] = {
            "wall_us": wall,
            "op_self_us_by_category": cats,
            "lm_head_us": lm_head_us,
            "python_and_framework_us": max(wall - ops, 0.0),
            "top_ops": [
                (e.key, e.self_cpu_time_total)
                for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]
            ],
        }
    return results


def print_profile(res: dict[str, Any]) -> None:
    for label, r in res.items():
        cats = ", ".join(f"{k} {v / 1e3:.2f} ms" for k, v in sorted(r["op_self_us_by_category"].items()))
        print(
            f"\nprofile {label}: wall {r['wall_us'] / 1e3:.2f} ms; {cats}; lm_head (inclusive) "
            f"{r['lm_head_us'] / 1e3:.2f} ms; outside ops (Python, framework) "
            f"{r['python_and_framework_us'] / 1e3:.2f} ms"
        )


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", nargs="*", default=["kernels", "model", "profile"])
    ap.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", nargs="*", default=list(SHAPES))
    ap.add_argument("--keeps", nargs="*", type=float, default=list(KEEPS))
    ap.add_argument("--weight-sparsities", nargs="*", type=float, default=list(WEIGHT_SPARSITIES))
    ap.add_argument("--copies", type=int, default=30, help="layers per shape, cycled (weights out of cache)")
    ap.add_argument("--kernel-repeats", type=int, default=15)
    ap.add_argument("--calib", default="../shared/data/wikitext-2/valid.txt")
    ap.add_argument("--calib-samples", type=int, default=16)
    ap.add_argument("--calib-seqlen", type=int, default=512)
    ap.add_argument("--wikitext", default=None, help="path of wiki.test.raw (perplexity is skipped without it)")
    ap.add_argument("--ppl-windows", type=int, default=40)
    ap.add_argument("--ppl-seqlen", type=int, default=512)
    ap.add_argument("--levels", nargs="*", type=float, default=list(LEVELS))
    ap.add_argument("--allocations", nargs="*", default=["uniform", "greedy"])
    ap.add_argument("--sparse-kernels", default="auto")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--gen-len", type=int, default=64)
    ap.add_argument("--pruned", action="store_true", help="also Wanda-50%%, structured MLP-25%% and weight-sparse")
    ap.add_argument("--weight-model-sparsities", nargs="*", type=float, default=[0.5, 0.7, 0.8])
    ap.add_argument("--profile-level", type=float, default=0.5)
    ap.add_argument("--json", default="bench/results/activation_sparsity.json")
    args = ap.parse_args()
    args.levels = [v for v in args.levels if not math.isnan(v)]
    threads = set_threads(args.threads)
    result: dict[str, Any] = {"environment": environment(), "threads": threads, "args": vars(args)}
    if "kernels" in args.sections:
        result["kernels"] = kernel_section(args)
        print_kernels(result["kernels"])
    if "model" in args.sections:
        result["model"] = model_section(args)
        print_models(result["model"])
    if "profile" in args.sections:
        result["profile"] = profile_section(args)
        print_profile(result["profile"])
    write_json_atomic(Path(args.json), json.loads(json.dumps(result, default=str)))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
