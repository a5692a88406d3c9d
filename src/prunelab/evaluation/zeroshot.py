"""Zero-shot accuracy of the model in memory, through lm-evaluation-harness.

Why the harness rather than our own loop: the pruning literature (Wanda, SparseGPT) reports its numbers, and what
makes them comparable is its exact protocol: a context/continuation pair is tokenized as a whole and split at the
context's length (trailing spaces of the context move into the continuation), `acc` is the arg-max of the summed
continuation log-likelihood, `acc_norm` the arg-max of that sum divided by the choice's length in characters, and
LAMBADA's `acc` is whether greedy decoding reproduces every token of the last word. Re-implementing it would make
our numbers drift from everyone else's.

- Online (real users): task names are the harness's own registered names (`arc_easy`, `hellaswag`, groups such as
  `lambada`), with its own prompt templates and hub datasets, unchanged.
- Offline (`task_data=DIR`): each `DIR/NAME.jsonl` is one task, read by `prunelab.evaluation.local_tasks` (the
  task-file schema) into a harness task config dict, so neither the hub nor the datasets cache is touched.

The model is wrapped as `HFLM(pretrained=<model>, tokenizer=<copy>)`: no reload from disk, so a pruned model is
measured as it is. The tokenizer is copied because HFLM sets a pad token on the one it gets. Each task is its own
`simple_evaluate` call so that its seconds and examples/s are its own (one call would pool the requests of all
tasks); the price is the harness's ~1 s of environment collection per call.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from prunelab.errors import PrunelabError
from prunelab.evaluation.local_tasks import HARNESS_NAMES, SHAPES, Shape, local_task_config, local_tasks, read_task_file

__all__ = ["HARNESS_NAMES", "SHAPES", "Shape", "TaskPlan", "TaskResult", "harness_info", "local_task_config",
           "local_tasks", "read_task_file", "resolve_tasks", "run_tasks", "zeroshot", "zeroshot_mean"]  # fmt: skip

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'prunelab[eval]' (or pip install 'lm-eval>=0.4')"
DEFAULT_BATCH_SIZE = 8  # 8 x a 300-token BoolQ prompt x 49k vocab = ~0.5 GB of float32 logits; 32 was only ~25% faster
BOOTSTRAP_ITERS = 1000  # only LAMBADA's perplexity is bootstrapped; accuracies have a closed-form stderr


@dataclass
class TaskResult:
    """One task's scores. `acc_norm` is None where the task does not define it (WinoGrande, RTE, LAMBADA)."""

    task: str
    acc: float
    acc_norm: float | None
    stderr: dict[str, float | None]
    n: int
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def examples_per_s(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "acc": self.acc,
            "acc_norm": self.acc_norm,
            "stderr": self.stderr,
            "n": self.n,
            "seconds": self.seconds,
            "examples_per_s": self.examples_per_s,
            **self.extra,
        }


@dataclass
class TaskPlan:
    """Validated task specs, ready to run: requested name -> harness spec (registered name or config dict)."""

    specs: dict[str, str | dict[str, Any]]
    task_data: str | None
    task_manager: Any = field(repr=False)


def require_lm_eval() -> None:
    """A one-line hint instead of an ImportError traceback when the optional extra is missing."""
    if importlib.util.find_spec("lm_eval") is None:
        raise PrunelabError(f"zero-shot tasks need lm-evaluation-harness: {INSTALL_HINT}")


def _task_manager(include_defaults: bool) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=include_defaults)


def _unknown_task(name: str, known: list[str], where: str) -> PrunelabError:
    import difflib

    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return PrunelabError(f"unknown task '{name}' {where}.{hint}")


def resolve_tasks(tasks: list[str], task_data: str | os.PathLike[str] | None = None) -> TaskPlan:
    """Check every task name before any model is loaded; build the offline task configs.

    With `task_data`, every task must be a file there (the run is then fully offline; `all` means every file).
    Without it, names must be registered in the harness (indexing its ~15k task configs takes 10-25 s).
    """
    require_lm_eval()
    names = list(dict.fromkeys(t.strip() for t in tasks if t.strip()))
    if not names:
        raise PrunelabError("no zero-shot task given (e.g. --tasks arc_easy,hellaswag)")
    if task_data is not None:
        available = local_tasks(task_data)
        if names == ["all"]:
            names = list(dict.fromkeys(HARNESS_NAMES.get(p.stem, p.stem) for p in available.values()))
        for name in names:
            if name not in available:
                err = _unknown_task(name, list(available), f"in {task_data}")
                raise PrunelabError(f"{err} Available: {', '.join(sorted(available))}.")
        specs: dict[str, str | dict[str, Any]] = {n: local_task_config(n, available[n]) for n in names}
        return TaskPlan(specs, str(task_data), _task_manager(include_defaults=False))
    manager = _task_manager(include_defaults=True)
    for name in names:
        if name not in manager.all_tasks:
            err = _unknown_task(name, manager.all_tasks, "in lm-evaluation-harness")
            raise PrunelabError(
                f"{err} It registers {len(manager.all_tasks)} tasks (list them with `lm-eval ls tasks`); "
                "offline, pass --task-data DIR with NAME.jsonl files."
            )
    return TaskPlan({n: n for n in names}, None, manager)


class _DropNoise(logging.Filter):
    """Harness warnings that are about its own CLI, not about anything a prunelab user did."""

    NOISE = (
        "`pretrained` model kwarg is not of type `str`",
        "Passed an already-initialized model",
        "Custom kwargs can be passed to `--metadata`",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in self.NOISE)


