"""Run-time sparsity jobs: calibrate activation thresholds once (`prunelab calibrate-activations`), then load a
model for eval / bench / generate with the sparsity chosen at run time (`load_for_run`), and greedy generation
that shows what a setting does to the text (`prunelab generate`).

Everything that can be checked without the weights is checked before loading: the level's range, the threshold
table beside the folder and its grid, the output folder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from prunelab import data
from prunelab._util import environment, peak_rss_mb, write_json_atomic
from prunelab.config.models import ModelConfig
from prunelab.config.runtime import ActivationCalibConfig, RuntimeConfig
from prunelab.errors import PrunelabError
from prunelab.models import LoadedModel, check_output, check_seqlen, load_model, resolve_model, save_model
from prunelab.runtime.sparse import apply_activation_sparsity
from prunelab.runtime.thresholds import (
    CALIBRATE_HINT,
    ThresholdTable,
    calibrate_thresholds,
    find_table,
    read_costs,
    write_calibrated_folder,
)
from prunelab.runtime.weights import COMPACT_FILE, load_sparse

log = logging.getLogger(__name__)


def _folder(spec: str | None) -> Path | None:
    """The local folder behind a model spec (GGUF files are converted once, cached), or None for a hub id."""
    resolved = Path(resolve_model(spec))
    return resolved if resolved.is_dir() else None


def check_runtime(source: ModelConfig, rt: RuntimeConfig) -> ThresholdTable | None:
    """The threshold table to apply (None at level 0), checked against the level before any weight is read."""
    folder = _folder(source.model)
    if rt.activation_sparsity == 0.0:
        return None
    table = find_table(folder)
    if table is None:
        raise PrunelabError(
            f"activation sparsity {rt.activation_sparsity:g} needs a threshold table and model "
            f"'{source.model or 'default'}' has none; {CALIBRATE_HINT}"
        )
    table.check_level(rt.activation_sparsity)
    return table


def load_for_run(source: ModelConfig, rt: RuntimeConfig, prefill: str = "dense") -> tuple[LoadedModel, dict[str, Any]]:
    """Load a model as `rt` says: a compact sparse folder through `load_sparse` (CSR above break-even with
    sparse_kernels auto), then the activation runtime at `rt.activation_sparsity` (eval uses prefill "threshold":
    with a dense prefill, a full-sequence perplexity would not change)."""
    table = check_runtime(source, rt)
    folder = _folder(source.model)
    info: dict[str, Any] = {"activation_sparsity": rt.activation_sparsity, "sparse_kernels": rt.sparse_kernels,
                            "kernels_by_shape": {}}  # fmt: skip
    if folder is not None and (folder / COMPACT_FILE).is_file():
        if source.device != "cpu" or source.device_map is not None:
            raise PrunelabError("a compact sparse folder runs on the CPU runtime only; drop --device/--device-map")
        # The two runtimes do not stack yet: with activation sparsity, compact weights are loaded dense.
        weight_kernels = "off" if table is not None else rt.sparse_kernels
        lm: LoadedModel = load_sparse(folder, kernels=weight_kernels)
        info["weight_runtime"] = {k: v for k, v in lm.runtime.items() if k != "measured_us_per_token"}  # type: ignore[attr-defined]
    else:
        lm = load_model(source.model, dtype=source.dtype, device=source.device, device_map=source.device_map)
    if table is not None:
        handle = apply_activation_sparsity(lm.model, table, rt.activation_sparsity, rt.sparse_kernels, prefill)
        info.update({k: v for k, v in handle.info.items() if k != "measured_us_per_token"})
        info["activation_sparsity"] = rt.activation_sparsity
    return lm, info


def calibrate_activations_job(
    cfg: ActivationCalibConfig,
    source: ModelConfig,
    output: str,
    overwrite: bool = False,
    json_path: str | None = None,
) -> dict[str, Any]:
    """Calibrate |x| thresholds for every level of `cfg.levels` and write OUTPUT = the model folder (hard links or
    copies; plain transformers loads it as the dense model) + the threshold table side file."""
    check_output(output, overwrite)
    data.check_source(cfg.calib)
    if cfg.cost_table is not None and cfg.allocation != "greedy-time":
        raise PrunelabError(f"--cost-table is for allocation greedy-time, not {cfg.allocation}")
    costs = read_costs(cfg.cost_table) if cfg.cost_table is not None else None  # before loading anything
    folder = _folder(source.model)
    if folder is not None and (folder / COMPACT_FILE).is_file():
        raise PrunelabError("calibrate the dense folder (save_model output), not a compact sparse folder")
    lm = load_model(source.model, dtype=source.dtype, device=source.device)
    if lm.tokenizer is None:
        raise PrunelabError(f"model '{lm.source}' has no tokenizer; calibration needs one to read '{cfg.calib}'")
    check_seqlen(lm.model, cfg.calib_seqlen)
    calib = data.calibration_data(lm.tokenizer, cfg.calib, cfg.calib_samples, cfg.calib_seqlen, cfg.seed)
    record = {"source": cfg.calib, "seed": cfg.seed}
    table = calibrate_thresholds(
        lm.model, calib, cfg.allocation, cfg.levels, cfg.exclude,
        batch_size=cfg.calib_batch_size or 1, greedy_tokens=cfg.greedy_tokens, greedy_step=cfg.greedy_step,
        greedy_lazy=cfg.greedy_lazy, record=record, costs=costs,
    )  # fmt: skip
    if folder is not None:
        write_calibrated_folder(folder, table, output, overwrite=overwrite, link=True)
    else:  # a hub id: save the model as a plain folder, then add the table
        save_model(lm.model, lm.tokenizer, output, lm.base_model_record(), overwrite)
        table.save(output)
    report = {
        "model": lm.source,
        "output": str(output),
        "allocation": table.allocation,
        "levels": table.levels,
        "grid": table.grid_text(),
        "groups": len(table.groups),
        "layers": sum(len(g.layers) for g in table.groups),
        "excluded": table.excluded,
        "calibration": table.calibration,
        "peak_rss_mb": peak_rss_mb(),
        "environment": environment(),
    }
    if json_path:
        write_json_atomic(json_path, report)
    return report


def generate(model: torch.nn.Module, tokenizer: Any, prompt: str, max_new_tokens: int) -> dict[str, Any]:
    """Greedy continuation of `prompt` (deterministic, so two settings differ only by what they change)."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(next(model.parameters()).device)
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        )  # fmt: skip
    new = out[0, ids.shape[1] :]
    return {"text": tokenizer.decode(new, skip_special_tokens=True), "tokens": int(new.numel())}


def generate_job(
    runs: list[tuple[str, ModelConfig, RuntimeConfig]],
    prompt: str,
    max_new_tokens: int,
    json_path: str | None = None,
) -> dict[str, Any]:
    """Greedy continuations of one prompt under each (label, model, runtime) setting, checked before loading."""
    if not prompt:
        raise PrunelabError("the prompt is empty")
    for _, source, rt in runs:
        check_runtime(source, rt)
    results = []
    for label, source, rt in runs:
        lm, info = load_for_run(source, rt)
        if lm.tokenizer is None:
            raise PrunelabError(f"model '{lm.source}' has no tokenizer; generation needs one")
        out = generate(lm.model, lm.tokenizer, prompt, max_new_tokens)
        results.append({"label": label, "model": lm.source, **out, "runtime": info})
        del lm
    report = {"prompt": prompt, "max_new_tokens": max_new_tokens, "runs": results, "environment": environment()}
    if json_path:
        write_json_atomic(json_path, report)
    return report
