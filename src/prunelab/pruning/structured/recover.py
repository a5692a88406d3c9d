"""Short LoRA fine-tune after structured pruning, merged back into the weights (LLM-Pruner's recovery step).

LoRA adapters (peft) on every Linear/Conv1D of the decoder blocks learn a low-rank correction from the causal LM
loss on the calibration windows; `merge_and_unload` folds them into the weights, so the saved model is a plain
transformers model of the pruned shapes. peft is an optional extra: `pip install prunelab[recover]`.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from prunelab._util import progress, work_span
from prunelab.errors import PrunelabError
from prunelab.models import find_blocks, is_prunable

log = logging.getLogger(__name__)


def lora_recover(
    model: nn.Module, calib: torch.Tensor, steps: int, lr: float, rank: int, batch_size: int, seed: int
) -> dict[str, Any]:
    """Fine-tune LoRA adapters for `steps` steps on `calib` (n, L) windows, merge them; return the loss curve."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise PrunelabError("--recover-steps needs peft: pip install 'prunelab[recover]'") from e
    prefix, blocks = find_blocks(model)
    leaf_names = sorted({name.rsplit(".", 1)[-1] for b in blocks for name, m in b.named_modules() if is_prunable(m)})
    # Only layers inside the blocks: lm_head / embeddings stay as they are.
    targets = f"{prefix}\\.\\d+\\..*\\.?({'|'.join(leaf_names)})$"
    conv = any(type(m).__name__ == "Conv1D" for m in blocks.modules())
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=targets, fan_in_fan_out=conv)
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    was_training = model.training
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    peft_model = get_peft_model(model, config)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses: list[float] = []
    peft_model.train()
    footprint: dict[str, Any] = {}
    try:
        # the fine-tune's energy and carbon, when the api meters spans (prunelab.measurement.footprint)
        with work_span("lora-recovery", str(device)) as footprint:
            for _ in progress(range(steps), desc="LoRA recovery", unit="step"):
                idx = torch.randint(0, calib.shape[0], (min(batch_size, calib.shape[0]),), generator=gen)
                batch = calib[idx].to(device)
                loss = peft_model(input_ids=batch, labels=batch, use_cache=False).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optim.step()
                optim.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
    finally:
        merged = peft_model.merge_and_unload()
        assert merged is model, "peft returned a different model object"
        for n, p in model.named_parameters():
            p.requires_grad_(requires_grad.get(n, p.requires_grad))
        model.train(was_training)
        for attr in ("peft_config", "_hf_peft_config_loaded"):
            if attr in vars(model):
                delattr(model, attr)
    first, last = (losses[0], losses[-1]) if losses else (None, None)
    log.info("LoRA recovery: loss %s -> %s over %d steps", first, last, steps)
    report = {"steps": steps, "lr": lr, "rank": rank, "batch_size": batch_size, "loss_first": first, "loss_last": last}
    if footprint:
        report.update(energy=footprint["energy"], carbon=footprint["carbon"], seconds=footprint["seconds"])
    return report
