"""Recovery after structured pruning: `prunelab recover PRUNED_DIR` and the `--recover` step of `prunelab prune`.

Both go through `recover_model` (checks, training windows, the one loop in `prunelab.training.recover`). Checks
come before any training: the budget (typed config), a method that changes shapes (recovery of a masked model
would train the zeros back), the teacher's family and vocabulary (KL between distributions over different token
sets is meaningless), the output. The output folder doubles as the checkpoint's home: a folder holding only
`.recover-checkpoint/` is an interrupted run, resumed by rerunning the same command, and replaced atomically by
the finished model.

Beside the recovery's energy and carbon (metered as `FootprintConfig` says), `recovery.payback`: the inference
energy per 1k generated tokens of the dense model (measured before pruning, or the teacher) and of the recovered
one, and the break-even (`measurement.footprint.payback`). Measured by default with a short batch-1 decode
(`InferenceEnergyConfig`): seconds against a recovery's minutes to hours, and the training figure cannot be
judged without it. Not measured under data parallel (the other processes share the machine's meters) or with
energy off; then `payback.missing` says so and points to `prunelab bench`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab import data
from prunelab.api._save import save_and_report
from prunelab.config.bench import FootprintConfig, InferenceEnergyConfig
from prunelab.config.models import ModelConfig
from prunelab.config.recover import RecoverConfig
from prunelab.errors import PrunelabError
from prunelab.measurement.bench import inference_energy
from prunelab.measurement.footprint import metering, payback
from prunelab.models import check_output, check_seqlen, load_model, prunable_layers
from prunelab.pruning import get_method
from prunelab.pruning.structured.method import StepRecovery
from prunelab.training.checkpoint import only_checkpoint
from prunelab.training.recover import note_kept, recover
from prunelab.training.teacher_cache import check_k

log = logging.getLogger(__name__)


Probe = Callable[[nn.Module], dict[str, Any]]


def _processes() -> int:
    try:
        from accelerate import PartialState
    except ImportError:  # no accelerate: no data parallel either
        return 1
    return int(PartialState().num_processes)


def inference_probe(footprint: Any, inference: InferenceEnergyConfig | None) -> tuple[Probe | None, str | None]:
    """The short decode measured beside a recovery's footprint (model -> inference energy record), or why not.
    `footprint`: a FootprintConfig or None (typed Any: a `section` model is made at run time)."""
    footprint, inference = footprint or FootprintConfig(), inference or InferenceEnergyConfig()
    bench = "`prunelab bench` on the dense model and on the output measures both"
    if not inference.inference_energy:
        return None, f"inference energy not measured (--no-inference-energy); {bench}"
    if footprint.energy == "off":
        return None, "energy is off (--energy off)"
    if _processes() > 1:
        return None, f"not measured under data parallel (the processes share the machine); {bench}"

    def probe(model: nn.Module) -> dict[str, Any]:
        return inference_energy(model, inference, footprint, prunable_layers(model))

    return probe, None


def recovery_payback(record: dict[str, Any], dense: dict[str, Any] | None, probe: Probe | None,
                     missing: str | None, student: nn.Module) -> dict[str, Any]:  # fmt: skip
    """`recovery.payback`: the recovery's footprint beside the dense and the recovered model's inference energy."""
    if missing is None and dense is None:
        missing = "no dense model to measure (mode lora: give --teacher DENSE to measure it, or `prunelab bench` it)"
    recovered = probe(student) if probe is not None else None
    return payback(record, dense, recovered, missing)


def check_method(method: str) -> None:
    """Recovery belongs to methods that remove units (decided by the capability, not the name)."""
    if not get_method(method).capabilities.changes_shapes:
        raise PrunelabError(
            f"recovery applies to structured pruning (a method that removes units); '{method}' keeps the dense "
            "shapes with zeroed weights, which training would fill back in"
        )


def check_output_or_resume(output: str | Path | None, overwrite: bool) -> None:
    """An existing output is refused unless --overwrite, or unless it holds only a checkpoint to resume."""
    if not only_checkpoint(output):
        check_output(output, overwrite)


@contextlib.contextmanager
def kept_on_interrupt(output: str | Path | None) -> Iterator[None]:
    """An interrupt anywhere in a recovering job (loading, pruning, training, saving) names the checkpoint and
    teacher cache it leaves in `output` to resume from, so the CLI's last line does not claim nothing was left."""
    try:
        yield
    except KeyboardInterrupt as e:
        note_kept(e, output)
        raise


def check_teacher(student: nn.Module, teacher: nn.Module, s_tok: Any, t_tok: Any) -> None:
    s: Any = student.config
    t: Any = teacher.config
    if s.model_type != t.model_type:
        raise PrunelabError(f"teacher is a '{t.model_type}' model, the student a '{s.model_type}' one; distill "
                            "from the dense model the student was pruned from")  # fmt: skip
    same_vocab = s.vocab_size == t.vocab_size and (
        s_tok is None or t_tok is None or s_tok.get_vocab() == t_tok.get_vocab()
    )
    if not same_vocab:
        raise PrunelabError(
            f"teacher and student have different vocabularies ({t.vocab_size} vs {s.vocab_size} tokens or other "
            "token ids); distillation compares distributions over one vocabulary"
        )


def training_windows(model: nn.Module, tokenizer: Any, cfg: RecoverConfig) -> torch.Tensor:
    """Non-overlapping (n, seqlen) windows of the source's calibration split (never its evaluation split)."""
    check_seqlen(model, cfg.seqlen)
    ids = data.tokenize(tokenizer, data.load_text(cfg.data, split="calib").text)
    return data.eval_windows(ids, cfg.seqlen)


