"""The one recovery training loop after structured pruning: distillation from the dense teacher or LoRA
next-token fine-tuning, resumable, data parallel under accelerate.

- mode `distill`: KL to the teacher's token distributions at temperature T (`distill.kl_loss`), plus optionally
  the hidden-state MSE at matched blocks; all weights or LoRA adapters trained. With `teacher_topk` k the teacher
  runs once per window before the loop and the loss reads its cached top-k (`teacher_cache.py`).
- mode `lora`: plain next-token loss, LoRA adapters (LLM-Pruner's recovery); also what `--recover-steps` of the
  structured method runs (`pruning/structured/recover.py`).
LoRA adapters (peft) sit on the Linear layers of the decoder blocks and are merged back, so the result is a plain
transformers model of the pruned shapes.

Data: windows (n, L) in a seeded order, re-shuffled each epoch; optimizer step s uses global windows
[s*G, (s+1)*G) (G = batch x accumulation x processes), rank r taking its slice of each micro-step. Because the
data position and the learning rate are functions of the step alone, a checkpoint (checkpoint.py) needs no data
loader state, and one process with batch 2 sees exactly the windows two processes with batch 1 see.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab._util import keep_on_interrupt, progress, progress_enabled, work_span
from prunelab.config.recover import RecoverConfig
from prunelab.errors import PrunelabError
from prunelab.models import find_blocks, is_prunable
from prunelab.training import checkpoint as ckpt
from prunelab.training import teacher_cache
from prunelab.training.distill import HiddenMatch, block_outputs, kl_loss, layer_map, next_token_loss

log = logging.getLogger(__name__)


def step_windows(step: int, global_batch: int, n: int, seed: int) -> list[int]:
    """Indices of the windows of optimizer step `step` in the seeded, per-epoch shuffled order."""
    out, perms = [], {}
    for g in range(step * global_batch, (step + 1) * global_batch):
        epoch = g // n
        if epoch not in perms:
            perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.append(int(perms[epoch][g % n]))
    return out


def lr_at(step: int, steps: int, peak: float, schedule: str) -> float:
    """Linear warmup over 5% of the steps, then constant or cosine down to 10% of the peak."""
    warmup = max(1, round(0.05 * steps))
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def add_lora(model: nn.Module, rank: int, alpha: int, seed: int) -> nn.Module:
    """peft LoRA on every Linear/Conv1D inside the decoder blocks (lm_head and embeddings stay as they are)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise PrunelabError("LoRA recovery needs peft: pip install 'prunelab[recover]'") from e
    prefix, blocks = find_blocks(model)
    leaves = sorted({name.rsplit(".", 1)[-1] for b in blocks for name, m in b.named_modules() if is_prunable(m)})
    targets = f"{prefix}\\.\\d+\\..*\\.?({'|'.join(leaves)})$"
    conv = any(type(m).__name__ == "Conv1D" for m in blocks.modules())
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets, fan_in_fan_out=conv)
    torch.manual_seed(seed)  # the adapters' random init
    return get_peft_model(model, config)


def merge_lora(peft_model: nn.Module, model: nn.Module) -> None:
    """Fold the adapters into `model`'s weights and remove every trace of peft from it."""
    merged = peft_model.merge_and_unload()  # type: ignore[operator]
    assert merged is model, "peft returned a different model object"
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if attr in vars(model):
            delattr(model, attr)


class _Student(nn.Module):
    """The trained module (what DDP wraps): the student and the hidden-state projections."""

    def __init__(self, lm: nn.Module, blocks: Iterable[nn.Module], match: HiddenMatch | None) -> None:
        super().__init__()
        self.lm, self.match = lm, match
        self._blocks = list(blocks)

    def forward(self, ids: torch.Tensor, t_hidden: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, Any]:
        """(logits, hidden-state MSE to `t_hidden` or None): the MSE inside forward, so DDP sees every use."""
        with block_outputs(self._blocks, None if self.match is not None else []) as hidden:
            logits = self.lm(input_ids=ids, use_cache=False).logits
        mse = self.match(list(hidden), t_hidden) if self.match is not None and t_hidden is not None else None
        return logits, mse


