"""Activation sparsity and sparse weight kernels on a CPU: kernel level, model level, and where a decode step goes.

Run on a quiet machine (nothing else running; timings on shared cores are meaningless):

    python bench/bench_activation_sparsity.py --wikitext ../shared/data/wikitext-2-raw/wiki.test.raw \\
        --calib ../shared/data/wikitext-2/valid.txt --pruned

Sections (each can be skipped): `kernels` (time per token of each SmolLM2 Linear shape against the kept fraction
of input channels and against weight sparsity, beside the bytes-read bound; plus the row-layout experiment behind
the width-1536 case), `model` (decode tok/s at batch 1 A/B interleaved with the dense model over several rounds,
median and IQR; perplexity of the first 40 x 512 WikiText-2 windows), `profile` (torch.profiler of one decode
step), `costs` (the per-shape kernel costs that allocation greedy-time allocates by, measured once per model and
cached beside its tables: run it on the quiet machine before `quality` builds a greedy-time table, or that
table's costs are measured wherever quality runs). Every timing goes through prunelab.measurement
(timing.time_runs / latency.decode). Writes bench/results/activation_sparsity.json and prints tables.
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
from prunelab.config.runtime import GREEDY_TOKENS
from prunelab.evaluation.perplexity import perplexity
from prunelab.measurement import latency
from prunelab.measurement.timing import set_threads, summarize, time_runs
from prunelab.runtime import apply_activation_sparsity, apply_weight_sparsity, calibrate_thresholds
from prunelab.runtime import kernels as K
from prunelab.runtime.costs import KernelCosts, measure_kernel_costs
from prunelab.runtime.thresholds import ThresholdTable

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
#
# Split in two so the slow, timing-free part can run while the machine is busy: `quality` (perplexity of every
# model x setting, prefill thresholded) and `speed` (decode A/B interleaved with the same model run dense, alone on
# the machine). Both share a cache of the pruned models and threshold tables under --cache, and write one JSON per
# row under --rows as soon as it is done, so an interrupted run resumes where it stopped.


def _variants(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """model label -> how it is made and which runtime settings run on it."""
    act_dense = [(a, lv) for a in args.allocations for lv in args.levels]
    act_pruned = [(a, lv) for a in args.pruned_allocations for lv in args.levels]
    out: dict[str, dict[str, Any]] = {"dense": {"cfg": None, "act": act_dense, "weights": False}}
    if args.pruned:
        out["wanda-50%"] = {"cfg": PruneConfig(method="wanda", sparsity=0.5), "act": act_pruned, "weights": True}
        out["structured-mlp-25%"] = {
            "cfg": PruneConfig(method="structured", sparsity=0.25, options={"target": "mlp"}),
            "act": act_pruned,
            "weights": False,
        }
        for s in args.weight_model_sparsities:
            if abs(s - 0.5) > 1e-9:
                out[f"wanda-{s:.0%}"] = {
                    "cfg": PruneConfig(method="wanda", sparsity=s), "act": [], "weights": True,
                }  # fmt: skip
    return out


def _settings_of(variant: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = [{"name": _setting_name(a, lv, args), "allocation": a, "level": lv} for a, lv in variant["act"]]
    if variant["weights"]:
        rows.append({"name": "csr weights", "weights": True})
    return rows


def _slug(*parts: str) -> str:
    return "__".join(p.replace(" ", "-").replace("%", "").replace(":", "-") for p in parts)


class ModelCache:
    """The embedded model, each pruned variant and its threshold tables, made once and kept on disk."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dir = Path(args.cache)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lm = load_model(args.model)
        self._calib: torch.Tensor | None = None

    @property
    def calib(self) -> torch.Tensor:
        if self._calib is None:
            a = self.args
            self._calib = data.calibration_data(self.lm.tokenizer, a.calib, a.calib_samples, a.calib_seqlen, seed=0)
        return self._calib

    def model(self, label: str, variant: dict[str, Any]) -> torch.nn.Module:
        if variant["cfg"] is None:
            return self.lm.model
        path = self.dir / f"{_slug(label)}.pt"
        if path.exists():
            return torch.load(path, weights_only=False)
        m = copy.deepcopy(self.lm.model)
        a = self.args
        prune(m, variant["cfg"].model_copy(update={"calib_samples": a.calib_samples, "calib_seqlen": a.calib_seqlen}),
              calib=self.calib)  # fmt: skip
        tmp = path.with_suffix(".tmp")
        torch.save(m, tmp)
        tmp.replace(path)
        return m

    def costs(self, label: str, model: torch.nn.Module) -> KernelCosts:
        """The model's kernel costs (greedy-time), measured once (alone on the machine: `--sections costs`)."""
        path = self.dir / f"{_slug(label)}.kernel_costs.json"
        if path.exists():
            return KernelCosts.from_dict(json.loads(path.read_text()), str(path))
        from prunelab.models import block_linears, find_blocks

        prefix, blocks = find_blocks(model)
        layers = {n: m for i, b in enumerate(blocks) for n, m in block_linears(b, f"{prefix}.{i}").items()}
        costs = measure_kernel_costs(layers)
        write_json_atomic(path, costs.to_dict())
        return costs

    def table(self, label: str, model: torch.nn.Module, allocation: str) -> ThresholdTable:
        a = self.args
        path = self.dir / f"{_slug(label, allocation + _search_tag(allocation, a))}.thresholds.json"
        if path.exists():
            return ThresholdTable.from_dict(json.loads(path.read_text()), str(path))
        costs = self.costs(label, model) if allocation == "greedy-time" else None
        table = calibrate_thresholds(model, self.calib, allocation=allocation, greedy_tokens=a.greedy_tokens,
                                     greedy_lazy=a.greedy_lazy, costs=costs)  # fmt: skip
        write_json_atomic(path, table.to_dict())
        return table


