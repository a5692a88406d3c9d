"""`--owl-lambda auto` / `--owl-m auto`: choose OWL's lambda and M by held-out calibration loss, never test data.

OWL as published helps large models, but at 70% on SmolLM2-135M its default lambda 0.08 / M 5 made Wanda worse;
which values help depends on the model and the target, so they are chosen per run. The last `OWL_AUTO_HOLDOUT`
calibration windows are held out: each candidate prunes the model from the other windows, is scored by the mean
next-token NLL on the held-out ones (`prunelab.models.next_token_nll`), and the dense weights are restored. The
winner is then pruned from all the windows, as a given lambda would be, so it compares with uniform at equal data.

Candidates (`prunelab.config.prune`): the lambda grid at the given M; the M grid at the given lambda; with both
auto, M first at lambda's default, then lambda at the chosen M: at most len(M grid) + len(lambda grid) - 1 prunes,
not their product, plus the final prune. lambda 0 is uniform (M is then moot), so the search may keep uniform;
lambdas that leave [0, 1) at this target are skipped. Every candidate is logged and recorded in the report.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from prunelab.config.prune import AUTO, OWL_AUTO_HOLDOUT, OWL_LAMBDA_GRID, OWL_M_GRID, PruneConfig
from prunelab.errors import PrunelabError
from prunelab.models import next_token_nll

log = logging.getLogger(__name__)

PruneOnce = Callable[[PruneConfig, torch.Tensor], Any]  # prune the model in place from these windows


def held_out_nll(model: nn.Module, windows: torch.Tensor) -> float:
    """Mean next-token NLL per predicted token over `windows` (n, L), one window per forward."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        total = sum(next_token_nll(model, windows[i : i + 1].to(device)) for i in range(windows.shape[0]))
    model.train(was_training)
    return total / (windows.shape[0] * (windows.shape[1] - 1))


def lambdas_for(target: float) -> list[float]:
    """The lambda grid less the values OWL refuses at this target (target +/- lambda must stay in [0, 1))."""
    return [lam for lam in OWL_LAMBDA_GRID if target + lam < 1.0 and target - lam >= 0.0]


def search(
    model: nn.Module, cfg: PruneConfig, target: float, calib: torch.Tensor, prune_once: PruneOnce
) -> tuple[PruneConfig, dict[str, Any]]:
    """(cfg with lambda and M resolved, the record of the search). The model ends dense, as it came."""
    k = OWL_AUTO_HOLDOUT
    if calib.shape[0] <= k:
        raise PrunelabError(
            f"--owl-lambda/--owl-m auto hold out {k} calibration windows; --calib-samples must exceed {k}"
        )
    fit, held = calib[:-k], calib[-k:]
    default_lam = PruneConfig.model_fields["owl_lambda"].default
    default_m = PruneConfig.model_fields["owl_m"].default
    lambdas = lambdas_for(target)
    most = (len(OWL_M_GRID) if cfg.owl_m == AUTO else 0) + (len(lambdas) if cfg.owl_lambda == AUTO else 1)
    dense = {name: t.detach().clone() for name, t in model.state_dict().items()}
    tried: dict[tuple[float, float], float] = {}

    def score(lam: float, m: float) -> float:
        key = (lam, m if lam > 0 else default_m)  # lambda 0 is uniform whatever M is
        if key not in tried:
            prune_once(cfg.model_copy(update={"owl_lambda": key[0], "owl_m": key[1]}), fit)
            tried[key] = held_out_nll(model, held)
            model.load_state_dict(dense)
            log.info("owl auto %d/<=%d: lambda %g, M %g: held-out NLL %.4f", len(tried), most, *key, tried[key])
        return tried[key]

    lam = cfg.owl_lambda
    m = cfg.owl_m
    if m == AUTO:
        probe = lam
        if lam == AUTO:  # M at lambda's default, or at the largest lambda this target allows
            probe = default_lam if default_lam in lambdas else max([x for x in lambdas if x > 0], default=0.0)
        m = min(OWL_M_GRID, key=lambda x: score(float(probe), x)) if probe else default_m
    if lam == AUTO:
        lam = min(lambdas, key=lambda x: score(x, float(m)))
    chosen = cfg.model_copy(update={"owl_lambda": float(lam), "owl_m": float(m)})
    record = {
        "held_out_windows": k,
        "fit_windows": int(fit.shape[0]),
        "candidates": [{"owl_lambda": a, "owl_m": b, "held_out_nll": v} for (a, b), v in tried.items()],
        "chosen": {"owl_lambda": float(lam), "owl_m": float(m)},
    }
    return chosen, record