def is_main_process() -> bool:
    """Under `accelerate launch` every process runs the whole job; only the first one writes the output."""
    from accelerate import PartialState

    return bool(PartialState().is_main_process)


def _accelerator(device: torch.device, dtype: str) -> Any:
    """accelerate keeps one process-wide state and refuses a second Accelerator with another mixed precision; a
    single process may run several recoveries (a sweep, an A/B of dtypes), so there the old state is dropped. Under
    `accelerate launch` the launcher's precision stands and a different request is an error, not a silent switch."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    gpu = device.type != "cpu"
    bf16 = dtype == "bfloat16" or (dtype == "auto" and gpu)
    wanted = "bf16" if bf16 else "no"
    state = AcceleratorState._shared_state
    if state.get("_mixed_precision", wanted) != wanted:
        if PartialState().num_processes > 1:
            raise PrunelabError(f"this distributed run was launched with mixed precision {state['_mixed_precision']}"
                                f"; recovery dtype {dtype} asks for {wanted}")  # fmt: skip
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=not gpu, mixed_precision=wanted)


def recover(
    student: nn.Module,
    cfg: RecoverConfig,
    windows: torch.Tensor,
    teacher: nn.Module | None = None,
    checkpoint_dir: str | Path | None = None,
    removed_layers: Sequence[int] | None = None,
    identity: dict[str, Any] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train `student` in place on `windows` (n, L) as `cfg` says; return the record for prunelab.json.

    `checkpoint_dir`: resume from and write checkpoints there (None: no checkpoints). `identity`: what else the
    result depends on (e.g. the teacher's path), part of the checkpoint's fingerprint. `on_step(step)` runs after
    every optimizer step (tests stop a run there)."""
    if cfg.mode == "distill" and teacher is None:
        raise PrunelabError("distillation needs a teacher model")
    if cfg.teacher_topk and teacher is not None:
        teacher_cache.check_k(cfg.teacher_topk, teacher)
    acc = _accelerator(next(student.parameters()).device, cfg.dtype)
    world, rank = acc.num_processes, acc.process_index
    global_batch = cfg.batch_size * cfg.grad_accum * world
    steps = math.ceil(cfg.tokens / (global_batch * windows.shape[1]))
    settings = {**cfg.model_dump(exclude={"checkpoint_every"}), "world": world, **(identity or {})}
    print_key = ckpt.fingerprint(settings, windows, student)
    state = ckpt.load(Path(checkpoint_dir) / ckpt.CHECKPOINT_DIR, print_key) if checkpoint_dir else None

    prefix, blocks = find_blocks(student)
    match, t_keep = None, None
    if teacher is not None:
        t_blocks = find_blocks(teacher)[1]
        t_keep = layer_map(len(blocks), len(t_blocks), removed_layers)
        if cfg.hidden_mse:
            s_width: int = getattr(student.config, "hidden_size")  # noqa: B009
            t_width: int = getattr(teacher.config, "hidden_size")  # noqa: B009
            torch.manual_seed(cfg.seed)
            match = HiddenMatch(s_width, t_width, len(blocks))
        teacher.eval().requires_grad_(False).to(acc.device)
    cache, cache_info = None, None
    if cfg.teacher_topk and teacher is not None:
        total = steps * global_batch  # the windows this run's steps use, all processes together
        n_windows = windows.shape[0]
        needed = list(range(n_windows)) if total >= n_windows else sorted(step_windows(0, total, n_windows, cfg.seed))
        folder = Path(checkpoint_dir) / ckpt.CHECKPOINT_DIR if checkpoint_dir else None
        try:
            with work_span("teacher-topk-cache", str(acc.device)) as cache_span:
                cache, cache_info = teacher_cache.prepare(teacher, windows, needed, cfg.teacher_topk,
                                                          cfg.temperature, cfg.batch_size, acc, folder)  # fmt: skip
        except KeyboardInterrupt as e:
            note_kept(e, checkpoint_dir)
            raise
        if cache_span:
            cache_info.update(energy=cache_span["energy"], carbon=cache_span["carbon"])
    requires_grad = {n: p.requires_grad for n, p in student.named_parameters()}
    was_training = student.training
    lm = add_lora(student, cfg.lora_rank, cfg.lora_alpha or 2 * cfg.lora_rank, cfg.seed) if cfg.trains == "lora" \
        else student.requires_grad_(True)  # fmt: skip
    module = _Student(lm, blocks, match).to(acc.device)
    trained = [n for n, p in module.named_parameters() if p.requires_grad]
    optim = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=cfg.peak_lr, weight_decay=0.0)
    losses: list[float] = []
    start, seconds_before = 0, 0.0
    if state is not None:
        unexpected = module.load_state_dict(state["trained"], strict=False).unexpected_keys
        if unexpected or set(state["trained"]) != set(trained):
            raise PrunelabError(f"recovery checkpoint in {checkpoint_dir} does not fit this model; remove it")
        optim.load_state_dict(state["optimizer"])
        ckpt.set_rng_state(state["rng"])
        start, losses, seconds_before = state["step"], state["losses"], state["seconds"]
        log.info("recovery: resuming at step %d of %d from %s", start, steps, checkpoint_dir)
    model, optim = acc.prepare(module, optim)
    model.train()
    began = time.perf_counter()
    bar = progress(total=steps, initial=start, desc=f"recovery ({cfg.mode})", unit="step",
                   disable=not (progress_enabled() and acc.is_main_process))  # fmt: skip
    every = max(1, steps // 20)
    # Energy and carbon of this run's steps (not of a resumed run's earlier ones), when the api meters spans.
    span = contextlib.ExitStack()
    footprint = span.enter_context(work_span(f"{cfg.mode}-recovery", str(acc.device)))
    try:
        for step in range(start, steps):
            for group in optim.param_groups:
                group["lr"] = lr_at(step, steps, cfg.peak_lr, cfg.schedule)
            idx = step_windows(step, global_batch, windows.shape[0], cfg.seed)
            total = torch.zeros((), device=acc.device)
            for micro in range(cfg.grad_accum):
                lo = (micro * world + rank) * cfg.batch_size
                ids = windows[idx[lo : lo + cfg.batch_size]].to(acc.device)
                sync = contextlib.nullcontext() if micro == cfg.grad_accum - 1 else acc.no_sync(model)
                with sync, acc.autocast():
                    cached = cache.batch(idx[lo : lo + cfg.batch_size], acc.device) if cache is not None else None
                    loss = _loss(model, teacher, t_keep, ids, cfg, cached)
                    acc.backward(loss / cfg.grad_accum)
                total += loss.detach() / cfg.grad_accum
            acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optim.step()
            optim.zero_grad(set_to_none=True)
            losses.append(float(acc.reduce(total, reduction="mean")))
            done = step + 1
            rate = (done - start) * global_batch * windows.shape[1] / max(time.perf_counter() - began, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", tok_s=f"{rate:,.0f}")
            if not bar.disable or done % every == 0 or done == steps:
                log.log(logging.DEBUG if not bar.disable else logging.INFO,
                        "recovery step %d/%d loss %.4f %.0f tokens/s", done, steps, losses[-1], rate)  # fmt: skip
            if checkpoint_dir and done % cfg.checkpoint_every == 0 and done < steps:
                if acc.is_main_process:
                    unwrapped = acc.unwrap_model(model)
                    sd = unwrapped.state_dict()
                    ckpt.save(Path(checkpoint_dir) / ckpt.CHECKPOINT_DIR, {
                        "fingerprint": print_key, "step": done, "losses": losses, "rng": ckpt.rng_state(),
                        "trained": {n: sd[n].detach().cpu() for n in trained}, "optimizer": optim.state_dict(),
                        "seconds": seconds_before + time.perf_counter() - began,
                    })  # fmt: skip
                acc.wait_for_everyone()
            if on_step is not None:
                on_step(done)
    except KeyboardInterrupt as e:
        note_kept(e, checkpoint_dir)
        raise
    finally:
        span.close()
        bar.close()
        if cfg.trains == "lora":
            merge_lora(lm, student)
        for n, p in student.named_parameters():
            p.requires_grad_(requires_grad.get(n, p.requires_grad))
        student.train(was_training)
    if cache is not None and checkpoint_dir:  # finished: the cache goes (the checkpoint goes with the save)
        if acc.is_main_process:
            teacher_cache.remove(Path(checkpoint_dir) / ckpt.CHECKPOINT_DIR)
        acc.wait_for_everyone()
    seconds = seconds_before + time.perf_counter() - began
    tokens = steps * global_batch * windows.shape[1]
    tail = losses[-min(10, len(losses)) :]
    record: dict[str, Any] = {
        **cfg.record(), "steps": steps, "tokens_trained": tokens, "global_batch": global_batch,
        "processes": world, "resumed_from_step": start or None, "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None, "loss_last10_mean": sum(tail) / len(tail) if tail else None,
        "losses": [round(x, 5) for x in losses], "seconds": seconds, "tokens_per_second": tokens / max(seconds, 1e-9),
        "layer_map": t_keep, "blocks": prefix, "teacher_cache": cache_info or {"used": False},
    }  # fmt: skip
    if footprint:
        record.update(energy=footprint["energy"], carbon=footprint["carbon"], metered_seconds=footprint["seconds"])
    log.info("recovery %s: loss %.4f -> %.4f over %d steps (%d tokens, %.0f tokens/s)", cfg.mode,
             record["loss_first"], record["loss_last"], steps, tokens, record["tokens_per_second"])  # fmt: skip
    return record


def note_kept(error: KeyboardInterrupt, checkpoint_dir: str | Path | None) -> None:
    """An interrupt keeps the checkpoint and the teacher cache on purpose: say so (log, and the CLI's last line).
    Called here and by the api jobs (an interrupt before the loop, when resuming); once per interrupt."""
    folder = Path(checkpoint_dir) / ckpt.CHECKPOINT_DIR if checkpoint_dir else None
    if folder is None or getattr(error, "prunelab_kept", None):
        return
    cache = folder / teacher_cache.CACHE_DIR / teacher_cache.FILE
    paths = {"checkpoint": folder / ckpt.STATE, "teacher top-k cache": cache}
    kept = [what for what, path in paths.items() if path.exists()]
    if kept:
        note = f"kept the recovery {' and '.join(kept)} in {folder}: rerun the same command to resume"
        log.warning("recovery stopped; %s", note)
        keep_on_interrupt(error, note)


def _loss(model: nn.Module, teacher: nn.Module | None, t_keep: list[int] | None, ids: torch.Tensor,
          cfg: RecoverConfig, cached: teacher_cache.Targets | None = None) -> torch.Tensor:  # fmt: skip
    if cfg.mode == "lora" or teacher is None:
        return next_token_loss(model(ids)[0], ids)
    if cached is not None:  # the teacher's top-k from the cache (teacher_topk; never with hidden_mse)
        return teacher_cache.topk_kl_loss(model(ids)[0], *cached, cfg.temperature)
    with torch.no_grad(), block_outputs(list(find_blocks(teacher)[1]), t_keep if cfg.hidden_mse else []) as t_hidden:
        t_logits = teacher(input_ids=ids, use_cache=False).logits
    logits, mse = model(ids, list(t_hidden) if cfg.hidden_mse else None)
    loss = kl_loss(logits, t_logits, cfg.temperature)
    return loss + cfg.hidden_mse * mse if mse is not None else loss
