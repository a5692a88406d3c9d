"""GPU check of the core engine (run on a CUDA machine; no downloads needed).

1. On a tiny random Llama: CPU vs GPU masks for magnitude and Wanda are identical; SparseGPT on GPU gives exact
   sparsity and valid N:M, with reconstruction close to the CPU result.
2. On a random model with SmolLM2-135M's shapes: prune time on the GPU for each method (32 x 512 calibration).

    python bench/gpu_check.py
"""

from __future__ import annotations

import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from prunelab import PruneConfig, prune
from prunelab.models import prunable_layers, weight_2d
from prunelab.pruning.masks import Pattern, is_valid_nm


def tiny(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        max_position_embeddings=512,
    )
    m = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return m.eval()


def smollm_shaped() -> torch.nn.Module:
    cfg = LlamaConfig(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()


def weights(m: torch.nn.Module) -> list[torch.Tensor]:
    return [weight_2d(x).detach().float().cpu() for x in prunable_layers(m).values()]


def main() -> None:
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    print("GPU:", torch.cuda.get_device_name(0), "torch", torch.__version__)
    calib = torch.randint(0, 512, (8, 128), generator=torch.Generator().manual_seed(0))
    for method in ("magnitude", "wanda", "sparsegpt"):
        for pattern in ("unstructured", "2:4"):
            cfg = PruneConfig(method=method, sparsity=0.5 if pattern == "unstructured" else None, pattern=pattern)
            cpu, gpu = tiny(), tiny().cuda()
            prune(cpu, cfg, calib=calib)
            r = prune(gpu, cfg, calib=calib)
            wc, wg = weights(cpu), weights(gpu)
            same_mask = all(torch.equal(a == 0, b == 0) for a, b in zip(wc, wg, strict=True))
            max_diff = max(float((a - b).abs().max()) for a, b in zip(wc, wg, strict=True))
            nm_ok = pattern == "unstructured" or all(is_valid_nm(w, Pattern(2, 4)) for w in wg)
            print(
                f"tiny {method:9s} {pattern:12s} achieved {r.achieved_sparsity:.4f} same mask as CPU: {same_mask} "
                f"max |w_gpu - w_cpu| {max_diff:.2e} N:M valid: {nm_ok}"
            )
    calib = torch.randint(0, 49152, (32, 512), generator=torch.Generator().manual_seed(0))
    model = smollm_shaped().cuda()
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(2):
            for i in range(0, 32, 8):
                model.model(input_ids=calib[i : i + 8].cuda(), use_cache=False)
        torch.cuda.synchronize()
        floor = time.perf_counter() - t
    print(f"SmolLM2-shaped random model, 32x512 calibration: floor (2 decoder passes, batch 8) {floor:.2f} s")
    for method in ("wanda", "sparsegpt"):
        for pattern in ("unstructured", "2:4"):
            model.load_state_dict(dense)
            cfg = PruneConfig(method=method, sparsity=0.5 if pattern == "unstructured" else None, pattern=pattern)
            torch.cuda.synchronize()
            t = time.perf_counter()
            r = prune(model, cfg, calib=calib)
            torch.cuda.synchronize()
            el = time.perf_counter() - t
            print(
                f"{method:9s} {pattern:12s} prune {el:6.2f} s ({el / floor:.2f} x floor) achieved "
                f"{r.achieved_sparsity:.4f} peak CUDA {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
            )


if __name__ == "__main__":
    main()
