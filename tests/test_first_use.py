"""First use: outputs others can read (umask permissions, not mkstemp's 0600 / mkdtemp's 0700), a portable
`base_model` record, and the other small things a new user meets first."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from prunelab import _util
from prunelab.cli import main
from prunelab.export.gguf import gguf_source
from prunelab.models import DEFAULT_MODEL_NAME, LoadedModel, default_gguf_path


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_saved_model_gets_umask_permissions(tiny_folder, tmp_path, capsys, umask, file_mode, dir_mode) -> None:
    out = tmp_path / "out"
    previous = os.umask(umask)
    try:
        args = ["-q", "prune", "--model", str(tiny_folder), "--method", "magnitude", "--ppl", "--output", str(out)]
        assert main([*args, "--json", str(tmp_path / "r.json")]) == 0, capsys.readouterr().err
    finally:
        os.umask(previous)
    modes = _modes(out)
    assert "prunelab.json" in modes and "model.safetensors" in modes
    for name, mode in modes.items():
        want = dir_mode if (out / name).is_dir() else file_mode
        assert mode == want, f"{name}: {oct(mode)} != {oct(want)}"
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == file_mode
    meta = json.loads((out / "prunelab.json").read_text())
    assert meta["base_model"] == str(tiny_folder) and "base_model_path" not in meta  # a path: as the user gave it


def test_atomic_writes_honour_the_umask(tmp_path) -> None:
    previous = os.umask(0o002)
    try:
        _util.write_text_atomic(tmp_path / "a.txt", "x")
        with _util.atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("y")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o664
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o775


def test_base_model_record_is_portable(tmp_path) -> None:
    cache = "/home/someone/.cache/prunelab/SmolLM2-135M-Instruct-f32"
    default = LoadedModel(model=None, tokenizer=None, source=cache, spec=None)  # type: ignore[arg-type]
    assert default.base_model_record() == {"base_model": DEFAULT_MODEL_NAME, "base_model_path": cache}
    named = LoadedModel(model=None, tokenizer=None, source=cache, spec="default")  # type: ignore[arg-type]
    assert named.base_model_record()["base_model"] == DEFAULT_MODEL_NAME
    hub = LoadedModel(model=None, tokenizer=None, source="org/model", spec="org/model")  # type: ignore[arg-type]
    assert hub.base_model_record() == {"base_model": "org/model"}
    gguf = LoadedModel(model=None, tokenizer=None, source=cache, spec="models/m.gguf")  # type: ignore[arg-type]
    assert gguf.base_model_record() == {"base_model": "models/m.gguf", "base_model_path": cache}


def test_gguf_source_follows_the_portable_record(tmp_path) -> None:
    pruned = tmp_path / "pruned"
    pruned.mkdir()
    record = {"base_model": DEFAULT_MODEL_NAME, "base_model_path": str(tmp_path / "gone-cache")}
    (pruned / "prunelab.json").write_text(json.dumps(record))
    assert gguf_source(str(pruned)) == default_gguf_path()  # even where the cache path does not exist
    src = tmp_path / "m.gguf"
    src.write_bytes(b"GGUF")
    converted = tmp_path / "conv"
    converted.mkdir()
    (converted / "prunelab-source.json").write_text(json.dumps({"gguf": str(src)}))
    record = {"base_model": "conv-as-typed", "base_model_path": str(converted)}
    (pruned / "prunelab.json").write_text(json.dumps(record))
    assert gguf_source(str(pruned)) == src
