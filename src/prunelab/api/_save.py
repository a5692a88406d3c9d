"""The tail every model-writing job shares (`prune_job`, `recover_job`): save the model with its report, then
record where it went and how long the job took, and write the JSON report.

One helper so the two jobs cannot drift apart on the details that matter: under `accelerate launch` only the
first process writes (the others return their report unsaved), and an output folder holding nothing but a
recovery checkpoint is an interrupted run, replaced without --overwrite.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from torch import nn

from prunelab._util import write_json_atomic
from prunelab.models import save_model
from prunelab.training.checkpoint import only_checkpoint
from prunelab.training.recover import is_main_process


def save_and_report(
    report: dict[str, Any],
    model: nn.Module,
    tokenizer: Any,
    output: str | Path | None,
    overwrite: bool,
    started: float,
    json_path: str | None,
    trained: bool = False,
    leave_out: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Save `model` to `output` (if any) with `report` minus `leave_out` as its prunelab.json; add `output` and
    `total_seconds` (since `started`, a perf_counter reading) to `report`, write it to `json_path`, return it.
    `trained`: a recovery ran, so this may be one of several accelerate processes; only the main one saves."""
    if trained and not is_main_process():
        return report
    if output:
        meta = {k: v for k, v in report.items() if k not in leave_out}
        save_model(model, tokenizer, output, meta, overwrite or only_checkpoint(output))
        report["output"] = str(output)
    report["total_seconds"] = time.perf_counter() - started
    if json_path:
        write_json_atomic(json_path, report)
    return report
