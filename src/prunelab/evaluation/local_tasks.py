"""The offline zero-shot task files: one `DIR/NAME.jsonl` per task, its row shape recognised by its fields.

A file becomes a harness task config *dict* whose `custom_dataset` returns the rows parsed here, so neither the hub
nor the datasets cache is touched (`prunelab.evaluation.zeroshot` runs them). Four row shapes are recognised (see
`SHAPES`); the file names of `../shared/data/zeroshot/` that differ from the harness names are aliased
(`openbook_qa` -> `openbookqa`, `lambada_openai` -> `lambada`).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunelab.errors import PrunelabError

# File stems of ../shared/data/zeroshot/ whose harness task name differs.
HARNESS_NAMES = {"openbook_qa": "openbookqa", "lambada_openai": "lambada"}

_ACC = {"metric": "acc", "aggregation": "mean", "higher_is_better": True}
_ACC_NORM = {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}
_PPL = {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False}


@dataclass(frozen=True)
class Shape:
    """A local row layout: the fields that identify it and the harness config entries that score it."""

    name: str
    fields: tuple[str, ...]
    config: dict[str, Any]


SHAPES = (
    # ARC, BoolQ, PIQA, OpenBookQA, HellaSwag: the prompt is pre-formatted; each choice is scored after one space.
    Shape(
        "multiple choice",
        ("query", "choices", "gold"),
        {
            "output_type": "multiple_choice",
            "doc_to_text": "query",
            "doc_to_choice": "choices",
            "doc_to_target": "gold",
            "metric_list": [_ACC, _ACC_NORM],
        },
    ),
    # WinoGrande, the harness's "partial evaluation": the same continuation scored after each candidate prefix.
    Shape(
        "winogrande",
        ("context_options", "continuation", "gold"),
        {
            "output_type": "multiple_choice",
            "doc_to_text": "gold",
            "doc_to_choice": "context_options",
            "doc_to_target": "continuation",
            "metric_list": [_ACC],
        },
    ),
    # LAMBADA: is the last word the greedy continuation? Its perplexity comes for free.
    Shape(
        "lambada",
        ("context", "continuation"),
        {
            "output_type": "loglikelihood",
            "doc_to_text": "context",
            "doc_to_target": "{{' ' + continuation}}",
            "metric_list": [_ACC, _PPL],
        },
    ),
    # RTE (GLUE): the harness's own template; label 0 = entailment = "True".
    Shape(
        "rte",
        ("sentence1", "sentence2", "label"),
        {
            "output_type": "multiple_choice",
            "doc_to_text": "{{sentence1}}\nQuestion: {{sentence2}} True or False?\nAnswer:",
            "doc_to_choice": ["True", "False"],
            "doc_to_target": "label",
            "metric_list": [_ACC],
        },
    ),
)


def local_tasks(task_data: str | os.PathLike[str]) -> dict[str, Path]:
    """Task name -> file for every `*.jsonl` in the folder (file stems, plus the harness-name aliases)."""
    folder = Path(task_data).expanduser()
    if not folder.is_dir():
        raise PrunelabError(f"task data folder '{task_data}' does not exist")
    found: dict[str, Path] = {}
    for path in sorted(folder.glob("*.jsonl")):
        found[path.stem] = path
        if path.stem in HARNESS_NAMES:
            found[HARNESS_NAMES[path.stem]] = path
    if not found:
        raise PrunelabError(f"task data folder '{task_data}' has no *.jsonl task files")
    return found


def _check_row(row: dict[str, Any], shape: Shape, where: str) -> None:
    missing = [k for k in shape.fields if k not in row]
    if missing:
        raise PrunelabError(f"{where}: missing field(s) {', '.join(missing)} for a {shape.name} row")
    options = {"multiple choice": "choices", "winogrande": "context_options"}.get(shape.name)
    if options is not None:
        choices = row[options]
        if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) and c for c in choices)):
            raise PrunelabError(f"{where}: '{options}' must be a list of at least two non-empty strings")
        gold = row["gold"]
        if not (isinstance(gold, int) and 0 <= gold < len(choices)):
            raise PrunelabError(f"{where}: 'gold' must be an index into '{options}', got {gold!r}")
    if shape.name == "rte" and row["label"] not in (0, 1):
        raise PrunelabError(f"{where}: 'label' must be 0 (entailment) or 1, got {row['label']!r}")
    if shape.name == "lambada" and not (isinstance(row["continuation"], str) and row["continuation"].strip()):
        raise PrunelabError(f"{where}: 'continuation' must be a non-empty string")


def read_task_file(path: Path) -> tuple[Shape, list[dict[str, Any]]]:
    """Parse and validate a local task file; the shape is chosen by the first row's fields."""
    rows: list[dict[str, Any]] = []
    shape: Shape | None = None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PrunelabError(f"cannot read task file '{path}': {e}") from e
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise PrunelabError(f"{where}: not valid JSON ({e.msg})") from e
        if not isinstance(row, dict):
            raise PrunelabError(f"{where}: each line must be a JSON object")
        if shape is None:
            shape = next((s for s in SHAPES if set(s.fields) <= row.keys()), None)
            if shape is None:
                known = "; ".join(f"{s.name}: {', '.join(s.fields)}" for s in SHAPES)
                raise PrunelabError(f"{where}: unrecognised row fields {sorted(row)}; expected one of ({known})")
        _check_row(row, shape, where)
        rows.append({k: row[k] for k in shape.fields})
    if shape is None:
        raise PrunelabError(f"task file '{path}' is empty")
    return shape, rows


def local_task_config(name: str, path: Path) -> dict[str, Any]:
    """The harness task config dict for a local file: its rows served from memory as the `test` split."""
    shape, rows = read_task_file(path)

    def dataset(**_: Any) -> Any:  # the harness passes the task's metadata as keyword arguments
        import datasets

        return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})

    return {
        "task": name,
        "custom_dataset": dataset,
        "test_split": "test",
        "target_delimiter": " ",
        "num_fewshot": 0,
        **copy.deepcopy(shape.config),
        "metadata": {"version": 1.0, "source": str(path), "rows": len(rows)},
    }
