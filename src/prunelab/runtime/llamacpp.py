"""A GGUF file in llama.cpp (via llama-cpp-python): load, tokenize, logits, perplexity, greedy decoding, bench.

Why here and not through transformers: transformers dequantizes a GGUF to float32 and runs its own kernels, so it
says nothing about what llama.cpp's quantized kernels (what Ollama and llama.cpp users run) produce or how fast.

Comparable by construction:
- Perplexity is computed from llama.cpp's logits on the *same token windows* prunelab's torch perplexity uses
  (`prunelab.data.eval_windows` of the same text and tokenizer): each window scored on its own from an empty KV
  cache, NLL averaged over the seqlen - 1 predicted tokens per window, exp of the mean. The log-softmax is done in
  float64 from llama.cpp's float32 logits. (llama.cpp's own `llama-perplexity` tool scores only the second half of
  each window; that is a different number.)
- The bench follows `prunelab.measurement`'s protocol and reuses its timer (`time_runs` through latency's
  `_measure`), statistics, energy meters and memory phases, and returns the torch bench's JSON shape: prefill of a
  batch-1 random prompt (same seeded ids as the torch bench for the same vocabulary), then greedy decoding of
  exactly gen_len tokens (EOS ignored) with per-token timestamps; decode tok/s = (gen_len - 1) / (last - first).
  Only batch 1: llama-cpp-python's high-level API runs one sequence.

llama.cpp's threads spin on barriers: with other load on the cores its speed collapses. Time it alone.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunelab._util import environment
from prunelab.errors import PrunelabError
from prunelab.evaluation.perplexity import PerplexityResult
from prunelab.measurement.bench import BenchConfig, _carbon_report, _energy_report, bench_intensity
from prunelab.measurement.energy import EnergyMeter, select_meter
from prunelab.measurement.latency import Measured, _measure
from prunelab.measurement.memory import PeakMemory
from prunelab.measurement.timing import summarize

log = logging.getLogger(__name__)

EXTRA_HINT = "pip install -e '.[llamacpp]'"


def _llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as e:
        raise PrunelabError(f"the llama.cpp runtime needs the llamacpp extra: {EXTRA_HINT}") from e
    return llama_cpp


def check_gguf_file(path: str | os.PathLike[str]) -> Path:
    """The path, if it is a readable file that starts with the GGUF magic; else a one-line error."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise PrunelabError(f"GGUF file '{p}' does not exist")
    try:
        with p.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise PrunelabError(f"cannot read '{p}': {e}") from e
    if magic != b"GGUF":
        raise PrunelabError(f"'{p}' is not a GGUF file (no GGUF magic)")
    return p


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def load(
    path: str | os.PathLike[str],
    n_ctx: int = 512,
    threads: int | None = None,
    logits_all: bool = False,
    n_batch: int | None = None,
    seed: int = 0,
) -> Any:
    """A `llama_cpp.Llama` for `path`. `logits_all` keeps every position's logits (perplexity, agreement).

    Refuses a BPE vocabulary without `tokenizer.ggml.pre` (llama.cpp would tokenize with a default split and warn
    that generation quality is degraded).
    """
    llama_cpp = _llama_cpp()
    p = check_gguf_file(path)
    threads = threads or default_threads()
    try:
        llm = llama_cpp.Llama(
            model_path=str(p),
            n_ctx=n_ctx,
            n_batch=n_batch or n_ctx,
            n_ubatch=n_batch or n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=logits_all,
            seed=seed,
            verbose=False,
        )
    except (ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PrunelabError(f"llama.cpp could not load '{p}': {first}") from e
    meta = llm.metadata
    if meta.get("tokenizer.ggml.model") == "gpt2" and not meta.get("tokenizer.ggml.pre"):
        llm.close()
        raise PrunelabError(f"'{p}' has no tokenizer.ggml.pre: llama.cpp would degrade its tokenization; re-export it")
    return llm


def tokenize(llm: Any, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
    """Token ids as llama.cpp makes them, with transformers' defaults: `add_special` adds BOS/EOS as the file's
    add_bos/add_eos flags say (`add_special_tokens`), `parse_special` turns special-token text such as
    `<|im_start|>` into its id (as Hugging Face tokenizers do)."""
    return list(llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special))


def logits(llm: Any, tokens: Sequence[int]) -> np.ndarray:
    """(len(tokens), vocab) float32 logits of one sequence from an empty cache (needs logits_all=True)."""
    if len(tokens) > llm.n_ctx():
        raise PrunelabError(f"{len(tokens)} tokens do not fit the context of {llm.n_ctx()}")
    llm.reset()
    llm.eval(list(tokens))
    return np.array(llm.scores[: len(tokens)], dtype=np.float32)


def _windows(windows: torch.Tensor | Sequence[Sequence[int]]) -> list[list[int]]:
    rows = windows.tolist() if isinstance(windows, torch.Tensor) else [list(map(int, w)) for w in windows]
    if not rows or len({len(r) for r in rows}) != 1 or len(rows[0]) < 2:
        raise PrunelabError("perplexity needs one or more windows of the same length, at least 2 tokens each")
    return rows


def window_nll(window_logits: np.ndarray, window: Sequence[int]) -> float:
    """Summed next-token NLL of one window: position t predicts token t + 1 (float64 log-softmax)."""
    x = window_logits[:-1].astype(np.float64)
    top = x.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(x - top).sum(axis=1))
    targets = np.asarray(window[1:], dtype=np.int64)
    return float((lse - x[np.arange(len(targets)), targets]).sum())


