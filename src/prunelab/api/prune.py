"""`prunelab prune`: load, evaluate, prune, evaluate, save (or stream a checkpoint block by block)."""

from __future__ import annotations

import copy
import time
from typing import Any

from prunelab import data
from prunelab._util import peak_rss_mb, write_json_atomic
from prunelab.api._save import save_and_report
from prunelab.api.evaluate import evaluate, ppl_values
from prunelab.api.recover import (
    between_steps,
    check_method,
    check_output_or_resume,
    inference_probe,
    load_teacher,
    recover_model,
    recovery_payback,
    split_budget,
)
from prunelab.config.bench import FootprintConfig, InferenceEnergyConfig
from prunelab.config.evaluation import EvalConfig
from prunelab.config.models import ModelConfig
from prunelab.config.prune import PruneConfig
from prunelab.config.recover import RecoverConfig
from prunelab.errors import PrunelabError
from prunelab.measurement.footprint import metering
from prunelab.models import check_output, check_seqlen, load_model
from prunelab.pruning import make_pruner
from prunelab.pruning.run import check_sources, prune, prune_report, sparsity_report
from prunelab.streaming import prune_streaming
from prunelab.training.teacher_cache import check_k


def prune_job(
    cfg: PruneConfig,
    source: ModelConfig | None = None,
    ev: EvalConfig | None = None,
    output: str | None = None,
    overwrite: bool = False,
    evaluate_before: bool = True,
    json_path: str | None = None,
    recover: RecoverConfig | None = None,
    teacher: str | None = None,
    footprint: FootprintConfig | None = None,
    inference: InferenceEnergyConfig | None = None,
) -> dict[str, Any]:
    """Load, evaluate (`ev`; None = no perplexity), prune, [recover (api/recover.py)], evaluate, save. Returns the
    JSON report. `teacher`: the dense model to distill from; default the input model as loaded, before pruning.
    Training steps (structured's --recover-steps, --recover) report their energy and carbon as `footprint` says;
    with --recover, `recovery.payback` puts beside them the inference energy of the dense model (measured after
    loading, before pruning) and of the recovered one, and the break-even (`inference` says how, api/recover.py)."""
    source = source or ModelConfig()
    pruner = make_pruner(cfg)  # validate method, pattern, sparsity and options before any heavy work
    if recover is not None:
        check_method(cfg.method)
        check_output_or_resume(output, overwrite)
        data.check_source(recover.data)
    else:
        check_output(output, overwrite)
    ppl = list(ev.ppl) if ev is not None else []
    check_sources(pruner, ppl)
    spans = metering(footprint)  # energy/carbon settings checked now; meters the method's training spans below
    started = time.perf_counter()
    lm = load_model(source.model, dtype=source.dtype, device=source.device, device_map=source.device_map)
    load_seconds = time.perf_counter() - started
    if recover is not None and recover.teacher_topk:  # k within the vocabulary, before any evaluation or pruning
        check_k(recover.teacher_topk, lm.model)
    before: dict[str, float] = {}
    if ppl:
        assert ev is not None
        check_seqlen(lm.model, ev.seqlen)
        if evaluate_before:
            before = ppl_values(evaluate(lm.model, lm.tokenizer, ppl, ev.seqlen, ev.max_windows, ev.batch_size))
    trains = recover is not None or bool(getattr(pruner.options, "recover_steps", 0))  # --recover-steps too
    probe, missing = inference_probe(footprint, inference) if trains else (None, None)
    dense_inference = probe(lm.model) if probe is not None else None  # the input model, before pruning
    dense = None
    if recover is not None and recover.mode == "distill":
        dense = load_teacher(teacher, source, lm) if teacher else copy.deepcopy(lm.model)
    rss_before_prune = peak_rss_mb()
    between = None
    if recover is not None:  # iterative steps: part of the budget recovers between them, the rest at the end
        recover, share = split_budget(recover, getattr(pruner.options, "iterative_steps", 1))
        between = between_steps(lm.tokenizer, share, dense) if share is not None else None
    with spans:
        result = prune(lm.model, cfg, tokenizer=lm.tokenizer, between_steps=between)
        recovery = None
        if recover is not None:
            pruned_ppl = evaluate(lm.model, lm.tokenizer, ppl, ev.seqlen, ev.max_windows, ev.batch_size) \
                if ev and ppl else {}  # fmt: skip
            identity = {"model": lm.source, "prune": cfg.model_dump(), "teacher": teacher}
            recovery = recover_model(lm.model, lm.tokenizer, recover, dense, output,
                                     result.extra.get("removed_layers"), identity)  # fmt: skip
            recovery.update(teacher=teacher or lm.source, perplexity_before_recovery=ppl_values(pruned_ppl))
            if between is not None:  # each between-step run is in result.extra["iterative"]["between_steps"]
                recovery["between_steps_tokens"] = sum(
                    r["tokens_trained"] for r in result.extra["iterative"]["between_steps"]
                )
            del dense
            recovery["payback"] = recovery_payback(recovery, dense_inference, probe, missing, lm.model)
        steps_recovery = result.extra.get("recovery") if recover is None else None
        if steps_recovery:  # structured's own --recover-steps LoRA run
            steps_recovery["payback"] = recovery_payback(steps_recovery, dense_inference, probe, missing, lm.model)
    after = evaluate(lm.model, lm.tokenizer, ppl, ev.seqlen, ev.max_windows, ev.batch_size) if ev and ppl else {}
    report = prune_report(
        lm.source, cfg, result, pruner.needs_calibration, load_seconds, rss_before_prune, sparsity_report(lm.model)
    )
    if recovery is not None:
        report["recovery"] = recovery
    report.update(lm.base_model_record())  # what the user gave, not this machine's cache path
    if before:
        report["perplexity_before"] = before
    if after:
        report["perplexity"] = ppl_values(after)
        if before:
            # Relative degradation per corpus: pruning calibrated on one kind of text can hurt another far more.
            report["perplexity_change"] = {k: v / before[k] - 1 for k, v in report["perplexity"].items()}
        report["perplexity_eval"] = {k: v.to_dict() for k, v in after.items()}
    return save_and_report(report, lm.model, lm.tokenizer, output, overwrite, started, json_path,
                           trained=recovery is not None, leave_out=("perplexity_eval",))  # fmt: skip


def prune_streaming_job(
    cfg: PruneConfig,
    source: ModelConfig,
    output: str | None,
    overwrite: bool = False,
    json_path: str | None = None,
) -> dict[str, Any]:
    """Prune a local safetensors checkpoint one block at a time (see `prunelab.streaming`), for models larger
    than memory. No perplexity is measured: the whole model never is in memory; evaluate the output separately."""
    if source.device_map:
        raise PrunelabError("--streaming does not take --device-map")
    report = prune_streaming(source.model, cfg, output, overwrite=overwrite, device=source.device, dtype=source.dtype)
    if json_path:
        write_json_atomic(json_path, report)
    return report
