"""Write a random-weight Llama-architecture checkpoint, tensor by tensor, to prove streaming pruning offline.

The default shape (hidden 3072, MLP 8192, 28 blocks, 24 heads / 8 KV heads, vocabulary 49152, untied lm_head)
has about 3.1 billion parameters: 6.2 GB in bfloat16 on disk, 12.5 GB as float32 (what in-memory pruning on a
CPU would load). Generating it never holds more than one shard in memory: the tensor names and shapes come from
a meta-device model, each tensor is drawn in bfloat16 and appended to the current shard, which is written out
once it passes --shard-mb. The tokenizer files of the embedded SmolLM2 (vocabulary 49152) are copied so that
calibration-based methods (Wanda) can run on it.

Weights are N(0, 0.02) like a fresh Llama init, norms are ones: a model that computes garbage at realistic cost.

    python bench/make_synthetic_llama.py /tmp/synth-llama-3b            # ~2 min, 6.2 GB
    python bench/make_synthetic_llama.py /tmp/synth-small --layers 4   # a quick one to try things on
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--hidden", type=int, default=3072)
    p.add_argument("--intermediate", type=int, default=8192)
    p.add_argument("--layers", type=int, default=28)
    p.add_argument("--heads", type=int, default=24)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=49152, help="at least 49152 to fit the copied SmolLM2 tokenizer")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--shard-mb", type=int, default=1024, help="start a new shard past this size (default 1024)")
    p.add_argument("--no-tokenizer", action="store_true", help="a bare checkpoint (magnitude only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args()

    if args.folder.exists():
        if not args.overwrite:
            raise SystemExit(f"{args.folder} exists; pass --overwrite")
        shutil.rmtree(args.folder)
    tmp = args.folder.with_name(f".{args.folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dtype = getattr(torch, args.dtype)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        dtype=args.dtype,
    )
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in LlamaForCausalLM(config).state_dict().items()}
    params = sum(torch.Size(s).numel() for s in shapes.values())
    print(
        f"{params / 1e9:.3f} B parameters; {params * dtype.itemsize / 1e9:.2f} GB as {args.dtype}, "
        f"{params * 4 / 1e9:.2f} GB as float32",
        flush=True,
    )

    gen = torch.Generator().manual_seed(args.seed)
    started = time.perf_counter()
    written: list[list[str]] = []
    limit = args.shard_mb * 2**20

    def write(tensors: dict[str, torch.Tensor], size: int) -> None:
        name = f"model-{len(written) + 1:05d}.safetensors"  # renamed to -of-N once N is known
        save_file(tensors, str(tmp / name), metadata={"format": "pt"})
        written.append(list(tensors))
        print(f"  shard {len(written)}: {size / 1e9:.2f} GB ({time.perf_counter() - started:.0f} s)", flush=True)

    current: dict[str, torch.Tensor] = {}
    size = 0
    for key, shape in shapes.items():
        if key.endswith("norm.weight"):
            t = torch.ones(shape, dtype=dtype)
        else:
            t = torch.empty(shape, dtype=dtype).normal_(0.0, 0.02, generator=gen)
        current[key] = t
        size += t.numel() * t.element_size()
        if size >= limit:
            write(current, size)
            current, size = {}, 0
    if current:
        write(current, size)
    n = len(written)
    weight_map = {}
    for i, keys in enumerate(written):
        final_name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        (tmp / f"model-{i + 1:05d}.safetensors").rename(tmp / final_name)
        weight_map.update(dict.fromkeys(keys, final_name))
    total = params * dtype.itemsize
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    config.save_pretrained(tmp)
    if not args.no_tokenizer:
        from prunelab.models import resolve_model

        source = Path(resolve_model(None))
        if args.vocab < 49152:
            raise SystemExit("--vocab must be at least 49152 for the copied SmolLM2 tokenizer (or --no-tokenizer)")
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, tmp / name)
    tmp.rename(args.folder)
    print(f"wrote {args.folder}: {n} shards, {total / 1e9:.2f} GB, {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