def perplexity(
    path: str | os.PathLike[str], windows: torch.Tensor | Sequence[Sequence[int]], threads: int | None = None
) -> PerplexityResult:
    """Perplexity of the GGUF at `path` on token windows (n, seqlen), from llama.cpp's logits."""
    rows = _windows(windows)
    seqlen = len(rows[0])
    llm = load(path, n_ctx=seqlen, threads=threads, logits_all=True)
    try:
        start = time.perf_counter()
        total = sum(window_nll(logits(llm, w), w) for w in rows)
        seconds = time.perf_counter() - start
    finally:
        llm.close()
    tokens = len(rows) * (seqlen - 1)
    nll = total / tokens
    return PerplexityResult(math.exp(nll), nll, len(rows), seqlen, tokens, seconds)


def compare_with_torch(
    path: str | os.PathLike[str], model: torch.nn.Module, windows: torch.Tensor, threads: int | None = None
) -> dict[str, Any]:
    """Teacher-forced check of a GGUF against the torch model it was exported from, on token windows (n, seqlen):
    the share of positions where both pick the same next token, and the largest logit difference. A wrong q/k
    permutation, tensor name or tokenizer drops agreement to near chance; near-ties make a few positions differ."""
    rows = _windows(windows)
    llm = load(path, n_ctx=len(rows[0]), threads=threads, logits_all=True)
    same = positions = 0
    worst = 0.0
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            for w in rows:
                ref = model(input_ids=torch.tensor([w], device=device)).logits[0].float().cpu().numpy()
                got = logits(llm, w)
                same += int((ref.argmax(-1) == got.argmax(-1)).sum())
                positions += len(w)
                worst = max(worst, float(np.abs(ref - got).max()))
    finally:
        llm.close()
    return {"agreement": same / positions, "positions": positions, "max_abs_logit_diff": worst}


