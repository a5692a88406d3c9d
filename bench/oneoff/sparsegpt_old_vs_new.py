"""One-off A/B behind bench/RESULTS.md "SparseGPT at its time floor": the SparseGPT solve of commit 0e54cae
(batched triangular solves per 32 columns, torch.kthvalue) against the working tree's (recursive halves, numpy
partition), in one process, interleaved. Run from the repository root on a quiet machine:

    python bench/oneoff/sparsegpt_old_vs_new.py layers      # SmolLM2's 7 Linear shapes of one block, 5 rounds
    python bench/oneoff/sparsegpt_old_vs_new.py model       # end to end, 50% unstructured, 2 rounds alternated

`model` writes bench/results/core_speed/ab_old_new_e2e.json.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

import prunelab.pruning.masks as new_masks
import prunelab.pruning.sparsegpt as new
from prunelab.config.methods import SparseGPTOptions
from prunelab.pruning.masks import parse_pattern

OLD_COMMIT = "0e54cae"


def _old_module(path: str, name: str) -> types.ModuleType:
    src = subprocess.run(["git", "show", f"{OLD_COMMIT}:{path}"], capture_output=True, text=True, check=True).stdout
    mod = types.ModuleType(name)
    exec(compile(src, name, "exec"), mod.__dict__)  # our own file at an older commit
    return mod


old_masks = _old_module("src/prunelab/pruning/masks.py", "masks_old")
old = _old_module("src/prunelab/pruning/sparsegpt.py", "sparsegpt_old")
old.lowest = old_masks.lowest


def layers() -> None:
    torch.set_num_threads(2)

    def with_lowest(mod: types.ModuleType, fn: object) -> object:
        def run(*a: object, **k: object) -> object:
            saved, mod.lowest = mod.lowest, fn
            try:
                return mod.sparsegpt_prune(*a, **k)
            finally:
                mod.lowest = saved

        return run

    variants = {
        "old": with_lowest(old, old_masks.lowest),
        "old+numpy": with_lowest(old, new_masks.lowest),
        "new": with_lowest(new, new_masks.lowest),
        "new+kthvalue": with_lowest(new, old_masks.lowest),
    }
    gen = torch.Generator().manual_seed(0)

    def hessian(n: int) -> torch.Tensor:
        a = torch.randn(n, n, generator=gen) / n**0.5 + torch.eye(n)
        x = torch.randn(4096, n, generator=gen) @ a
        return (x.t() @ x) / 4096

    hs = {576: hessian(576), 1536: hessian(1536)}
    shapes = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
    weights = [torch.randn(o, i, generator=gen) for o, i in shapes]
    opts = SparseGPTOptions()
    for p in ("unstructured", "2:4"):
        pattern = parse_pattern(p)
        factors = {n: new.factor_hessian(h, opts) for n, h in hs.items()}
        times: dict[str, list[float]] = {k: [] for k in variants}
        for r in range(6):
            for k, fn in variants.items():
                start = time.perf_counter()
                for w in weights:
                    fn(w.clone(), hs[w.shape[1]], 0.5, pattern, opts, factors[w.shape[1]])  # type: ignore[operator]
                if r:  # round 0 warms up
                    times[k].append(time.perf_counter() - start)
        for k, v in times.items():
            print(f"{p:13s} {k:14s} median {statistics.median(v) * 1e3:8.1f} ms  min {min(v) * 1e3:8.1f} "
                  f"max {max(v) * 1e3:8.1f}")  # fmt: skip
    inv: dict[str, list[float]] = {"old": [], "new": []}
    for r in range(4):
        for k, mod in (("old", old), ("new", new)):
            start = time.perf_counter()
            for n in (576, 576, 576, 1536):
                mod.inverse_cholesky(hs[n], 0.01, 2)
            if r:
                inv[k].append(time.perf_counter() - start)
    for k, v in inv.items():
        print(f"factorisation {k}: median {statistics.median(v) * 1e3:.1f} ms")


def model() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench_core_speed import floor_seconds

    from prunelab import PruneConfig, data, load_model, prune

    pairs = {"new": (new.sparsegpt_prune, new.factor_hessian), "old": (old.sparsegpt_prune, old.factor_hessian)}
    lm = load_model()
    windows = data.calibration_data(lm.tokenizer, "../shared/data/wikitext-2/valid.txt", 32, 512, seed=0)
    dense = {k: v.clone() for k, v in lm.model.state_dict().items()}
    floors = [floor_seconds(lm.model, windows)]
    rows = []
    for r in range(2):
        for name in ("old", "new") if r % 2 == 0 else ("new", "old"):
            new.sparsegpt_prune, new.factor_hessian = pairs[name]  # what SparseGPT.prune_weight calls
            lm.model.load_state_dict(dense)
            cfg = PruneConfig(method="sparsegpt", sparsity=0.5, calib_samples=32, calib_seqlen=512)
            start = time.perf_counter()
            prune(lm.model, cfg, calib=windows)
            rows.append({"round": r, "variant": name, "seconds": time.perf_counter() - start})
            print(rows[-1], flush=True)
    new.sparsegpt_prune, new.factor_hessian = pairs["new"]
    floors.append(floor_seconds(lm.model, windows))
    print("floors", floors)
    Path("bench/results/core_speed/ab_old_new_e2e.json").write_text(json.dumps({"floors": floors, "rows": rows}))


if __name__ == "__main__":
    {"layers": layers, "model": model}[sys.argv[1] if len(sys.argv) > 1 else "layers"]()