def _search_tag(allocation: str, args: argparse.Namespace) -> str:
    """' t512 lazy' for a greedy search off its defaults (own tables, own rows); '' otherwise."""
    if allocation == "uniform":
        return ""
    tokens = "" if args.greedy_tokens == GREEDY_TOKENS else f" t{args.greedy_tokens}"
    return tokens + (" lazy" if args.greedy_lazy else "")


def _setting_name(allocation: str, level: float, args: argparse.Namespace) -> str:
    return f"act {allocation}{_search_tag(allocation, args)} {level:g}"


def costs_section(args: argparse.Namespace) -> None:
    """Measure (and cache) each model's kernel costs, so later greedy-time calibrations need no quiet machine."""
    cache = ModelCache(args)
    for label, variant in _variants(args).items():
        costs = cache.costs(label, cache.model(label, variant))
        print(f"costs {label}: " + "; ".join(
            f"{k} dense {costs.dense[k] * 1e6:.0f} us, best at keep 0.5 "
            f"{costs.sparse[k][costs.keeps.index(0.5)] * 1e6:.0f} us" for k in costs.dense), flush=True)  # fmt: skip


def _apply(model: torch.nn.Module, setting: dict[str, Any], table: Any, kernels: Any, prefill: str = "dense"):
    if setting.get("weights"):
        return apply_weight_sparsity(model, kernels=kernels)
    return apply_activation_sparsity(model, table, setting["level"], kernels=kernels, prefill=prefill)


def _row_path(args: argparse.Namespace, kind: str, label: str, setting: str) -> Path:
    return Path(args.rows) / kind / f"{_slug(label, setting)}.json"