def text_windows(llm: Any, text: str, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Evaluation windows of a text tokenized by llama.cpp itself (for a GGUF with no Hugging Face tokenizer)."""
    from prunelab.data import eval_windows

    return eval_windows(torch.tensor(tokenize(llm, text), dtype=torch.long), seqlen, max_windows)


def last_logits(llm: Any) -> np.ndarray:
    """The logits of the last evaluated position, read from llama.cpp's context (works without logits_all,
    which would make every prompt position pay for the output layer)."""
    ptr = _llama_cpp().llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def greedy(llm: Any, prompt: Sequence[int], n_new: int, clock: list[float] | None = None) -> list[int]:
    """Greedy continuation of exactly `n_new` tokens (EOS not special), from an empty cache. `clock` receives the
    time each new token was known (the first is the prefill's)."""
    llm.reset()
    llm.eval(list(prompt))
    out: list[int] = []
    for i in range(n_new):
        tok = int(np.argmax(last_logits(llm)))
        out.append(tok)
        if clock is not None:
            clock.append(time.perf_counter())
        if i + 1 < n_new:
            llm.eval([tok])
    return out


def _prompt(vocab: int, length: int, seed: int) -> list[int]:
    """The torch bench's prompt: uniform ids, same generator and seed (same ids for the same vocabulary)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (1, length), generator=gen)[0].tolist()


def _prefill(llm: Any, length: int, cfg: BenchConfig, meter: EnergyMeter | None) -> Measured:
    ids = _prompt(llm.n_vocab(), length, cfg.seed)

    def run() -> int:
        llm.reset()
        llm.eval(ids)
        return int(np.argmax(last_logits(llm)))

    cpu: list[float] = []
    seconds, _, energy = _measure(run, cfg.warmup, cfg.repeats, torch.device("cpu"), meter, cpu)
    extra = {"prompt_tokens": length, "cpu_ms": summarize([c * 1e3 for c in cpu])}
    return Measured(seconds, summarize([s * 1e3 for s in seconds]), energy, extra)


def _decode(llm: Any, cfg: BenchConfig, meter: EnergyMeter | None) -> tuple[Measured, Measured]:
    length = cfg.prompt_lens[0]
    ids = _prompt(llm.n_vocab(), length, cfg.seed)
    runs: list[tuple[float, list[float]]] = []

    def run() -> int:
        clock: list[float] = []
        start = time.perf_counter()
        greedy(llm, ids, cfg.gen_len, clock)
        runs.append((start, clock))
        return len(clock)

    cpu: list[float] = []
    seconds, _, energy = _measure(run, cfg.warmup, cfg.repeats, torch.device("cpu"), meter, cpu)
    timed = runs[cfg.warmup :]
    per_seq = [(len(c) - 1) / (c[-1] - c[0]) for _, c in timed]
    first_ms = [(c[0] - s) * 1e3 for s, c in timed]
    extra = {
        "batch": 1,
        "prompt_tokens": length,
        "generated_tokens": cfg.gen_len,
        "cpu_ms_per_token": summarize([c * 1e3 / cfg.gen_len for c in cpu]),
    }
    dec = Measured(seconds, summarize(per_seq), energy, {**extra, "first_token_ms": summarize(first_ms).to_dict()})
    throughput = Measured(seconds, summarize([cfg.gen_len / s for s in seconds]), energy, extra)
    return dec, throughput


def bench(path: str | os.PathLike[str], cfg: BenchConfig | None = None) -> dict[str, Any]:
    """Prefill ms, decode tok/s (batch 1), peak RSS, file bytes and energy of a GGUF in llama.cpp, in the JSON
    shape of `prunelab.measurement.run_bench` (keys that only apply to torch are absent)."""
    cfg = cfg or BenchConfig()
    llama_cpp = _llama_cpp()
    p = check_gguf_file(path)
    threads = cfg.threads or default_threads()
    notes: list[str] = []
    if any(b != 1 for b in cfg.batches):
        notes.append("llama.cpp runtime: batch 1 only (llama-cpp-python runs one sequence); other batches skipped")
    if cfg.sparse_kernels:
        notes.append("--sparse-kernels applies to the torch runtime only; ignored")
    intensity = bench_intensity(cfg)
    meter, skipped = select_meter(cfg.energy, "cpu", cpu_watts=cfg.cpu_watts)
    n_ctx = max(cfg.prompt_lens) + cfg.gen_len
    with PeakMemory("load") as load_mem:
        llm = load(p, n_ctx=n_ctx, threads=threads, n_batch=max(cfg.prompt_lens))
    try:
        with PeakMemory("inference") as mem:
            prefills = [(length, _prefill(llm, length, cfg, meter)) for length in cfg.prompt_lens]
            dec, through = _decode(llm, cfg, meter)
        vocab, n_params = llm.n_vocab(), llama_cpp.llama_model_n_params(llm.model)
    finally:
        llm.close()
    phases = [load_mem, mem]
    latency = {
        "prefill_ms": {str(length): m.stats.to_dict() for length, m in prefills},
        "decode_tokens_per_s": dec.stats.to_dict(),
        "first_token_ms_in_generate": dec.extra["first_token_ms"],
        "prefill_cpu_ms": {str(length): m.extra["cpu_ms"].to_dict() for length, m in prefills},
        "generate_cpu_ms_per_token": {"1": through.extra["cpu_ms_per_token"].to_dict()},
        "throughput_tokens_per_s": {"1": through.stats.to_dict()},
        "protocol": {
            "runtime": "llama.cpp",
            "warmup": cfg.warmup,
            "repeats": cfg.repeats,
            "threads": threads,
            "gen_len": cfg.gen_len,
            "decode_prompt_len": cfg.prompt_lens[0],
            "decoding": "greedy (argmax of llama.cpp logits), EOS ignored, exactly gen_len tokens, KV cache on",
            "prompts": f"random token ids, seed {cfg.seed} (the torch bench's ids for the same vocabulary)",
        },
    }
    energy = _energy_report(meter.describe() if meter else None, skipped, prefills, dec, {1: through}, cfg)
    from prunelab.export.gguf import tensor_types

    hw = environment()
    hw.update(
        device="cpu",
        runtime="llama.cpp",
        llama_cpp_python=getattr(llama_cpp, "__version__", "unknown"),
        threads=threads,
        system_info=llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
    )
    return {
        "latency": latency,
        "memory": {"peak_rss_mb": max(x.peak_rss_mb for x in phases), "phases": {x.phase: x.to_dict() for x in phases}},
        "size": {"file_bytes": p.stat().st_size, "params": n_params, "vocab": vocab, "tensor_types": tensor_types(p)},
        "energy": energy,
        "carbon": _carbon_report(energy, intensity, cfg),
        "hardware": hw,
        "notes": notes,
        "config": cfg.model_dump(),
    }
