"""Recovery after structured pruning: the distillation loss, one step, the LoRA merge, resume after a kill, the
distributed (gloo) path, and the CLI round trip through plain transformers."""

from __future__ import annotations

import copy
import json
import math
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from prunelab.config.prune import PruneConfig
from prunelab.config.recover import RecoverConfig
from prunelab.pruning.run import prune
from prunelab.training import checkpoint as ckpt
from prunelab.training.distill import kl_loss, layer_map
from prunelab.training.recover import recover, step_windows
from tests.conftest import CORPUS, VOCAB, make_model, make_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def windows(n: int = 8, seqlen: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def pruned(target: str = "mlp", sparsity: float = 0.25):
    model = make_model("llama")
    cfg = PruneConfig(method="structured", sparsity=sparsity, options={"target": target, "importance": "magnitude"})
    result = prune(model, cfg)
    return model, result


def kl_of(student, teacher, ids, t: float = 1.0) -> float:
    with torch.no_grad():
        return float(kl_loss(student(input_ids=ids).logits, teacher(input_ids=ids).logits, t))


def test_kl_is_zero_for_the_teacher_and_matches_a_hand_computed_case() -> None:
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # p_t = (3/4, 1/4)
    student = torch.tensor([[0.0, 0.0]])  # p_s = (1/2, 1/2)
    assert float(kl_loss(teacher, teacher)) == pytest.approx(0.0, abs=1e-7)
    # KL(t || s) = 3/4 ln(3/2) + 1/4 ln(1/2); the reverse direction KL(s || t) would give 0.1438
    assert float(kl_loss(student, teacher)) == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-5)
    p = math.sqrt(3) / (math.sqrt(3) + 1)  # T = 2 softens (3/4, 1/4) to sqrt(3):1; loss x T^2
    want = 4 * (p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p)))
    assert float(kl_loss(student, teacher, temperature=2.0)) == pytest.approx(want, rel=1e-5)


def test_kl_of_models_zero_for_a_copy_positive_for_a_pruned_student() -> None:
    teacher, ids = make_model("llama"), windows(2)
    assert kl_of(make_model("llama"), teacher, ids) == pytest.approx(0.0, abs=1e-6)
    student, _ = pruned()
    assert kl_of(student, teacher, ids) > 1e-3


def test_layer_map_keeps_the_teacher_indices_of_kept_layers() -> None:
    assert layer_map(3, 5, removed=[1, 3]) == [0, 2, 4]
    assert layer_map(4, 4) == [0, 1, 2, 3]
    assert layer_map(2, 4) == [1, 3]  # evenly spaced when the removed layers are unknown


@pytest.mark.parametrize("extra", [{}, {"hidden_mse": 0.1}, {"adapter": "lora", "lr": 1e-2}])
def test_one_distillation_step_lowers_the_loss(extra) -> None:
    teacher, ids = make_model("llama"), windows(4)
    student, _ = pruned()
    before = kl_of(student, teacher, ids)
    cfg = RecoverConfig(tokens=ids.numel(), seqlen=16, batch_size=4, lr=extra.pop("lr", 3e-3), **extra)
    record = recover(student, cfg, ids, teacher)
    assert record["steps"] == 1 and record["loss_first"] == pytest.approx(before + (record["loss_first"] - before))
    assert kl_of(student, teacher, ids) < before


def test_layer_pruned_student_records_its_teacher_blocks() -> None:
    config = make_model("llama").config
    config.num_hidden_layers = 4
    teacher = AutoModelForCausalLM.from_config(copy.deepcopy(config))
    student = copy.deepcopy(teacher)
    cfg = PruneConfig(method="structured", sparsity=0.25, options={"target": "layers"})
    result = prune(student, cfg, calib=windows(2))
    rc = RecoverConfig(tokens=16, seqlen=16, batch_size=1, hidden_mse=1.0)
    record = recover(student, rc, windows(2), teacher, removed_layers=result.extra["removed_layers"])
    kept = [i for i in range(4) if i not in result.extra["removed_layers"]]
    assert record["layer_map"] == kept and len(kept) == 3


def test_lora_merge_gives_a_plain_folder_with_the_unmerged_logits(tmp_path: Path) -> None:
    student, _ = pruned()
    ids, seen = windows(2), {}

    def grab(step: int) -> None:  # the student still carries its LoRA layers here (merged after the loop)
        with torch.no_grad():
            seen["logits"] = student(input_ids=ids).logits.clone()
        seen["lora"] = any("lora" in n for n, _ in student.named_modules())

    cfg = RecoverConfig(mode="lora", tokens=2 * 16 * 3, seqlen=16, batch_size=2, lr=1e-2)
    recover(student, cfg, windows(), on_step=grab)
    assert seen["lora"] and not any("lora" in n for n, _ in student.named_modules())
    student.save_pretrained(tmp_path / "out")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert not [k for k in plain.state_dict() if "lora" in k]
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, seen["logits"], atol=1e-4, rtol=1e-4)
        assert not torch.allclose(plain(input_ids=ids).logits, pruned()[0](input_ids=ids).logits)