def recover_model(
    student: nn.Module,
    tokenizer: Any,
    cfg: RecoverConfig,
    teacher: nn.Module | None,
    output: str | Path | None,
    removed_layers: list[int] | None = None,
    identity: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train `student` in float32 master weights (back to its dtype after), checkpointing under `output`."""
    windows = training_windows(student, tokenizer, cfg)
    dtype = next(student.parameters()).dtype
    student.float()
    try:
        record = recover(student, cfg, windows, teacher, output, removed_layers, identity)
    finally:
        student.to(dtype)
    return {**record, "data": cfg.data, "windows_available": windows.shape[0]}


def split_budget(cfg: RecoverConfig, steps: int) -> tuple[RecoverConfig, RecoverConfig | None]:
    """(final, between) configs for iterative pruning in `steps` steps: the token budget is shared evenly by the
    k-1 short recoveries between steps and the one at the end, so --recover-tokens stays the whole run's cost.
    Each between-step run takes its own seed (another data order); none of them checkpoints (they are short)."""
    if steps <= 1:
        return cfg, None
    share = cfg.tokens // steps
    if share < 1:
        raise PrunelabError(f"--recover-tokens {cfg.tokens} cannot be shared by {steps} iterative steps")
    return cfg.model_copy(update={"tokens": cfg.tokens - (steps - 1) * share}), cfg.model_copy(update={"tokens": share})


def between_steps(tokenizer: Any, cfg: RecoverConfig, teacher: nn.Module | None) -> StepRecovery:
    """The `Structured.between_steps` callable: a short recovery of the partly pruned model after step `step`."""

    def run(model: nn.Module, calib: torch.Tensor | None, step: int) -> dict[str, Any]:
        step_cfg = cfg.model_copy(update={"seed": cfg.seed + step + 1})
        log.info("recovery between iterative steps %d and %d (%d tokens)", step + 1, step + 2, step_cfg.tokens)
        record = recover_model(model, tokenizer, step_cfg, teacher, None)
        return {"after_step": step + 1, **{k: v for k, v in record.items() if k != "losses"}}

    return run


def _pruned_meta(folder: Path) -> dict[str, Any]:
    path = folder / "prunelab.json"
    if not path.is_file():
        return {}
    try:
        meta: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PrunelabError(f"cannot read '{path}': {e}") from e
    return meta


def recover_job(
    cfg: RecoverConfig,
    pruned: str,
    teacher: str | None = None,
    output: str | None = None,
    overwrite: bool = False,
    json_path: str | None = None,
    device: str = "cpu",
    dtype: str = "auto",
    footprint: Any = None,  # FootprintConfig | None
    inference: InferenceEnergyConfig | None = None,
) -> dict[str, Any]:
    """Recover a folder pruned earlier; `teacher` (the dense model) is needed for mode distill. Returns the report,
    also saved as the output's prunelab.json (the pruning record plus `recovery`, with its energy and carbon as
    `footprint` says and `recovery.payback`, see the module docstring; with mode lora the dense model is measured
    only when `teacher` is given)."""
    started = time.perf_counter()
    folder = Path(pruned)
    if not (folder / "config.json").is_file():
        raise PrunelabError(f"'{pruned}' is not a model folder (no config.json)")
    meta = _pruned_meta(folder)
    if meta.get("config", {}).get("method"):
        check_method(meta["config"]["method"])
    if cfg.mode == "distill" and teacher is None:
        raise PrunelabError("mode distill needs --teacher (the dense model the folder was pruned from)")
    out = Path(output) if output else folder.with_name(folder.name + "-recovered")
    check_output_or_resume(out, overwrite)
    data.check_source(cfg.data)
    spans = metering(footprint)  # energy/carbon settings checked before loading anything
    probe, missing = inference_probe(footprint, inference)
    with kept_on_interrupt(out):
        student = load_model(str(folder), dtype=dtype, device=device)
        if student.tokenizer is None:
            raise PrunelabError(f"'{pruned}' has no tokenizer; recovery reads text")
        t_model, dense = None, None
        if cfg.mode == "distill" or (teacher is not None and probe is not None):
            t = load_model(teacher, dtype=dtype, device=device)
            check_teacher(student.model, t.model, student.tokenizer, t.tokenizer)
            if cfg.teacher_topk:  # only with mode distill (RecoverConfig refuses it with lora)
                check_k(cfg.teacher_topk, t.model)
            dense = probe(t.model) if probe is not None else None  # before training moves the teacher
            t_model = t.model if cfg.mode == "distill" else None
            del t
        removed = meta.get("removed_layers") or None
        with spans:
            record = recover_model(student.model, student.tokenizer, cfg, t_model, out, removed,
                                   {"student": str(folder.resolve()), "teacher": teacher})  # fmt: skip
        record["teacher"] = teacher
        record["payback"] = recovery_payback(record, dense, probe, missing, student.model)
        report = {**meta, "recovery": record, "recovered_from": str(folder)}
        return save_and_report(report, student.model, student.tokenizer, out, overwrite, started, json_path,
                               trained=True)  # fmt: skip


def load_teacher(spec: str | None, source: ModelConfig, student: Any) -> nn.Module:
    """`prune --teacher DIR`: the given dense model, checked against the (still dense) student before pruning."""
    t = load_model(spec, dtype=source.dtype, device=source.device)
    check_teacher(student.model, t.model, student.tokenizer, t.tokenizer)
    return t.model