@contextlib.contextmanager
def _harness_quiet() -> Iterator[None]:
    """Drop the harness's irrelevant warnings, keep its prints off our stdout, keep its bootstrap in-process."""
    noise = _DropNoise()
    loggers = [logging.getLogger(n) for n in ("lm_eval.models.huggingface", "lm_eval.api.task")]
    for lg in loggers:
        lg.addFilter(noise)
    old = os.environ.get("DISABLE_MULTIPROC")
    os.environ["DISABLE_MULTIPROC"] = "1"  # no worker pool forked off a process holding the model
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for lg in loggers:
            lg.removeFilter(noise)
        if old is None:
            os.environ.pop("DISABLE_MULTIPROC", None)
        else:
            os.environ["DISABLE_MULTIPROC"] = old


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None  # the harness writes "N/A" when undefined


def _task_results(name: str, out: dict[str, Any], seconds: float) -> list[TaskResult]:
    """Leaf-task results of one harness run.

    A group (online `lambada` = `lambada_openai` + `lambada_standard`) yields one result per member; its members run
    in one pass, so the seconds are split in proportion to their examples (each shows the group's examples/s).
    """
    leaves = list(out["n-samples"])
    total = sum(int(out["n-samples"][leaf]["effective"]) for leaf in leaves) or 1
    results = []
    for leaf in leaves:
        n = int(out["n-samples"][leaf]["effective"])
        metrics = out["results"][leaf]
        extra = {"perplexity": p} if (p := _number(metrics.get("perplexity,none"))) is not None else {}
        results.append(
            TaskResult(
                task=name if len(leaves) == 1 else leaf,
                acc=float(metrics["acc,none"]),
                acc_norm=_number(metrics.get("acc_norm,none")),
                stderr={
                    k: _number(metrics.get(f"{k}_stderr,none"))
                    for k in ("acc", "acc_norm", "perplexity")
                    if f"{k},none" in metrics
                },
                n=n,
                seconds=seconds * n / total,
                extra=extra,
            )
        )
    return results


def _load_task(plan: TaskPlan, spec: str | dict[str, Any]) -> list[Any]:
    """Build the harness task objects (online: this downloads the dataset), before the clock starts."""
    if isinstance(spec, dict):
        return list(plan.task_manager.load([dict(spec)])["tasks"].values())  # a copy: a plan may run many times
    try:
        return list(plan.task_manager.load([spec])["tasks"].values())
    except Exception as e:  # datasets/hub errors come in many types; the user needs one line either way
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise PrunelabError(
            f"could not load task '{spec}' from the hub ({type(e).__name__}: {first}); "
            "offline, pass --task-data DIR with NAME.jsonl files"
        ) from e


def run_tasks(
    model: nn.Module, tokenizer: Any, plan: TaskPlan, limit: int | None = None, batch_size: int | None = None
) -> dict[str, TaskResult]:
    """Evaluate the model in memory on each task of the plan (the first `limit` examples of each)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    if tokenizer is None:
        raise PrunelabError("zero-shot evaluation needs the model's tokenizer")
    if limit is not None and limit < 1:
        raise PrunelabError(f"--limit must be at least 1, got {limit}")
    if batch_size is not None and batch_size < 1:
        raise PrunelabError(f"batch size must be at least 1, got {batch_size}")
    was_training = model.training
    results: dict[str, TaskResult] = {}
    try:
        with _harness_quiet():
            lm = HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer), batch_size=batch_size or DEFAULT_BATCH_SIZE)
            for name, spec in plan.specs.items():
                log.info("zero-shot %s%s", name, f" (first {limit} examples)" if limit else "")
                task_objects = _load_task(plan, spec)
                start = time.perf_counter()
                out = simple_evaluate(
                    model=lm,
                    tasks=task_objects,
                    task_manager=plan.task_manager,
                    limit=limit,
                    bootstrap_iters=BOOTSTRAP_ITERS,
                    log_samples=False,
                    random_seed=None,  # zero-shot scoring draws nothing at random; leave the caller's RNGs alone
                    numpy_random_seed=None,
                    torch_random_seed=None,
                )
                seconds = time.perf_counter() - start
                for r in _task_results(name, out, seconds):
                    results[r.task] = r
                    log.info(
                        "zero-shot %s: acc %.4f%s (n=%d, %.1f s, %.1f examples/s)",
                        r.task,
                        r.acc,
                        f", acc_norm {r.acc_norm:.4f}" if r.acc_norm is not None else "",
                        r.n,
                        r.seconds,
                        r.examples_per_s,
                    )
    finally:
        model.train(was_training)
    return results


def harness_info(batch_size: int | None = None) -> dict[str, Any]:
    """The evaluation settings recorded next to the scores."""
    from importlib.metadata import version

    return {"lm_eval": version("lm_eval"), "batch_size": batch_size or DEFAULT_BATCH_SIZE, "num_fewshot": 0}


def zeroshot(
    model: nn.Module,
    tokenizer: Any,
    tasks: list[str],
    task_data: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
) -> dict[str, TaskResult]:
    """Zero-shot accuracy of `model` on `tasks` (harness names, or files of `task_data` offline)."""
    return run_tasks(model, tokenizer, resolve_tasks(tasks, task_data), limit, batch_size)


def zeroshot_mean(results: dict[str, TaskResult]) -> float | None:
    """Mean `acc` over tasks (the headline number of the pruning papers' zero-shot tables)."""
    return sum(r.acc for r in results.values()) / len(results) if results else None
