"""Trade-off: the Pareto frontier of quality against cost, and the cheapest point inside a quality budget.

Directions come from the metric registry (`metrics.py`), never from the caller. A point is dominated when another
point is at least as good on every objective and strictly better on one; points with identical values do not
dominate each other, so ties stay on the frontier together. Points missing an objective are left out (a metric
that was not measured is not a zero).

Budget selection: among the points whose quality is inside the budget (perplexity at most (1 + X) x dense, or
zero-shot accuracy at least Y), take the one with the best cost; equal costs go to the better quality, then to
grid order. The cheapest point inside the budget is on the frontier by construction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from prunelab.errors import PrunelabError
from prunelab.report.metrics import DEFAULT_COSTS, Metric, metric


class Row(Protocol):
    """What the report needs of a point (`prunelab.sweep.store.PointRecord` has it)."""

    index: int
    label: str
    series: str
    method: str
    pattern: str
    sparsity: float
    metrics: dict[str, float | None]
    details: dict[str, Any]


def value(row: Row, name: str) -> float | None:
    v = row.metrics.get(name)
    return None if v is None else float(v)


def dominates(a: Row, b: Row, objectives: Sequence[Metric]) -> bool:
    """a is at least as good as b on every objective and strictly better on at least one."""
    strictly = False
    for m in objectives:
        va, vb = value(a, m.name), value(b, m.name)
        assert va is not None and vb is not None
        if m.better(vb, va):
            return False
        strictly = strictly or m.better(va, vb)
    return strictly


def pareto_front(rows: Sequence[Row], objectives: Sequence[str]) -> list[Row]:
    """Rows not dominated on `objectives` (names of registered metrics), in their input order."""
    ms = [metric(n) for n in objectives]
    complete = [r for r in rows if all(value(r, m.name) is not None for m in ms)]
    return [r for r in complete if not any(dominates(o, r, ms) for o in complete if o is not r)]


def dense_row(rows: Sequence[Row]) -> Row:
    for r in rows:
        if r.method == "dense":
            return r
    raise PrunelabError("the dense baseline is not in this sweep's store yet; rerun the sweep to measure it")


def default_cost(rows: Sequence[Row]) -> str:
    """The first of DEFAULT_COSTS that every point has."""
    for name in DEFAULT_COSTS:
        if rows and all(value(r, name) is not None for r in rows):
            return name
    raise PrunelabError("no cost metric is present in every point; pass --cost NAME")


@dataclass
class Budget:
    """A quality budget: relative perplexity increase over dense and/or minimum zero-shot accuracy."""

    max_ppl_increase: float | None = None
    min_accuracy: float | None = None

    def __post_init__(self) -> None:
        if self.max_ppl_increase is None and self.min_accuracy is None:
            self.max_ppl_increase = 0.10  # the default budget: at most 10% more perplexity than dense
        if self.max_ppl_increase is not None and not 0 <= self.max_ppl_increase < math.inf:  # nan fails too
            raise PrunelabError(f"--max-ppl-increase must be a finite number >= 0, got {self.max_ppl_increase}")
        if self.min_accuracy is not None and not 0 <= self.min_accuracy <= 1:
            raise PrunelabError(f"--min-accuracy is a fraction in [0, 1], got {self.min_accuracy}")

    def describe(self, dense: Row) -> str:
        parts = []
        if self.max_ppl_increase is not None:
            ppl = value(dense, "perplexity")
            parts.append(f"perplexity within +{self.max_ppl_increase:.0%} of dense ({ppl:.3f})")
        if self.min_accuracy is not None:
            parts.append(f"zero-shot accuracy at least {self.min_accuracy:.1%}")
        return " and ".join(parts)

    def admits(self, row: Row, dense: Row) -> bool:
        if self.max_ppl_increase is not None:
            ppl, base = value(row, "perplexity"), value(dense, "perplexity")
            if ppl is None or base is None or ppl > base * (1 + self.max_ppl_increase) * (1 + 1e-12):
                return False
        if self.min_accuracy is not None:
            acc = value(row, "zeroshot_mean")
            if acc is None or acc < self.min_accuracy:
                return False
        return True


@dataclass
class Selection:
    """The recommended point, why, and what it was chosen from."""

    row: Row
    cost: str
    budget: Budget
    sentence: str
    candidates: list[Row] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.row.label,
            "cost": self.cost,
            "max_ppl_increase": self.budget.max_ppl_increase,
            "min_accuracy": self.budget.min_accuracy,
            "sentence": self.sentence,
            "candidates": [r.label for r in self.candidates],
        }


def _quality_key(row: Row, budget: Budget) -> float:
    """Smaller = better quality, for tie-breaking."""
    if budget.max_ppl_increase is not None:
        return value(row, "perplexity") or float("inf")
    return -(value(row, "zeroshot_mean") or 0.0)


def ppl_change(row: Row, dense: Row) -> float | None:
    ppl, base = value(row, "perplexity"), value(dense, "perplexity")
    return None if ppl is None or not base else ppl / base - 1


def select(rows: Sequence[Row], budget: Budget, cost: str | None = None) -> Selection:
    """The point with the best `cost` among those inside `budget` (see the module docstring)."""
    if budget.min_accuracy is not None and not any(value(r, "zeroshot_mean") is not None for r in rows):
        raise PrunelabError("--min-accuracy needs zero-shot accuracy: add evaluation.tasks to the sweep config")
    dense = dense_row(rows)
    cost = cost or default_cost(rows)
    cm = metric(cost)
    if cm.role != "cost":
        raise PrunelabError(f"'{cost}' is not a cost metric; use one of: {', '.join(DEFAULT_COSTS)}, ...")
    candidates = [r for r in rows if budget.admits(r, dense) and value(r, cost) is not None]
    if not candidates:
        raise PrunelabError(f"no point has {budget.describe(dense)} and a measured {cost}")
    sign = -1.0 if cm.higher_is_better else 1.0
    best = min(candidates, key=lambda r: (sign * (value(r, cost) or 0.0), _quality_key(r, budget), r.index))
    return Selection(best, cost, budget, _sentence(best, dense, candidates, rows, budget, cm), candidates)


def _sentence(best: Row, dense: Row, candidates: list[Row], rows: Sequence[Row], budget: Budget, cm: Metric) -> str:
    inside = f"the {len(candidates)} of {len(rows)} points with {budget.describe(dense)}"
    word = "higher" if cm.higher_is_better else "lower"
    unit = f" {cm.unit}" if cm.unit else ""
    if best is dense and len(candidates) > 1:
        return (
            f"Recommended: dense — none of the {len(candidates) - 1} pruned points with {budget.describe(dense)} "
            f"has a {word} {cm.label} than dense ({cm.format(value(dense, cm.name))}{unit})."
        )
    if best is dense:
        over = [r for r in rows if r is not dense and value(r, "perplexity") is not None]
        closest = min(over, key=lambda r: value(r, "perplexity") or float("inf"), default=None)
        why = ""
        change = ppl_change(closest, dense) if closest is not None else None
        if closest is not None and change is not None and budget.max_ppl_increase is not None:
            why = f"; the closest, {closest.label}, costs {change:+.1%} perplexity"
        return f"Recommended: dense — no pruned point is inside the budget ({budget.describe(dense)}){why}."
    v, d = value(best, cm.name), value(dense, cm.name)
    ratio = f", {v / d:.2f}x dense" if v is not None and d else ""
    word = "highest" if cm.higher_is_better else "lowest"
    quality = []
    change = ppl_change(best, dense)
    if change is not None:
        quality.append(f"perplexity {value(best, 'perplexity'):.3f} ({change:+.1%})")
    acc = value(best, "zeroshot_mean")
    if acc is not None:
        quality.append(f"zero-shot accuracy {acc:.1%}")
    speed = ""
    if cm.name != "decode_tokens_per_s":
        s, sd = value(best, "decode_tokens_per_s"), value(dense, "decode_tokens_per_s")
        if s is not None and sd and best.method == "structured":
            speed = f", and it decodes at {s / sd:.2f}x the dense speed"
        elif s is not None and sd:  # zeros in dense kernels: a measured difference is timing noise, not a gain
            speed = f"; its zeros run through dense kernels, so expect the dense speed (measured {s / sd:.2f}x)"
    return (
        f"Recommended: {best.label} — it has the {word} {cm.label} ({cm.format(v)}{unit}{ratio}) among {inside}, "
        f"at {' and '.join(quality)}{speed}."
    )
