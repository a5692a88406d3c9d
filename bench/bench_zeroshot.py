"""Zero-shot accuracy of SmolLM2-135M dense vs Wanda 50% vs SparseGPT 50% vs Wanda 2:4, offline.

    nice -n 10 python bench/bench_zeroshot.py --task-data ../shared/data/zeroshot --limit 200 --out bench/out/zeroshot

The embedded SmolLM2-135M-Instruct is loaded once; each configuration restores the dense weights, prunes in memory
with `prunelab.prune` (8 x 512 tokens of Shakespeare, seed 0: cheap, the same for every method; issue 15's best
configurations `...+rec96` and their controls without reconstruction `...-wt` use the core protocol's 32 x 512
of wikitext-2/valid.txt, next to --task-data) and is
scored by `prunelab.evaluation.zeroshot` on every task file of the folder (the first `--limit` examples of each) through
lm-evaluation-harness, without saving or reloading. One JSON per configuration is written as soon as it is done, so
an interrupted run resumes where it stopped; the script ends by printing a markdown table from those files.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

CONFIGS: dict[str, dict[str, Any] | None] = {
    "dense": None,
    "wanda-50%": {"method": "wanda", "sparsity": 0.5},
    "sparsegpt-50%": {"method": "sparsegpt", "sparsity": 0.5},
    "wanda-2:4": {"method": "wanda", "pattern": "2:4"},
    # issue 15's best configurations, pruned with the core protocol (32 x 512 of wikitext-2/valid.txt, seed 0)
    "sparsegpt-50%+rec96": {"method": "sparsegpt", "sparsity": 0.5, "stages": ["reconstruct"],
                            "reconstruct_steps": 96, "calib": "{wikitext_valid}", "calib_samples": 32},
    "sparsegpt-2:4+rec96": {"method": "sparsegpt", "pattern": "2:4", "stages": ["reconstruct"],
                            "reconstruct_steps": 96, "calib": "{wikitext_valid}", "calib_samples": 32},
    "sparsegpt-2:4+rec96-model": {"method": "sparsegpt", "pattern": "2:4", "stages": ["reconstruct"],
                                  "reconstruct_steps": 96, "reconstruct_target": "model",
                                  "calib": "{wikitext_valid}", "calib_samples": 32},
    # their controls: the same method and calibration without the reconstruction stage
    "sparsegpt-50%-wt": {"method": "sparsegpt", "sparsity": 0.5, "calib": "{wikitext_valid}", "calib_samples": 32},
    "sparsegpt-2:4-wt": {"method": "sparsegpt", "pattern": "2:4", "calib": "{wikitext_valid}", "calib_samples": 32},
}  # fmt: skip
CHEAP_CALIB = {"calib": "shakespeare", "calib_samples": 8, "calib_seqlen": 512, "seed": 0}


def run(args: argparse.Namespace) -> None:
    import torch

    from prunelab import load_model, prune
    from prunelab._util import environment, write_json_atomic
    from prunelab.config import PruneConfig
    from prunelab.evaluation.zeroshot import harness_info, resolve_tasks, run_tasks, zeroshot_mean

    plan = resolve_tasks(["all"], args.task_data)
    lm = None
    dense: dict[str, torch.Tensor] = {}
    wikitext_valid = str(args.task_data.parent / "wikitext-2" / "valid.txt")
    for name, settings in CONFIGS.items():
        if args.configs and name not in args.configs:
            continue
        out = args.out / f"{name.replace(':', '-').replace('%', '')}.json"
        if out.exists():
            continue
        if lm is None:
            lm = load_model(None)
            dense = {k: v.clone() for k, v in lm.model.state_dict().items()}
        lm.model.load_state_dict(dense)
        report: dict[str, Any] = {"config": name}
        if settings is not None:
            given = {k: v.format(wikitext_valid=wikitext_valid) if isinstance(v, str) else v
                     for k, v in settings.items()}  # fmt: skip
            cfg = PruneConfig(**{**CHEAP_CALIB, **given})
            result = prune(lm.model, cfg, tokenizer=lm.tokenizer)
            report.update(prune_seconds=result.seconds, achieved_sparsity=result.achieved_sparsity)
        start = time.perf_counter()
        scores = run_tasks(lm.model, lm.tokenizer, plan, args.limit, args.batch_size)
        report.update(
            zeroshot={k: v.to_dict() for k, v in scores.items()},
            zeroshot_mean=zeroshot_mean(scores),
            eval_seconds=time.perf_counter() - start,
            setup={"limit": args.limit, "task_data": str(args.task_data), **harness_info(args.batch_size)},
            environment=environment(),
        )
        write_json_atomic(out, report)


def table(folder: Path) -> str:
    reports = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    reports.sort(key=lambda r: list(CONFIGS).index(r["config"]))  # every file of the folder, run now or before
    if not reports:
        return "(no results yet)"
    tasks = list(reports[0]["zeroshot"])
    lines = [
        "| task (n) | metric | " + " | ".join(r["config"] for r in reports) + " |",
        "|---|---|" + "---:|" * len(reports),
    ]
    for task in tasks:
        first = reports[0]["zeroshot"][task]
        metrics = ["acc", "acc_norm"] if first["acc_norm"] is not None else ["acc"]
        metrics += ["perplexity"] if "perplexity" in first else []
        for m in metrics:
            cells = []
            for r in reports:
                t = r["zeroshot"][task]
                err = t["stderr"].get(m)
                cells.append(f"{t[m]:.3f}" + (f" ± {err:.3f}" if err is not None and m != "perplexity" else ""))
            lines.append(f"| {task} ({first['n']}) | {m} | " + " | ".join(cells) + " |")
    lines.append("| **mean acc** | | " + " | ".join(f"**{r['zeroshot_mean']:.3f}**" for r in reports) + " |")
    rates = [
        sum(t["n"] for t in r["zeroshot"].values()) / sum(t["seconds"] for t in r["zeroshot"].values()) for r in reports
    ]
    lines.append("| examples/s (all tasks) | | " + " | ".join(f"{x:.2f}" for x in rates) + " |")
    lines.append("| eval minutes | | " + " | ".join(f"{r['eval_seconds'] / 60:.1f}" for r in reports) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task-data", type=Path, default=Path("../shared/data/zeroshot"))
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench/out/zeroshot"))
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--configs", nargs="*", choices=list(CONFIGS), help="run only these (default: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    if not args.table_only:
        run(args)
    print(table(args.out))


if __name__ == "__main__":
    main()
