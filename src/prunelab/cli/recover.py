"""`prunelab recover PRUNED_DIR`: parse -> RecoverConfig -> api.recover_job; also the `--recover*` flags of
`prunelab prune` (`recover_args`, `recover_config`), both built from RecoverConfig's fields."""

from __future__ import annotations

import argparse
from typing import Any

from prunelab.cli._base import add_field, footprint_args, footprint_config, inference_args, inference_config
from prunelab.config.base import build
from prunelab.config.models import ModelConfig
from prunelab.config.recover import RecoverConfig
from prunelab.errors import PrunelabError

FIELDS = list(RecoverConfig.model_fields)
EPILOG = """\
Distillation (mode distill) trains the student to match the dense teacher's token distributions (KL at
temperature T, x T^2); mode lora is plain next-token loss with LoRA adapters. LoRA adapters are merged back, so
the output loads with plain transformers. Checkpoints go to OUT/.recover-checkpoint every --checkpoint-every
steps; rerunning the same command resumes there (a kill loses at most that many steps). The output is written
atomically and its prunelab.json records the recovery (data, tokens, steps, losses, seconds, tokens/s), its
energy and carbon, and beside them the inference energy per 1k generated tokens of the dense model (the teacher)
and of the recovered one, with the tokens after which the recovery's energy is repaid (--no-inference-energy
skips that short decode).
--teacher-topk K runs the teacher once per window and caches its top-K log-probs in OUT/.recover-checkpoint
(kept by a kill, removed when the run finishes; `recovery.teacher_cache` records its build seconds and bytes);
it pays when windows are seen more than once (budget above the data, or a resume).
Data parallel: `accelerate launch -m prunelab.cli recover ...` (the global batch is batch x accumulation x processes).
"""


def register(sub: Any) -> None:
    p = sub.add_parser("recover", help="recover a structured-pruned folder by distillation from the dense model",
                       description=EPILOG)  # fmt: skip
    p.add_argument("pruned", metavar="PRUNED_DIR", help="folder written by `prunelab prune --method structured`")
    p.add_argument("--teacher", default=None, help="the dense model (folder, hub id or .gguf); needed for distill")
    p.add_argument("--out", default=None, help="output folder (default: PRUNED_DIR-recovered)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_field(p, ModelConfig, "device")
    p.add_argument("--json", dest="json_path", default=None, help="write the machine-readable report here")
    for name in FIELDS:
        required: dict[str, Any] = {"default": None, "required": True} if name == "tokens" else {}
        add_field(p, RecoverConfig, name, **required)
    footprint_args(p, "the recovery")
    inference_args(p, "the recovery's footprint")
    p.set_defaults(run=run)


def recover_args(p: argparse.ArgumentParser) -> None:
    """`prune --recover MODE --recover-tokens N --recover-FIELD ... --teacher DIR`."""
    g = p.add_argument_group(
        "recovery after structured pruning (see `prunelab recover --help`)",
        "with --option iterative_steps=k the token budget is shared evenly by k-1 short recoveries between the "
        "steps and the one at the end",
    )
    for name in FIELDS:
        flag = "--recover" if name == "mode" else f"--recover-{name.replace('_', '-')}"
        info = RecoverConfig.model_fields[name]
        shown = "" if info.is_required() or info.default is None else f" (default: {info.default})"
        add_field(g, RecoverConfig, name, flag, default=None, dest=f"recover_{name}",
                  help=f"{info.description}{shown}")  # fmt: skip
    g.add_argument("--teacher", default=None, help="dense model to distill from (default: the input model)")


def recover_config(args: argparse.Namespace) -> RecoverConfig | None:
    given = {k: getattr(args, f"recover_{k}") for k in FIELDS if getattr(args, f"recover_{k}") is not None}
    if "mode" not in given:
        if given or args.teacher:
            flags = [f"--recover-{k.replace('_', '-')}" for k in given] + ["--teacher"] * bool(args.teacher)
            raise PrunelabError(f"{', '.join(flags)} need --recover distill|lora")
        return None
    if "tokens" not in given:
        raise PrunelabError("--recover needs a token budget: --recover-tokens N")
    return build(RecoverConfig, given, "recovery settings")  # type: ignore[no-any-return]


def run(args: argparse.Namespace) -> int:
    from prunelab import api

    cfg = build(RecoverConfig, {k: getattr(args, k) for k in FIELDS}, "recovery settings")
    report = api.recover_job(cfg, args.pruned, args.teacher, args.out, args.overwrite, args.json_path, args.device,
                             footprint=footprint_config(args), inference=inference_config(args))  # fmt: skip
    print_recovery(report["recovery"])
    print_recovery_footprint(report["recovery"])
    print(f"saved to {report['output']}")
    return 0


def print_recovery(r: dict[str, Any]) -> None:
    print(
        f"recovery {r['mode']} ({r['adapter']}): {r['tokens_trained']:,} tokens in {r['steps']} steps, loss "
        f"{r['loss_first']:.4f} -> {r['loss_last']:.4f}, {r['seconds']:.1f} s, {r['tokens_per_second']:,.0f} tokens/s"
    )


def print_recovery_footprint(r: dict[str, Any]) -> None:
    """The recovery's energy and carbon, and beside them the inference energy and the break-even."""
    from prunelab.cli.train_aware import print_footprint, print_payback

    print_footprint(f"{r['mode']} recovery", r)
    print_payback(f"{r['mode']} recovery", "recovered", r.get("payback"))
