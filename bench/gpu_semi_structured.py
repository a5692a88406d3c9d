"""Dense vs 2:4 semi-structured sparse kernels on an NVIDIA GPU (compute capability >= 8.0).

    python bench/gpu_semi_structured.py                       # Linear shapes + full decode, SmolLM2-135M shapes
    python bench/gpu_semi_structured.py --model DIR --dtype bfloat16 --tokens 1 16 512 4096  # real weights
    python bench/gpu_semi_structured.py --shapes-only          # no model needed

Part 1 times `F.linear(x, W)` for each Linear shape of SmolLM2-135M (hidden 576, 9 query / 3 key-value heads of 64,
intermediate 1536) with a random 2:4 weight, dense vs `to_sparse_semi_structured`, at several token counts (1 is
a decode step, larger counts are prefill or batches). Part 2 builds SmolLM2-135M (random weights unless --model
names real ones), prunes it to 2:4 (magnitude: speed does not depend on which weights are kept), then measures
prefill ms and decode tokens/s with dense kernels and again after swapping the 2:4 layers to sparse kernels.
Without a suitable GPU it prints why and exits 0. Expect small matrices (decode, 576 wide) to gain little or
lose: the 2:4 speedup needs large GEMMs.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from prunelab.measurement.sparse_kernels import apply_semi_structured, semi_structured_unavailable
from prunelab.measurement.timing import summarize, time_runs

# (name, out_features, in_features) of SmolLM2-135M's decoder Linear layers.
SMOLLM2_SHAPES = [
    ("q_proj/o_proj", 576, 576),
    ("k_proj/v_proj", 192, 576),
    ("gate_proj/up_proj", 1536, 576),
    ("down_proj", 576, 1536),
]


def two_four(out_f: int, in_f: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    w = torch.randn(out_f, in_f, dtype=dtype, device=device)
    groups = w.view(-1, 4)
    groups.scatter_(1, groups.abs().argsort(dim=1)[:, :2], 0.0)
    return w


def bench_shapes(tokens: list[int], dtype: torch.dtype, repeats: int) -> None:
    from torch.sparse import to_sparse_semi_structured

    print(f"\n{'layer':18s} {'shape':>11s} {'tokens':>6s} {'dense ms':>9s} {'2:4 ms':>9s} {'speedup':>8s}")
    for name, out_f, in_f in SMOLLM2_SHAPES:
        w = two_four(out_f, in_f, dtype, "cuda")
        try:
            ws = to_sparse_semi_structured(w)
        except (RuntimeError, ValueError) as e:
            print(f"{name:18s} {out_f:>5d}x{in_f:<5d} conversion failed: {str(e).splitlines()[0]}")
            continue
        for n in tokens:
            x = torch.randn(n, in_f, dtype=dtype, device="cuda")
            dense, _ = time_runs(lambda x=x, w=w: F.linear(x, w), 5, repeats, "cuda")
            try:
                sparse, _ = time_runs(lambda x=x, ws=ws: F.linear(x, ws), 5, repeats, "cuda")
            except (RuntimeError, ValueError) as e:
                print(f"{name:18s} {out_f:>5d}x{in_f:<5d} {n:>6d} sparse matmul failed: {str(e).splitlines()[0]}")
                continue
            d, s = summarize(dense).median * 1e3, summarize(sparse).median * 1e3
            print(f"{name:18s} {out_f:>5d}x{in_f:<5d} {n:>6d} {d:9.4f} {s:9.4f} {d / s:7.2f}x")


def smollm2_random(dtype: str) -> torch.nn.Module:
    """SmolLM2-135M's architecture with random weights: latency does not depend on the values, and the GPU machine
    may have neither network nor the embedded-model package."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    return AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype)).to("cuda").eval()


def bench_model(model_spec: str, dtype: str, gen_len: int, prompt_len: int, repeats: int) -> None:
    from prunelab import PruneConfig, load_model, prune
    from prunelab.measurement.latency import decode, prefill
    from prunelab.models import prunable_layers

    if model_spec == "smollm2-random":
        model = smollm2_random(dtype)
    else:
        model = load_model(None if model_spec == "default" else model_spec, dtype=dtype, device="cuda").model
    print(f"\nfull model: {model_spec}")
    prune(model, PruneConfig(method="magnitude", pattern="2:4"))
    rows = []
    for label in ("2:4 pruned, dense kernels", "2:4 pruned, sparse kernels"):
        if label.endswith("sparse kernels"):
            report = apply_semi_structured(prunable_layers(model))
            print(f"\nconverted {report['converted']} layers; {len(report['skipped'])} left dense")
        pre = prefill(model, prompt_len, 2, repeats)
        dec, _ = decode(model, prompt_len, gen_len, 1, repeats)
        rows.append((label, pre.stats, dec.stats))
    print(f"\n{'model':28s} {'prefill ms':>12s} {'decode tok/s':>14s}   ({prompt_len} prompt, {gen_len} new tokens)")
    for label, pre, dec in rows:
        print(f"{label:28s} {pre.median:8.2f}±{pre.iqr:<5.2f} {dec.median:9.1f}±{dec.iqr:<5.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model",
        default="smollm2-random",
        help="smollm2-random (SmolLM2-135M shapes, random weights; default), default (embedded SmolLM2), or a folder",
    )
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 128, 512, 2048, 8192])
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--shapes-only", action="store_true")
    args = ap.parse_args()

    reason = semi_structured_unavailable("cuda")
    if reason:
        print(f"gpu_semi_structured: skipped: {reason}")
        return 0
    dtype = getattr(torch, args.dtype)
    print(
        f"{torch.cuda.get_device_name()} (sm{''.join(map(str, torch.cuda.get_device_capability()))}), "
        f"torch {torch.__version__}, {args.dtype}"
    )
    bench_shapes(args.tokens, dtype, args.repeats)
    if not args.shapes_only:
        try:
            bench_model(args.model, args.dtype, args.gen_len, args.prompt_len, args.repeats)
        except Exception as e:  # report and keep the shape table: the full model is the optional half
            print(f"\nfull-model decode failed: {e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