class Killed(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("mode", ["distill", "lora"])
def test_resume_after_a_kill_gives_the_uninterrupted_weights(tmp_path: Path, mode: str) -> None:
    teacher, data = make_model("llama"), windows(6)
    cfg = RecoverConfig(mode=mode, tokens=5 * 2 * 16, seqlen=16, batch_size=2, lr=3e-3, checkpoint_every=2)
    straight, _ = pruned()
    recover(straight, cfg, data, teacher, tmp_path / "a")

    def kill_at_3(step: int) -> None:
        if step == 3:
            raise Killed()

    with pytest.raises(Killed):
        recover(pruned()[0], cfg, data, teacher, tmp_path / "b", on_step=kill_at_3)
    assert ckpt.only_checkpoint(tmp_path / "b")
    assert torch.load(tmp_path / "b" / ckpt.CHECKPOINT_DIR / ckpt.STATE, weights_only=False)["step"] == 2
    resumed, _ = pruned()
    record = recover(resumed, cfg, data, teacher, tmp_path / "b")
    assert record["resumed_from_step"] == 2 and record["steps"] == 5
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    other = cfg.model_copy(update={"temperature": 2.0})
    with pytest.raises(Exception, match="other settings"):
        recover(pruned()[0], other, data, teacher, tmp_path / "b")


def test_recoveries_in_other_dtypes_run_in_one_process() -> None:
    """accelerate refuses a second mixed precision per process; recover() must not: float32, then bfloat16, then
    float32 again, and the last run is the first one exactly (no autocast left over from the bfloat16 run)."""
    teacher, data, states = make_model("llama"), windows(4), []
    for dtype in ("float32", "bfloat16", "float32"):
        student, _ = pruned()
        recover(student, RecoverConfig(tokens=4 * 16, seqlen=16, batch_size=4, lr=3e-3, dtype=dtype), data, teacher)
        states.append(student.state_dict())
    for k in states[0]:
        torch.testing.assert_close(states[2][k], states[0][k], atol=0, rtol=0)
    moved = [k for k in states[0] if not torch.equal(states[1][k], states[0][k])]
    assert moved, "the bfloat16 run computed exactly what float32 did: no autocast"


def test_gradient_accumulation_matches_the_larger_batch() -> None:
    teacher, data, states = make_model("llama"), windows(4), []
    for batch, accum in ((2, 1), (1, 2)):
        student, _ = pruned()
        recover(student, RecoverConfig(tokens=2 * 2 * 16, seqlen=16, batch_size=batch, grad_accum=accum, lr=3e-3),
                data, teacher)  # fmt: skip
        states.append(student.state_dict())
    for k in states[0]:
        torch.testing.assert_close(states[1][k], states[0][k], atol=1e-5, rtol=1e-4)


def test_accumulated_gradient_is_the_mean_over_micro_steps(monkeypatch) -> None:
    """Plain SGD (AdamW swapped out) makes the update lr x gradient, so a missing 1/accum would double it (Adam's
    normalisation hides that); one step of 1 window x 2 micro-steps must equal w - lr * the gradient of the mean
    loss over both windows, computed here on a copy without the loop."""
    monkeypatch.setattr(torch.optim, "AdamW", lambda params, lr, weight_decay: torch.optim.SGD(params, lr=lr))
    teacher, data, lr = make_model("llama"), windows(4), 0.5
    student, _ = pruned()
    reference = copy.deepcopy(student)
    cfg = RecoverConfig(tokens=2 * 16, seqlen=16, batch_size=1, grad_accum=2, lr=lr, max_grad_norm=1e9)
    record = recover(student, cfg, data, teacher)
    assert record["steps"] == 1
    ids = data[step_windows(0, 2, data.shape[0], cfg.seed)]  # the two windows of step 0, one per micro-step
    with torch.no_grad():
        target = teacher(input_ids=ids).logits
    kl_loss(reference(input_ids=ids).logits, target).backward()
    largest = 0.0
    for (name, p), q in zip(reference.named_parameters(), student.parameters(), strict=True):
        assert p.grad is not None, name
        torch.testing.assert_close(q.detach(), p.detach() - lr * p.grad, atol=1e-6, rtol=1e-4, msg=name)
        largest = max(largest, float((lr * p.grad).abs().max()))
    assert largest > 1e-3  # a doubled step would miss by this much: far outside the tolerance above


def distributed_case(world: int, folder: str = "") -> dict[str, torch.Tensor]:
    """The same global batch of 2 windows per step: one process x 2 windows or two processes x 1 window. With a
    `folder` (shared by the ranks) the teacher is read from its top-k cache there: the main process builds and
    writes it, the other waits and reads it."""
    student, _ = pruned()
    extra = {"teacher_topk": 16, "checkpoint_every": 2} if folder else {"hidden_mse": 0.1}
    cfg = RecoverConfig(tokens=3 * 2 * 16, seqlen=16, batch_size=2 // world, lr=3e-3, **extra)
    record = recover(student, cfg, windows(6), make_model("llama"), folder or None)
    if folder:
        assert record["teacher_cache"]["used"]
    return {k: v.clone() for k, v in student.state_dict().items()}


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="torch built without gloo")
@pytest.mark.parametrize("teacher", ["forward", "topk-cache"])
def test_two_gloo_processes_match_one_process(tmp_path: Path, teacher: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "rank0.pt"
    folder = str(tmp_path / "two") if teacher == "topk-cache" else ""
    env = {"PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "tests" / "_recover_gloo.py")]
    procs = [
        subprocess.Popen(
            [*cmd, str(rank), str(port), str(out), folder],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=ROOT,
        )
        for rank in (0, 1)
    ]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    if any(p.returncode for p in procs) and "gloo" in "".join(logs).lower() and "not available" in "".join(logs):
        pytest.skip("gloo unavailable here")
    assert not any(p.returncode for p in procs), "".join(logs)[-3000:]
    two = torch.load(out, weights_only=True)
    one = distributed_case(world=1, folder=str(tmp_path / "one") if folder else "")
    changed = [k for k in one if not torch.equal(one[k], pruned()[0].state_dict()[k])]
    assert changed  # training moved the weights, so agreement below means something
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=1e-5, rtol=1e-4)


def test_cli_prune_recover_and_recover_resume(tmp_path: Path, monkeypatch, capsys) -> None:
    from prunelab.cli import main

    dense = tmp_path / "dense"
    make_model("llama").save_pretrained(dense)
    make_tokenizer().save_pretrained(dense)
    (tmp_path / "c.txt").write_text(CORPUS)
    common = [
        "--recover-tokens",
        "64",
        "--recover-data",
        str(tmp_path / "c.txt"),
        "--recover-seqlen",
        "16",
        "--recover-batch-size",
        "2",
        "--ppl",
        str(tmp_path / "c.txt"),
        "--seqlen",
        "16",
        "--max-windows",
        "2",
    ]
    prune_args = [
        "prune",
        "--model",
        str(dense),
        "--method",
        "structured",
        "--sparsity",
        "0.25",
        "--target",
        "mlp",
        "--calib",
        str(tmp_path / "c.txt"),
        "--calib-samples",
        "2",
        "--calib-seqlen",
        "16",
    ]
    assert main([*prune_args, "--recover", "distill", *common, "--output", str(tmp_path / "p")]) == 0
    meta = json.loads((tmp_path / "p" / "prunelab.json").read_text())
    rec = meta["recovery"]
    assert rec["mode"] == "distill" and rec["tokens_trained"] == 64 and rec["steps"] == 2 and rec["seconds"] > 0
    assert rec["perplexity_before_recovery"] and rec["teacher"] == str(dense)
    AutoModelForCausalLM.from_pretrained(tmp_path / "p")

    saves = []
    real_save = ckpt.save

    def save_then_die(folder, state):
        real_save(folder, state)
        saves.append(state["step"])
        raise KeyboardInterrupt

    args = ["recover", str(tmp_path / "p"), "--teacher", str(dense), "--tokens", "96", "--seqlen", "16",
            "--batch-size", "2", "--data", str(tmp_path / "c.txt"), "--checkpoint-every", "1", "--out",
            str(tmp_path / "r")]  # fmt: skip
    monkeypatch.setattr(ckpt, "save", save_then_die)
    assert main(args) == 130 and saves == [1]
    assert ckpt.only_checkpoint(tmp_path / "r")
    monkeypatch.setattr(ckpt, "save", real_save)
    assert main(args) == 0
    out = tmp_path / "r"
    assert not (out / ckpt.CHECKPOINT_DIR).exists()
    rec = json.loads((out / "prunelab.json").read_text())["recovery"]
    assert rec["resumed_from_step"] == 1 and rec["steps"] == 3 and rec["tokens_trained"] == 96
    assert "recovery distill" in capsys.readouterr().out
    assert main(args) == 2  # finished output, no --overwrite
