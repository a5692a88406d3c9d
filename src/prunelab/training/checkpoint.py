"""Resumable recovery: one checkpoint file in `<out>/.recover-checkpoint/`, written atomically.

Why one file written to a temp name and renamed: a run killed at any moment leaves either the previous checkpoint
or the new one, never a torn mix of weights from one step and optimizer moments from another. The file holds what
the next step depends on: the trained tensors (all student weights, or only the LoRA adapters), the optimizer,
the RNG states and the step (the data position is a pure function of the step, see `recover.step_windows`).
A fingerprint of the settings guards against resuming a different command's run.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import torch

from prunelab._util import register_temp, unregister_temp, write_error
from prunelab.errors import PrunelabError

CHECKPOINT_DIR = ".recover-checkpoint"
STATE = "state.pt"


def fingerprint(settings: dict[str, Any], windows: torch.Tensor, model: torch.nn.Module) -> str:
    """A hash of what decides the result: settings, the training windows, the student's parameter shapes."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update(windows.contiguous().numpy().tobytes())
    h.update(str([(n, tuple(p.shape)) for n, p in model.named_parameters()]).encode())
    return h.hexdigest()[:16]


def only_checkpoint(out: str | os.PathLike[str] | None) -> bool:
    """True when `out` holds nothing but a recovery checkpoint: an interrupted run to resume, not an output."""
    if out is None or not Path(out).is_dir():
        return False
    return [p.name for p in Path(out).iterdir()] == [CHECKPOINT_DIR]


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(folder: Path, state: dict[str, Any]) -> None:
    """The checkpoint, atomically (`torch_save_atomic`)."""
    torch_save_atomic(folder / STATE, state)


def torch_save_atomic(path: Path, obj: Any) -> None:
    """torch.save to a temp file beside `path`, then rename over it (also the teacher cache's writer).

    torch.save writes through a Python file object, not a path: given a path, its C++ writer reports a full disk
    as a bare RuntimeError ("unexpected pos ..."), through a file object the OSError(ENOSPC) comes back as is, so a
    save that fails for lack of space gives the same one-line `WriteError` as every other writer (`write_error`).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        disk = write_error(e, path)
        if disk is not None:
            raise disk from None
        raise
    register_temp(Path(tmp))
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException as e:
        disk = write_error(e, path)
        if disk is not None:
            raise disk from None
        raise
    finally:
        Path(tmp).unlink(missing_ok=True)
        unregister_temp(Path(tmp))


def load(folder: Path, expected: str) -> dict[str, Any] | None:
    """The checkpoint in `folder`, or None; refuses one written by other settings."""
    path = folder / STATE
    if not path.is_file():
        return None
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a foreign or damaged file: say so rather than start over silently
        raise PrunelabError(f"cannot read recovery checkpoint '{path}': {type(e).__name__}; remove it") from e
    if state.get("fingerprint") != expected:
        raise PrunelabError(
            f"recovery checkpoint '{path}' was written by other settings (model, data or recovery options); "
            "rerun the same command to resume, or remove it to start over"
        )
    return state