def quality_section(args: argparse.Namespace) -> None:
    """Perplexity of each model run dense and under each runtime setting (thresholds also on the prompt)."""
    cache = ModelCache(args)
    ids = data.tokenize(cache.lm.tokenizer, data.load_text(f"wikitext2:{args.wikitext}").text)
    windows = data.eval_windows(ids, args.ppl_seqlen, args.ppl_windows)
    for label, variant in _variants(args).items():
        todo = [s for s in [{"name": "dense"}, *_settings_of(variant, args)]
                if not _row_path(args, "quality", label, s["name"]).exists()]  # fmt: skip
        if not todo:
            continue
        model = cache.model(label, variant)
        for s in todo:
            if s.get("weights"):
                continue  # CSR runs the same weights (rounding aside): its perplexity is the dense row's
            start = time.perf_counter()
            handle = None
            if s["name"] != "dense":
                # Same maths whatever kernel runs: the dense kernel ("off") is enough for perplexity.
                handle = _apply(model, s, cache.table(label, model, s["allocation"]), "off", prefill="threshold")
            try:
                ppl = perplexity(model, windows).perplexity
                info = handle.info if handle is not None else {}
            finally:
                if handle is not None:
                    handle.remove()
            row = {"model": label, "setting": s["name"], "perplexity": ppl, "seconds": time.perf_counter() - start,
                   "model_average_sparsity": info.get("model_average"), "windows": args.ppl_windows,
                   "seqlen": args.ppl_seqlen}  # fmt: skip
            write_json_atomic(_row_path(args, "quality", label, s["name"]), row)
            print(f"quality {label:20s} {s['name']:30s} ppl {ppl:8.3f}  ({row['seconds']:.0f} s)", flush=True)


def _decode_round(model: torch.nn.Module, args: argparse.Namespace) -> float:
    measured, _ = latency.decode(model, args.prompt_len, args.gen_len, warmup=1, repeats=1)
    return measured.stats.median


def _frozen(info: dict[str, Any], setting: dict[str, Any]) -> Any:
    """The kernel choice the first (measured) apply made, replayed so later rounds skip the measurement."""
    if setting.get("weights"):
        chosen = info["kernel_by_layer"]
        return lambda name, shape, sparsity: chosen.get(name, "dense")
    by_shape = info["kernels_by_shape"]
    return lambda in_f, out_f, rows, keep: by_shape[f"{in_f}x{out_f}"].get(rows, "dense")


def speed_section(args: argparse.Namespace) -> None:
    """Decode tok/s, A/B: each round times the model dense and under every setting in turn, in this process."""
    cache = ModelCache(args)
    for label, variant in _variants(args).items():
        settings = _settings_of(variant, args)
        if all(_row_path(args, "speed", label, s["name"]).exists() for s in settings):
            continue
        model = cache.model(label, variant)
        tables = {a: cache.table(label, model, a) for a in {s["allocation"] for s in settings if "allocation" in s}}
        speeds: dict[str, list[float]] = {"dense": []}
        infos: dict[str, dict[str, Any]] = {}
        for r in range(args.rounds):
            speeds["dense"].append(_decode_round(model, args))
            for s in settings:
                table = tables.get(s.get("allocation", ""))
                kernels = "auto" if s["name"] not in infos else _frozen(infos[s["name"]], s)
                handle = _apply(model, s, table, kernels)
                try:
                    speeds.setdefault(s["name"], []).append(_decode_round(model, args))
                    infos.setdefault(s["name"], handle.info)
                finally:
                    handle.remove()
            print(f"speed {label}: round {r + 1}/{args.rounds} done", flush=True)
        dense = summarize(speeds["dense"])
        for s in settings:
            stats = summarize(speeds[s["name"]])
            info = infos[s["name"]]
            row = {"model": label, "setting": s["name"], "decode_tokens_per_s": stats.to_dict(),
                   "dense_tokens_per_s": dense.to_dict(), "speedup": stats.median / dense.median,
                   "rounds_speedup": [a / b for a, b in zip(speeds[s["name"]], speeds["dense"], strict=True)],
                   "kernels_by_shape": info.get("kernels_by_shape"), "csr_layers": info.get("csr_layers"),
                   "model_average_sparsity": info.get("model_average"),
                   "prompt_len": args.prompt_len, "gen_len": args.gen_len}  # fmt: skip
            write_json_atomic(_row_path(args, "speed", label, s["name"]), row)


