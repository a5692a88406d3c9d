"""Prefill latency, decode speed and batched throughput of a causal LM, under a fixed protocol.

- Prompts are random token ids (seeded): the work of a forward does not depend on which tokens they are, and no
  tokenizer or text is needed. Attention masks are all ones (no padding).
- Prefill (time to first token): one forward over the prompt with the KV cache on, then the greedy next token.
  Only the last position's logits are computed when the model supports `logits_to_keep` (as `generate` does).
- Decode: greedy `generate` with `min_new_tokens = max_new_tokens`, so EOS is ignored and every run produces
  exactly `gen_len` tokens with the KV cache. A streamer timestamps each new token; decode speed is
  (gen_len - 1) / (time of last token - time of first token), which leaves the prefill out.
- Throughput: generated tokens / wall time of the whole `generate` call (prefill included) at each batch size;
  this is what a server sees. Batch 1 reuses the decode runs, which are exactly that measurement.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig
from transformers.generation.streamers import BaseStreamer

from prunelab.measurement.energy import EnergyMeter, EnergyReading
from prunelab.measurement.timing import Stats, summarize, synchronize, time_runs

log = logging.getLogger(__name__)


def random_prompt(model: nn.Module, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """(batch, length) token ids drawn uniformly from the vocabulary with a fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    vocab = int(model.config.vocab_size)
    device = next(model.parameters()).device
    return torch.randint(0, vocab, (batch, length), generator=gen).to(device)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@dataclass
class Measured:
    """Per-run seconds, their summary, and the energy of all timed runs together (None when energy is off)."""

    seconds: list[float]
    stats: Stats
    energy: EnergyReading | None
    extra: dict[str, Any] = field(default_factory=dict)


def measure_runs(
    fn: Any, warmup: int, repeats: int, device: torch.device, meter: EnergyMeter | None, cpu: list[float]
) -> tuple[list[float], list[Any], EnergyReading | None]:
    """The one timed-block protocol of every runtime (torch here, llama.cpp in `runtime/llamacpp.py`): `warmup`
    untimed calls, a device sync, then `repeats` timed calls metered together for energy. Returns (seconds per run,
    results, energy reading or None); `cpu` receives the process CPU seconds of each run."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    if meter is not None:
        meter.start()
    seconds, results = time_runs(fn, 0, repeats, device, cpu)
    reading = meter.stop() if meter is not None else None
    return seconds, results, reading


@torch.inference_mode()
def prefill(
    model: nn.Module, prompt_len: int, warmup: int, repeats: int, meter: EnergyMeter | None = None, seed: int = 0
) -> Measured:
    """Time to first token for a batch-1 prompt of `prompt_len` tokens, in milliseconds."""
    ids = random_prompt(model, 1, prompt_len, seed)
    kwargs: dict[str, Any] = {"use_cache": True}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = 1

    def run() -> torch.Tensor:
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
        return out.logits[:, -1].argmax(dim=-1)

    cpu: list[float] = []
    seconds, _, energy = measure_runs(run, warmup, repeats, _device(model), meter, cpu)
    extra = {"prompt_tokens": prompt_len, "cpu_ms": summarize([c * 1e3 for c in cpu])}
    return Measured(seconds, summarize([s * 1e3 for s in seconds]), energy, extra)


class _TokenClock(BaseStreamer):
    """Records when each generated token arrives (the first `put` is the prompt itself)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start = time.perf_counter()
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        synchronize(self.device)
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def greedy_config(model: nn.Module, gen_len: int) -> GenerationConfig:
    """Greedy decoding of exactly `gen_len` new tokens (EOS is suppressed until then)."""
    eos = model.config.eos_token_id
    pad = model.config.pad_token_id
    if pad is None:
        pad = eos[0] if isinstance(eos, list) else eos
    return GenerationConfig(
        do_sample=False,
        max_new_tokens=gen_len,
        min_new_tokens=gen_len,
        eos_token_id=eos,
        pad_token_id=pad if pad is not None else 0,
        use_cache=True,
    )


@torch.inference_mode()
def decode(
    model: nn.Module,
    prompt_len: int,
    gen_len: int,
    warmup: int,
    repeats: int,
    batch: int = 1,
    meter: EnergyMeter | None = None,
    seed: int = 0,
) -> tuple[Measured, Measured]:
    """(decode tokens/s per sequence, throughput tokens/s) of greedy generation at `batch`.

    Needs gen_len >= 2 (one token is the prefill's; speed is measured between the first and the last).
    """
    if gen_len < 2:
        from prunelab.errors import PrunelabError

        raise PrunelabError(f"--gen-len must be at least 2 to measure decoding, got {gen_len}")
    device = _device(model)
    ids = random_prompt(model, batch, prompt_len, seed)
    mask = torch.ones_like(ids)
    config = greedy_config(model, gen_len)
    clocks: list[_TokenClock] = []

    def run() -> int:
        clock = _TokenClock(device)
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config, streamer=clock)
        clocks.append(clock)
        new = out.shape[1] - prompt_len
        if new != gen_len:
            raise RuntimeError(f"generate produced {new} tokens instead of {gen_len}")
        return new

    cpu: list[float] = []
    seconds, _, energy = measure_runs(run, warmup, repeats, device, meter, cpu)
    timed = clocks[warmup:]
    per_seq = [(len(c.times) - 1) / (c.times[-1] - c.times[0]) for c in timed]
    first_token_ms = [(c.times[0] - c.start) * 1e3 for c in timed]
    extra = {
        "batch": batch,
        "prompt_tokens": prompt_len,
        "generated_tokens": gen_len,
        "cpu_ms_per_token": summarize([c * 1e3 / (batch * gen_len) for c in cpu]),
    }
    decode_stats = Measured(
        seconds, summarize(per_seq), energy, {**extra, "first_token_ms": summarize(first_token_ms).to_dict()}
    )
    throughput = Measured(seconds, summarize([batch * gen_len / s for s in seconds]), energy, extra)
    return decode_stats, throughput
