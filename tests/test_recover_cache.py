"""The teacher top-k cache of distillation (`teacher_topk`): the loss against the full KL (equal at k = V, the
chain-rule lower bound below), a hand-computed case, reuse without a teacher forward, a changed teacher rebuilding
it, resume with the cache, its removal after a finished run, and the CLI's record of it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from prunelab import _util
from prunelab.config.recover import RecoverConfig
from prunelab.training import checkpoint as ckpt
from prunelab.training import teacher_cache as tc
from prunelab.training.distill import kl_loss
from prunelab.training.recover import recover
from tests.conftest import CORPUS, VOCAB, make_model, make_tokenizer
from tests.test_recover import Killed, pruned, windows


def logits_of(student, teacher, ids):
    with torch.no_grad():
        return student(input_ids=ids).logits, teacher(input_ids=ids).logits


def cached_loss(s_logits, t_logits, k: int, t: float, dtype=torch.float32) -> torch.Tensor:
    values, indices, rest = tc.topk_targets(t_logits, k, t)
    return tc.topk_kl_loss(s_logits, values.to(dtype), indices.int(), rest, t)


def test_a_hand_computed_rest_bucket() -> None:
    p, q = torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.5, 0.25, 0.25])
    # k = 1: outcomes (token 0, rest): teacher (0.6, 0.4), student (0.5, 0.5)
    got = cached_loss(q.log()[None], p.log()[None], k=1, t=1.0)
    assert float(got) == pytest.approx(0.6 * math.log(0.6 / 0.5) + 0.4 * math.log(0.4 / 0.5), rel=1e-5)
    # renormalising the teacher over its top-1 instead would give KL = ln(1/0.5) = 0.693: not what is computed
    assert float(got) != pytest.approx(math.log(2.0), rel=1e-2)


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_full_support_equals_kl_loss_and_its_gradient(t: float) -> None:
    student, teacher, ids = pruned()[0], make_model("llama"), windows(3)
    s_logits, t_logits = logits_of(student, teacher, ids)
    full = kl_loss(s_logits, t_logits, t)
    assert float(full) > 1e-3
    s1 = s_logits.clone().requires_grad_(True)
    s2 = s_logits.clone().requires_grad_(True)
    cached = cached_loss(s1, t_logits, VOCAB, t)
    torch.testing.assert_close(cached, full, atol=1e-6, rtol=1e-5)
    cached.backward()
    kl_loss(s2, t_logits, t).backward()
    assert s1.grad is not None and s2.grad is not None and torch.isfinite(s1.grad).all()
    torch.testing.assert_close(s1.grad, s2.grad, atol=1e-7, rtol=1e-4)
    # as stored (float16 log-probs, through the real builder): |delta| < 5e-4 * KL (measured 6e-5)
    built = tc.build(teacher, ids, list(range(3)), VOCAB, t, 2, torch.device("cpu"))
    stored = tc.topk_kl_loss(s_logits, *built.batch([0, 1, 2], torch.device("cpu")), t)
    assert abs(float(stored) - float(full)) < 5e-4 * float(full)


def test_small_k_is_the_chain_rule_lower_bound() -> None:
    """KL_full = KL_topk + p_rest * KL(teacher tail || student tail): checked against the tails' KL computed on
    their own (renormalised), per token, then averaged; so the cached loss is below the full one, and not equal."""
    student, teacher, ids = pruned()[0], make_model("llama"), windows(2)
    s_logits, t_logits = logits_of(student, teacher, ids)
    k = 8
    full, cached = float(kl_loss(s_logits, t_logits)), float(cached_loss(s_logits, t_logits, k, 1.0))
    lp = F.log_softmax(t_logits.reshape(-1, VOCAB), -1)
    lq = F.log_softmax(s_logits.reshape(-1, VOCAB), -1)
    tail = torch.ones_like(lp, dtype=torch.bool).scatter(-1, lp.topk(k, -1).indices, False)
    gaps = []
    for i in range(lp.shape[0]):
        pt, qt = lp[i][tail[i]], lq[i][tail[i]]
        p_rest = pt.logsumexp(0)
        gaps.append(p_rest.exp() * F.kl_div(qt - qt.logsumexp(0), pt - p_rest, log_target=True, reduction="sum"))
    gap = float(torch.stack(gaps).mean())
    assert 0 < cached < full and gap > 1e-4
    assert full - cached == pytest.approx(gap, rel=1e-3, abs=1e-6)


def counting(teacher) -> list[int]:
    calls: list[int] = []
    real = teacher.forward

    def forward(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    teacher.forward = forward
    return calls


def cfg(**extra) -> RecoverConfig:
    return RecoverConfig(tokens=5 * 2 * 16, seqlen=16, batch_size=2, lr=3e-3, checkpoint_every=2, teacher_topk=16,
                         **extra)  # fmt: skip


def kill_at_3(step: int) -> None:
    if step == 3:
        raise Killed()


def test_resume_reuses_the_cache_and_matches_the_uninterrupted_run(tmp_path: Path) -> None:
    teacher, data = make_model("llama"), windows(6)
    calls = counting(teacher)
    straight, _ = pruned()
    record = recover(straight, cfg(), data, teacher, tmp_path / "a")
    # 5 steps x 2 windows = 10 > 6 windows: every window once, in batches of 2; no teacher forward while training
    assert len(calls) == 3
    info = record["teacher_cache"]
    assert info["used"] and info["k"] == 16 and not info["reused"] and info["build_seconds"] > 0
    assert info["bytes"] == 6 * 16 * 16 * (2 + 4) + 6 * 16 * 4 + 6 * 8  # values, ids, rest, window ids
    assert not (tmp_path / "a" / ckpt.CHECKPOINT_DIR / tc.CACHE_DIR).exists()  # finished: the cache is gone

    calls.clear()
    with pytest.raises(Killed) as stopped:
        recover(pruned()[0], cfg(), data, teacher, tmp_path / "b", on_step=kill_at_3)
    assert len(calls) == 3 and ckpt.only_checkpoint(tmp_path / "b")
    assert (tmp_path / "b" / ckpt.CHECKPOINT_DIR / tc.CACHE_DIR / tc.FILE).is_file()
    line = _util.interrupt_message(stopped.value)
    assert "checkpoint and teacher top-k cache" in line and "no partial output" not in line

    calls.clear()
    resumed, _ = pruned()
    record = recover(resumed, cfg(), data, teacher, tmp_path / "b")
    assert calls == [] and record["teacher_cache"]["reused"] and record["resumed_from_step"] == 2
    assert record["teacher_cache"]["build_seconds"] == 0.0
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_changed_teacher_or_a_damaged_file_rebuilds_the_cache(tmp_path: Path) -> None:
    teacher, data = make_model("llama"), windows(6)
    calls = counting(teacher)
    with pytest.raises(Killed):
        recover(pruned()[0], cfg(), data, teacher, tmp_path / "b", on_step=kill_at_3)
    path = tmp_path / "b" / ckpt.CHECKPOINT_DIR / tc.CACHE_DIR / tc.FILE
    key = torch.load(path, weights_only=True)["fingerprint"]
    with torch.no_grad():
        teacher.lm_head.weight[0, 0] += 1e-3  # same path, same shapes: only the weights tell
    calls.clear()
    with pytest.raises(Killed):
        recover(pruned()[0], cfg(), data, teacher, tmp_path / "b", on_step=kill_at_3)
    assert len(calls) == 3 and torch.load(path, weights_only=True)["fingerprint"] != key
    path.write_bytes(b"not a torch file")
    calls.clear()
    record = recover(pruned()[0], cfg(), data, teacher, tmp_path / "b")
    assert len(calls) == 3 and not record["teacher_cache"]["reused"]


def test_cached_and_uncached_runs_start_at_the_same_loss_when_k_is_the_vocabulary() -> None:
    teacher, data = make_model("llama"), windows(4)
    plain = recover(pruned()[0], RecoverConfig(tokens=2 * 2 * 16, seqlen=16, batch_size=2, lr=3e-3), data, teacher)
    full = recover(pruned()[0], RecoverConfig(tokens=2 * 2 * 16, seqlen=16, batch_size=2, lr=3e-3,
                                              teacher_topk=VOCAB), data, teacher)  # fmt: skip
    assert full["loss_first"] == pytest.approx(plain["loss_first"], rel=2e-3)
    assert plain["teacher_cache"] == {"used": False}


def test_settings_refuse_what_the_cache_cannot_do() -> None:
    with pytest.raises(ValueError, match="hidden_mse"):
        RecoverConfig(tokens=32, teacher_topk=8, hidden_mse=0.1)
    with pytest.raises(ValueError, match="mode distill"):
        RecoverConfig(tokens=32, mode="lora", teacher_topk=8)
    with pytest.raises(ValueError, match="greater than or equal"):
        RecoverConfig(tokens=32, teacher_topk=-1)
    with pytest.raises(Exception, match="exceeds the teacher's vocabulary of 320"):
        recover(pruned()[0], RecoverConfig(tokens=32, seqlen=16, teacher_topk=VOCAB + 1), windows(2),
                make_model("llama"))  # fmt: skip


def test_cli_recover_with_the_cache_records_it(tmp_path: Path) -> None:
    from prunelab.cli import main

    dense = tmp_path / "dense"
    make_model("llama").save_pretrained(dense)
    make_tokenizer().save_pretrained(dense)
    student, _ = pruned()
    student.save_pretrained(tmp_path / "pruned")
    make_tokenizer().save_pretrained(tmp_path / "pruned")
    (tmp_path / "c.txt").write_text(CORPUS)
    args = ["-q", "recover", str(tmp_path / "pruned"), "--teacher", str(dense), "--tokens", "96", "--seqlen", "16",
            "--batch-size", "2", "--data", str(tmp_path / "c.txt"), "--teacher-topk", "32", "--out",
            str(tmp_path / "r")]  # fmt: skip
    assert main(args) == 0
    rec = json.loads((tmp_path / "r" / "prunelab.json").read_text())["recovery"]
    assert rec["teacher_topk"] == 32 and rec["teacher_cache"]["used"] and rec["teacher_cache"]["bytes"] > 0
    assert not (tmp_path / "r" / ckpt.CHECKPOINT_DIR).exists()
