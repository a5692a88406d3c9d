"""SIGTERM to a running `prunelab recover` (and `prune --recover`) once its first checkpoint is on disk:
exit 143 with one `prunelab:` line that names the checkpoint it keeps; the same command rerun resumes from it
(`resumed_from_step`) and leaves a complete folder that plain transformers loads, with no checkpoint left behind.

The driver runs the real CLI; with PAUSE set it sleeps after the first checkpoint is written (the steps of a tiny
model take milliseconds), so the signal lands mid-run every time. The test polls the checkpoint file itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from prunelab.config.prune import PruneConfig
from prunelab.models import save_model
from prunelab.pruning.run import prune
from prunelab.training import checkpoint as ckpt
from tests.conftest import CORPUS, make_model, make_tokenizer

SRC = Path(__file__).resolve().parents[1] / "src"

_DRIVER = """
import os, sys, time

from prunelab import cli
from prunelab.training import checkpoint

real_save = checkpoint.save


def save_then_wait(folder, state):
    real_save(folder, state)
    if os.environ.get("PAUSE"):
        time.sleep(120)


checkpoint.save = save_then_wait
sys.exit(cli.main(sys.argv[1:]))
"""


def _run(argv: list[str], pause: bool, state: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PAUSE"}
    env.update(PYTHONPATH=str(SRC), **({"PAUSE": "1"} if pause else {}))
    proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip
    if state is not None:
        deadline = time.monotonic() + 240
        while not state.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                _, err = proc.communicate()
                raise AssertionError(f"no checkpoint appeared at {state}:\n{err[-3000:]}")
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=240)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("command", ["recover", "prune"])
def test_sigterm_after_a_checkpoint_then_rerun_resumes(tmp_path: Path, command: str) -> None:
    dense = make_model("llama")
    student = make_model("llama")
    options = {"target": "mlp", "importance": "magnitude"}
    prune(student, PruneConfig(method="structured", sparsity=0.25, options=options))
    tok = make_tokenizer()
    dense.save_pretrained(tmp_path / "dense")
    tok.save_pretrained(tmp_path / "dense")
    save_model(student, tok, tmp_path / "pruned", {"config": {"method": "structured"}}, overwrite=False)
    (tmp_path / "c.txt").write_text(CORPUS)
    (tmp_path / "driver.py").write_text(_DRIVER)
    out = tmp_path / "r"
    argv = [str(tmp_path / "driver.py"), "-q", "recover", str(tmp_path / "pruned"), "--teacher",
            str(tmp_path / "dense"), "--tokens", "128", "--seqlen", "16", "--batch-size", "2", "--data",
            str(tmp_path / "c.txt"), "--checkpoint-every", "1", "--out", str(out)]  # fmt: skip
    if command == "prune":  # the --recover step of prune: the same checkpoint home, the output folder
        argv = [str(tmp_path / "driver.py"), "-q", "prune", "--model", str(tmp_path / "dense"), "--method",
                "structured", "--sparsity", "0.25", "--target", "mlp", "--option", "importance=magnitude",
                "--seqlen", "16", "--recover", "distill", "--recover-tokens", "128", "--recover-seqlen", "16",
                "--recover-batch-size", "2", "--recover-data", str(tmp_path / "c.txt"),
                "--recover-checkpoint-every", "1", "--output", str(out)]  # fmt: skip

    state = out / ckpt.CHECKPOINT_DIR / ckpt.STATE
    stopped = _run(argv, pause=True, state=state)
    assert "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    lines = [line for line in stopped.stderr.splitlines() if line.startswith("prunelab:")]
    assert len(lines) == 1 and "interrupt" in lines[0], stopped.stderr[-3000:]
    # the last line tells the truth: the checkpoint stays on purpose, and rerunning resumes
    assert "kept the recovery checkpoint" in lines[0] and "rerun the same command" in lines[0], lines[0]
    assert "no partial output" not in lines[0], lines[0]
    assert ckpt.only_checkpoint(out) and state.exists()  # nothing but the checkpoint: no half-written model

    resumed = _run(argv, pause=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not (out / ckpt.CHECKPOINT_DIR).exists()
    rec = json.loads((out / "prunelab.json").read_text())["recovery"]
    assert rec["resumed_from_step"] == 1 and rec["steps"] == 4 and rec["tokens_trained"] == 128
    assert len(rec["losses"]) == 4
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.intermediate_size == student.config.intermediate_size
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".r.")) == []  # no temp folders
