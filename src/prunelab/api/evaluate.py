"""Perplexity and zero-shot accuracy of a model (`prunelab eval`, and the before/after of `prunelab prune`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from prunelab import data
from prunelab._util import environment, peak_rss_mb, write_json_atomic
from prunelab.api.runtime import check_runtime, load_for_run
from prunelab.config.evaluation import EvalConfig
from prunelab.config.models import ModelConfig
from prunelab.config.runtime import RuntimeConfig
from prunelab.errors import PrunelabError
from prunelab.evaluation import zeroshot
from prunelab.evaluation.perplexity import PerplexityResult, perplexity
from prunelab.models import check_seqlen, gguf_tokenizer
from prunelab.pruning.run import sparsity_report

log = logging.getLogger(__name__)


def evaluate(
    model: nn.Module,
    tokenizer: Any,
    sources: list[str],
    seqlen: int = 512,
    max_windows: int | None = None,
    batch_size: int | None = None,
) -> dict[str, PerplexityResult]:
    """Perplexity on each source's evaluation split."""
    check_seqlen(model, seqlen)
    results: dict[str, PerplexityResult] = {}
    for source in sources:
        windows = data.eval_windows(data.tokenize(tokenizer, data.load_text(source, "eval").text), seqlen, max_windows)
        results[source] = perplexity(model, windows, batch_size, desc=f"ppl {source}")
        log.info("perplexity %s: %.3f (%d x %d tokens)", source, results[source].perplexity, windows.shape[0], seqlen)
    return results


def ppl_values(results: dict[str, PerplexityResult]) -> dict[str, float]:
    return {k: v.perplexity for k, v in results.items()}


def perplexity_sources(ev: EvalConfig) -> list[str]:
    """The sources to measure: as given; by default shakespeare, or none when zero-shot tasks are asked for."""
    return list(ev.ppl) if "ppl" in ev.model_fields_set or not ev.tasks else []


def gguf_for_runtime(source: ModelConfig) -> Path:
    """The GGUF file that `--runtime llamacpp` runs: the model must be one (llama.cpp loads nothing else)."""
    spec = source.model
    if not spec or not str(spec).endswith(".gguf"):
        raise PrunelabError(
            f"--runtime llamacpp runs a .gguf file, not '{spec or 'the default model'}': export it first with "
            "`prunelab export MODEL --gguf OUT.gguf`"
        )
    from prunelab.runtime.llamacpp import check_gguf_file

    return check_gguf_file(spec)


def eval_llamacpp(path: Path, ppl: list[str], ev: EvalConfig) -> dict[str, PerplexityResult]:
    """Perplexity from llama.cpp's logits, on the windows the torch path makes: the same sources, `seqlen` and
    cap, tokenized by the Hugging Face tokenizer transformers derives from the GGUF (as `load_model` does)."""
    from prunelab.runtime import llamacpp

    tokenizer = gguf_tokenizer(path)
    results: dict[str, PerplexityResult] = {}
    for source in ppl:
        windows = data.eval_windows(data.tokenize(tokenizer, data.load_text(source, "eval").text), ev.seqlen,
                                    ev.max_windows)  # fmt: skip
        results[source] = llamacpp.perplexity(path, windows)
        log.info("llama.cpp perplexity %s: %.3f", source, results[source].perplexity)
    return results


def eval_job(
    ev: EvalConfig,
    source: ModelConfig | None = None,
    json_path: str | None = None,
    runtime: RuntimeConfig | None = None,
) -> dict[str, Any]:
    """Load a model and measure perplexity on each source, and zero-shot accuracy on `ev.tasks` if given.

    With `runtime`, the activation sparsity is applied to every position (prefill "threshold"), so the perplexity
    is the quality a decode at that level gets. With `source.runtime == "llamacpp"` a GGUF file is scored by
    llama.cpp's logits."""
    source, runtime = source or ModelConfig(), runtime or RuntimeConfig()
    if source.runtime == "llamacpp" and runtime.activation_sparsity > 0:
        raise PrunelabError("--activation-sparsity runs in the torch runtime, not in llama.cpp")
    if source.runtime != "llamacpp":
        check_runtime(source, runtime)
    ppl = perplexity_sources(ev)
    for name in ppl:
        data.check_source(name)
    if source.runtime == "llamacpp":
        return _eval_job_llamacpp(ev, source, ppl, json_path)
    plan = zeroshot.resolve_tasks(ev.tasks, ev.task_data) if ev.tasks else None  # bad names fail before loading
    lm, runtime_info = load_for_run(source, runtime, prefill="threshold")
    results = evaluate(lm.model, lm.tokenizer, ppl, ev.seqlen, ev.max_windows, ev.batch_size) if ppl else {}
    report: dict[str, Any] = {
        "model": lm.source,
        "perplexity": ppl_values(results),
        "perplexity_eval": {k: v.to_dict() for k, v in results.items()},
        "tokens": sum(r.windows * r.seqlen for r in results.values()),
        "seconds": sum(r.seconds for r in results.values()),
        **sparsity_report(lm.model),
        "runtime": runtime_info,
        "peak_rss_mb": peak_rss_mb(),
        "environment": environment(),
    }
    if plan is not None:
        scores = zeroshot.run_tasks(lm.model, lm.tokenizer, plan, ev.limit, ev.batch_size)
        report["zeroshot"] = {k: v.to_dict() for k, v in scores.items()}
        report["zeroshot_mean"] = zeroshot.zeroshot_mean(scores)
        setup = {"limit": ev.limit, "task_data": ev.task_data}
        report["zeroshot_setup"] = {**setup, **zeroshot.harness_info(ev.batch_size)}
        report["peak_rss_mb"] = peak_rss_mb()
    if json_path:
        write_json_atomic(json_path, report)
    return report


def _eval_job_llamacpp(ev: EvalConfig, source: ModelConfig, ppl: list[str], json_path: str | None) -> dict[str, Any]:
    if ev.tasks:
        raise PrunelabError("--tasks runs in the torch runtime only; drop --runtime llamacpp for zero-shot tasks")
    path = gguf_for_runtime(source)
    if source.device != "cpu" or source.dtype != "auto" or source.device_map is not None:
        log.warning("--device, --dtype and --device-map apply to the torch runtime; llama.cpp runs the file's types")
    results = eval_llamacpp(path, ppl, ev)
    report: dict[str, Any] = {
        "model": str(path),
        "runtime": "llamacpp",
        "perplexity": ppl_values(results),
        "perplexity_eval": {k: v.to_dict() for k, v in results.items()},
        "tokens": sum(r.windows * r.seqlen for r in results.values()),
        "seconds": sum(r.seconds for r in results.values()),
        "file_bytes": path.stat().st_size,
        "peak_rss_mb": peak_rss_mb(),
        "environment": environment(),
    }
    if json_path:
        write_json_atomic(json_path, report)
    return report