def collect_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Quality and speed rows joined by (model, setting), in the order of the plan."""
    rows = []
    for label, variant in _variants(args).items():
        base = _read(_row_path(args, "quality", label, "dense"))
        for s in [{"name": "dense"}, *_settings_of(variant, args)]:
            q = _read(_row_path(args, "quality", label, "dense" if s.get("weights") else s["name"]))
            sp = _read(_row_path(args, "speed", label, s["name"]))
            row: dict[str, Any] = {"model": label, "setting": s["name"]}
            if q:
                row["perplexity"] = q["perplexity"]
                row["model_average_sparsity"] = q.get("model_average_sparsity")
                if base:
                    row["ppl_ratio"] = q["perplexity"] / base["perplexity"]
            if sp:
                row.update({k: sp[k] for k in ("decode_tokens_per_s", "dense_tokens_per_s", "speedup",
                                                "rounds_speedup", "kernels_by_shape", "csr_layers")})  # fmt: skip
            elif s["name"] == "dense" and label:
                other = next((_read(p) for p in sorted((Path(args.rows) / "speed").glob(f"{_slug(label)}__*.json"))
                              ), None)  # fmt: skip
                if other:
                    row.update(decode_tokens_per_s=other["dense_tokens_per_s"], speedup=1.0)
            rows.append(row)
    return rows


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def print_models(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'model':20s} {'setting':30s} {'sparsity':>8s} {'tok/s':>8s} {'IQR':>6s} {'x dense':>8s} "
          f"{'ppl':>8s} {'x ppl':>6s}")  # fmt: skip
    nan = float("nan")
    for r in rows:
        d = r.get("decode_tokens_per_s") or {"median": nan, "iqr": nan}
        sp = r.get("model_average_sparsity")
        print(
            f"{r['model']:20s} {r['setting']:30s} {sp if sp is not None else nan:8.3f} {d['median']:8.2f} "
            f"{d['iqr']:6.2f} {r.get('speedup', nan):8.2f} {r.get('perplexity', nan):8.2f} "
            f"{r.get('ppl_ratio', nan):6.3f}"
        )


# ---------------------------------------------------------------- (c) profile


def _category(name: str) -> str:
    if name in ("aten::mm", "aten::addmm", "aten::linear", "aten::matmul", "aten::bmm", "aten::mv"):
        return "matmul"
    if name in (
        "aten::embedding_bag",
        "aten::_embedding_bag",
        "aten::_embedding_bag_forward_only",
        "aten::index_select",
        "aten::_sparse_csr_mm",
        "aten::addmv",
        "prunelab::fused",
    ):
        return "sparse gather"
    if "attention" in name or name in ("aten::softmax", "aten::_softmax"):
        return "attention"
    return "other ops"


def profile_section(args: argparse.Namespace) -> dict[str, Any]:
    """Decode steps (1 token, cache of `prompt_len`), dense and at one level: op time by category, per step
    (the mean of `--profile-steps` profiled steps: one step alone is too noisy on this VM)."""
    from torch.profiler import record_function

    from prunelab.runtime import fused

    lm = load_model(args.model)
    model = lm.model
    calib = data.calibration_data(lm.tokenizer, args.calib, args.calib_samples, args.calib_seqlen, seed=0)
    table = calibrate_thresholds(model, calib)
    ids = latency.random_prompt(model, 1, args.prompt_len)
    plain = fused.fused_kernel

    def recorded(*a: Any) -> torch.Tensor:  # the compiled call is no aten op: name it, or it counts as Python
        with record_function("prunelab::fused"):
            return plain(*a)

    fused.fused_kernel = recorded  # type: ignore[assignment]  # profiling only
    try:
        return _profile_runs(args, model, table, ids)
    finally:
        fused.fused_kernel = plain  # type: ignore[assignment]


def _profile_runs(args: argparse.Namespace, model: torch.nn.Module, table: Any, ids: torch.Tensor) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile, record_function

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
                    caches = [copy.deepcopy(past) for _ in range(args.profile_steps)]
                    with profile(activities=[ProfilerActivity.CPU]) as prof:
                        start = time.perf_counter()
                        for cache in caches:
                            model(input_ids=nxt, past_key_values=cache, use_cache=True)
                        wall = (time.perf_counter() - start) * 1e6 / args.profile_steps
                finally:
                    pre.remove()
                    post.remove()
        finally:
            if handle is not None:
                handle.remove()
        cats: dict[str, float] = {}
        lm_head_us = 0.0
        steps = args.profile_steps
        for evt in prof.key_averages():
            if evt.key == "lm_head":
                lm_head_us = evt.cpu_time_total / steps
                continue
            cats[_category(evt.key)] = cats.get(_category(evt.key), 0.0) + evt.self_cpu_time_total / steps
        ops = sum(cats.values())
        results[label] = {
            "wall_us": wall,
            "op_self_us_by_category": cats,
            "lm_head_us": lm_head_us,
            "python_and_framework_us": max(wall - ops, 0.0),
            "steps": steps,
            "top_ops": [
                (e.key, e.self_cpu_time_total / steps)
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
    ap.add_argument("--sections", nargs="*", default=["kernels", "quality", "speed", "profile"],
                    help="kernels, costs (greedy-time kernel costs; alone!), quality (perplexity; timing-free), "
                    "speed (decode A/B; alone!), profile")  # fmt: skip
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
    ap.add_argument("--wikitext", default="../shared/data/wikitext-2-raw/wiki.test.raw", help="wiki.test.raw")
    ap.add_argument("--ppl-windows", type=int, default=40)
    ap.add_argument("--ppl-seqlen", type=int, default=512)
    ap.add_argument("--levels", nargs="*", type=float, default=list(LEVELS))
    ap.add_argument("--allocations", nargs="*", default=["uniform", "greedy"], help="uniform, greedy, greedy-time")
    ap.add_argument("--greedy-tokens", type=int, default=GREEDY_TOKENS,
                    help="greedy search: tokens a candidate is scored on (off default: own tables, rows)")  # fmt: skip
    ap.add_argument("--greedy-lazy", action="store_true", help="lazy greedy search (own tables and row names)")
    ap.add_argument("--pruned-allocations", nargs="*", default=["greedy"], help="allocations on pruned models")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--gen-len", type=int, default=64)
    ap.add_argument("--pruned", action="store_true", help="also Wanda-50%%, structured MLP-25%% and weight-sparse")
    ap.add_argument("--weight-model-sparsities", nargs="*", type=float, default=[0.5, 0.7, 0.8])
    ap.add_argument("--profile-level", type=float, default=0.5)
    ap.add_argument("--profile-steps", type=int, default=8, help="decode steps profiled (per-step means)")
    ap.add_argument("--sparse-kernels", default="auto", help="activation kernels of the profile section")
    ap.add_argument("--cache", default="bench/out/activation_sparsity", help="pruned models, threshold tables")
    ap.add_argument("--rows", default="bench/results/activation_sparsity", help="one JSON per result row")
    ap.add_argument("--json", default="bench/results/activation_sparsity.json")
    args = ap.parse_args()
    args.levels = [v for v in args.levels if not math.isnan(v) and v > 0]
    threads = set_threads(args.threads)
    rows = Path(args.rows)
    if "kernels" in args.sections:
        write_json_atomic(rows / "kernels.json", {"environment": environment(), "threads": threads,
                                                   "kernels": kernel_section(args)})  # fmt: skip
    if (rows / "kernels.json").exists():
        print_kernels(json.loads((rows / "kernels.json").read_text())["kernels"])
    if "costs" in args.sections:
        costs_section(args)
    if "quality" in args.sections:
        quality_section(args)
    if "speed" in args.sections:
        speed_section(args)
    if "profile" in args.sections:
        write_json_atomic(rows / "profile.json", {"environment": environment(), "threads": threads,
                                                   "profile": profile_section(args)})  # fmt: skip
    model_rows = collect_rows(args)
    print_models(model_rows)
    if (rows / "profile.json").exists():
        print_profile(json.loads((rows / "profile.json").read_text())["profile"])
    result = {"environment": environment(), "threads": threads, "args": vars(args), "model": model_rows}
    write_json_atomic(Path(args.json), json.loads(json.dumps(result, default=str)))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
