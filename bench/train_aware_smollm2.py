"""Training-aware pruning on a pretrained model: fine-tune SmolLM2-135M with the trajectory tracker, then compare
trajectory pruning with magnitude and Wanda at equal sparsity (issue 6, the pretrained comparison).

    nice -n 10 python bench/train_aware_smollm2.py --steps 200 --every 20 --last-k 5 --json bench/out/ta_smollm2.json

Fine-tuning: AdamW on random windows of the Shakespeare calibration plays (the evaluation plays are held out); a
snapshot of every decoder linear weight each `--every` steps, the tracker averaging the last K snapshots with
sqrt weights. Then, from the same fine-tuned weights: magnitude (final weights), Wanda (final weights, 8 x 256
calibration tokens), trajectory (mask from the averaged clone, final weights kept) and trajectory-avg (the averaged
clone kept), each at the same per-layer sparsity; perplexity on the held-out plays before fine-tuning, after it,
and after each pruning. Prints one table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from prunelab import PruneConfig, data, evaluate, load_model, prune
from prunelab._util import environment, peak_rss_mb, write_json_atomic
from prunelab.training import TrajectoryCallback, TrajectoryTracker

METHODS = {
    "magnitude": ("magnitude", {}),
    "wanda": ("wanda", {}),
    "trajectory": ("trajectory", {"weights": "final"}),
    "trajectory-avg": ("trajectory", {"weights": "average"}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--every", type=int, default=20, help="optimiser steps between snapshots")
    ap.add_argument("--last-k", type=int, default=5)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.5])
    ap.add_argument("--eval-windows", type=int, default=16, help="held-out windows of --eval-seqlen tokens")
    ap.add_argument("--eval-seqlen", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    lm = load_model()
    model, tok = lm.model, lm.tokenizer

    def ppl() -> float:
        return evaluate(model, tok, ["shakespeare"], args.eval_seqlen, args.eval_windows)["shakespeare"].perplexity

    report: dict = {"args": vars(args), "ppl_pretrained": ppl()}
    ids = data.tokenize(tok, data.load_text("shakespeare", "calib").text)
    tracker = TrajectoryTracker(model, last_k=args.last_k, total=args.steps // args.every)
    callback = TrajectoryCallback(tracker, every_steps=args.every)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    model.train()
    t0 = time.perf_counter()
    losses = []
    for step in range(1, args.steps + 1):
        starts = torch.randint(0, ids.numel() - args.seqlen, (args.batch,), generator=gen).tolist()
        batch = torch.stack([ids[s : s + args.seqlen] for s in starts])
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        callback.on_optimizer_step()
        losses.append(loss.item())
        if step % args.every == 0:
            print(f"step {step}: loss {sum(losses[-args.every :]) / args.every:.4f} ({time.perf_counter() - t0:.0f} s)")
    model.eval()
    del optimizer
    report["finetune_seconds"] = time.perf_counter() - t0
    report["finetune_loss_curve"] = losses
    report["tracker"] = {"snapshots": tracker.snapshots, "averaged": tracker.recorded, "bytes": tracker.nbytes()}
    report["ppl_finetuned"] = ppl()
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    rows = []
    for sparsity in args.sparsity:
        for label, (method, options) in METHODS.items():
            model.load_state_dict(trained)
            cfg = PruneConfig(method=method, sparsity=sparsity, options=options, calib_samples=8, calib_seqlen=256)
            result = prune(model, cfg, tokenizer=tok)
            rows.append(
                {"method": label, "sparsity": sparsity, "achieved_sparsity": result.achieved_sparsity, "ppl": ppl()}
            )
            print(json.dumps(rows[-1]))
    report["rows"] = rows
    report["wall_seconds"] = time.perf_counter() - started
    report["peak_rss_mb"] = peak_rss_mb()
    report["environment"] = environment()
    print(
        f"perplexity on held-out plays: pretrained {report['ppl_pretrained']:.3f}, "
        f"fine-tuned {report['ppl_finetuned']:.3f}"
    )
    for r in rows:
        print(f"{r['method']:15s} sparsity {r['achieved_sparsity']:.3f}: {r['ppl']:.3f}")
    if args.json:
        write_json_atomic(args.json, report)


if __name__ == "__main__":
    main()
