"""SmolLM2-135M ablations: uniform vs OWL vs AlphaPruning layer-wise sparsity, and where calibration text comes from.

Table 1 (`owl`): Wanda and SparseGPT at 50/60/70/80% unstructured sparsity, uniform vs OWL allocation (lambda
0.08, M 5, the paper's defaults), perplexity on WikiText-2 test windows. Table 2 (`calib`): the same methods at
one sparsity calibrated on WikiText-2 (validation text) or on Shakespeare (training plays), each evaluated on both
WikiText-2 test and the held-out Shakespeare plays: does pruning calibrated on one kind of text hurt the other?
Table 3 (`auto`, issue 15): uniform vs OWL with lambda chosen by held-out calibration loss (`--owl-lambda auto`;
M too with --owl-m-auto; one prune per candidate, see `prunelab.pruning.owl_auto`) vs AlphaPruning
(`--allocation alpha`, --alpha-eps), meant for 60/70/80%; the chosen lambda/M and every candidate's held-out loss
are kept in the JSON.

One process: the model is loaded once and its dense weights restored before every configuration; calibration
windows and evaluation windows are built once per source. Results are appended to a JSON file after each
configuration, so an interrupted run resumes where it stopped. `--model` (default: the embedded SmolLM2) is for
rehearsals on a tiny model.

    python bench/bench_allocation.py --shared ../shared --out bench/out/allocation
    python bench/bench_allocation.py --parts auto --sparsities 0.6 0.7 0.8 --out bench/out/allocation
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from prunelab import PruneConfig, data, load_model, prune
from prunelab._util import environment, write_json_atomic
from prunelab.evaluation.perplexity import perplexity


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default="../shared", help="folder holding data/wikitext-2*/")
    ap.add_argument("--out", default="bench/out/allocation")
    ap.add_argument("--model", default=None, help="model to load (default: the embedded SmolLM2-135M)")
    ap.add_argument("--parts", nargs="+", default=["calib", "owl"], choices=["calib", "owl", "auto"])
    ap.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt"])
    ap.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.6, 0.7, 0.8])
    ap.add_argument("--calib-sparsity", type=float, default=0.5)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--owl-lambda", type=float, default=0.08)
    ap.add_argument("--owl-m", type=float, default=5.0)
    ap.add_argument("--owl-m-auto", action="store_true", help="auto part: search M too (M grid + lambda grid prunes)")
    ap.add_argument("--alpha-eps", type=float, default=0.2)
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    calib_sources = {"wikitext": f"{args.shared}/data/wikitext-2/valid.txt", "shakespeare": "shakespeare"}
    eval_sources = {
        "wikitext": f"wikitext2:{args.shared}/data/wikitext-2-raw/wiki.test.raw",
        "shakespeare": "shakespeare",
    }

    plan: list[tuple[str, float, str, str, list[str]]] = []  # method, sparsity, allocation, calib, evals
    if "calib" in args.parts:
        for method in args.methods:
            for calib in calib_sources:
                plan.append((method, args.calib_sparsity, "uniform", calib, ["wikitext", "shakespeare"]))
    if "owl" in args.parts:
        for method in args.methods:
            for sparsity in args.sparsities:
                for allocation in ("uniform", "owl"):
                    plan.append((method, sparsity, allocation, "wikitext", ["wikitext"]))
    if "auto" in args.parts:
        for method in args.methods:
            for sparsity in args.sparsities:
                for allocation in ("uniform", "owl-auto", "alpha"):
                    plan.append((method, sparsity, allocation, "wikitext", ["wikitext"]))

    lm = load_model(args.model)
    dense = {k: v.clone() for k, v in lm.model.state_dict().items()}
    windows: dict[str, torch.Tensor] = {}
    calib_windows: dict[str, torch.Tensor] = {}

    def evaluate(names: list[str]) -> dict[str, dict]:
        out_ = {}
        for name in names:
            if name not in windows:
                ids = data.tokenize(lm.tokenizer, data.load_text(eval_sources[name], "eval").text)
                windows[name] = data.eval_windows(ids, args.seqlen, args.windows)
            out_[name] = perplexity(lm.model, windows[name], desc=f"ppl {name}").to_dict()
        return out_

    def save() -> None:
        results["_meta"] = {"args": vars(args), "environment": environment(), "model": lm.source}
        write_json_atomic(results_path, results)  # a kill mid-write keeps the previous results

    needed_dense = sorted({e for *_, evals in plan for e in evals})
    have = results.get("dense", {}).get("ppl", {})
    missing = [e for e in needed_dense if e not in have]
    if missing:
        results.setdefault("dense", {"ppl": {}})["ppl"].update(evaluate(missing))
        save()
    for method, sparsity, allocation, calib, evals in plan:
        key = f"{method}|{sparsity:g}|{allocation}|{calib}"
        cached = results.get(key, {}).get("ppl", {})
        if all(e in cached for e in evals):
            continue
        evals = sorted(set(evals) | set(cached))
        if calib not in calib_windows:
            calib_windows[calib] = data.calibration_data(
                lm.tokenizer, calib_sources[calib], args.samples, args.seqlen, seed=0
            )
        lm.model.load_state_dict(dense)
        auto = allocation == "owl-auto"
        cfg = PruneConfig(
            method=method,
            sparsity=sparsity,
            allocation="owl" if auto else allocation,
            calib=calib_sources[calib],
            calib_samples=args.samples,
            calib_seqlen=args.seqlen,
            owl_lambda="auto" if auto else args.owl_lambda,
            owl_m="auto" if auto and args.owl_m_auto else args.owl_m,
            alpha_eps=args.alpha_eps,
        )
        result = prune(lm.model, cfg, calib=calib_windows[calib])
        prune_s = result.seconds  # the method's own clock (the one every prune report uses)
        results[key] = {
            "method": method,
            "sparsity": sparsity,
            "allocation": allocation,
            "calib": calib,
            "achieved_sparsity": result.achieved_sparsity,
            "prune_seconds": prune_s,
            "block_sparsity": result.extra["allocation"]["block_sparsity"],
            "allocation_record": result.extra["allocation"],
            "owl_auto": result.extra.get("owl_auto"),
            "config": cfg.model_dump(),
            "ppl": evaluate(evals),
        }
        save()
        ppl = ", ".join(f"{k} {v['perplexity']:.2f}" for k, v in results[key]["ppl"].items())
        print(f"{key}: achieved {result.achieved_sparsity:.4f}, prune {prune_s:.0f} s, ppl {ppl}", flush=True)
    print_tables(results, args)


def print_tables(results: dict, args: argparse.Namespace) -> None:
    def ppl(key: str, source: str) -> str:
        r = results.get(key, {}).get("ppl", {}).get(source)
        return f"{r['perplexity']:.2f}" if r else "-"

    dense = results["dense"]["ppl"]
    print("\ndense: " + ", ".join(f"{k} {v['perplexity']:.2f}" for k, v in dense.items()))
    if "owl" in args.parts:
        print("\n| method | sparsity | uniform | OWL |")
        print("|---|---|---|---|")
        for method in args.methods:
            for s in args.sparsities:
                row = [ppl(f"{method}|{s:g}|{a}|wikitext", "wikitext") for a in ("uniform", "owl")]
                print(f"| {method} | {s:.0%} | {row[0]} | {row[1]} |")
    if "auto" in args.parts:
        print("\n| method | sparsity | uniform | OWL (auto) | chosen lambda / M | AlphaPruning |")
        print("|---|---|---|---|---|---|")
        for method in args.methods:
            for s in args.sparsities:
                row = [ppl(f"{method}|{s:g}|{a}|wikitext", "wikitext") for a in ("uniform", "owl-auto", "alpha")]
                chosen = (results.get(f"{method}|{s:g}|owl-auto|wikitext", {}).get("owl_auto") or {}).get("chosen")
                pick = f"{chosen['owl_lambda']:g} / {chosen['owl_m']:g}" if chosen else "-"
                print(f"| {method} | {s:.0%} | {row[0]} | {row[1]} | {pick} | {row[2]} |")
    if "calib" in args.parts:
        print(f"\n| method ({args.calib_sparsity:.0%}) | calibrated on | WikiText-2 ppl | Shakespeare ppl |")
        print("|---|---|---|---|")
        for method in args.methods:
            for calib in ("wikitext", "shakespeare"):
                key = f"{method}|{args.calib_sparsity:g}|uniform|{calib}"
                print(f"| {method} | {calib} | {ppl(key, 'wikitext')} | {ppl(key, 'shakespeare')} |")


if __name__ == "__main__":
    main()
