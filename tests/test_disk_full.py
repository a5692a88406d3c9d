"""A full disk while saving: one `prunelab:` line, exit 2, no half-written output or temp file, the old output kept.

The disk is filled by a patched writer that writes part of its file and then fails as the real one does on a full
disk: `OSError(ENOSPC)` from Python writes, and safetensors' own `SafetensorError("... No space left on device (os
error 28)")` from its Rust writer (the text it really gives, checked on a 64 KiB tmpfs). Where the test runs as
root and may mount, one case also fills a real tiny tmpfs.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
import safetensors

from prunelab import _util
from prunelab.cli import main
from prunelab.errors import PrunelabError

FULL = "No space left on device"


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _half_then_full(kind: str):
    def write(tensors, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\0" * 1000)  # part of the file made it to disk
        if kind == "oserror":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))
        raise safetensors.SafetensorError(f"Error while serializing: I/O error: {FULL} (os error 28)")

    return write


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prunelab: error:") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("kind", ["oserror", "safetensors"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_prune_save_on_a_full_disk(tiny_folder, tmp_path, monkeypatch, capsys, kind, overwrite) -> None:
    import transformers.modeling_utils as mu

    out = tmp_path / "out"
    if overwrite:
        out.mkdir()
        (out / "keep.txt").write_text("the previous result")
    before = _snapshot(tmp_path)
    monkeypatch.setattr(mu, "safe_save_file", _half_then_full(kind))
    args = ["-q", "prune", "--model", str(tiny_folder), "--method", "magnitude", "--ppl", "--output", str(out)]
    code = main([*args, *(["--overwrite"] if overwrite else [])])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and FULL in line and f"'{out}'" in line  # names the output, not a temp path
    assert _snapshot(tmp_path) == before  # no temp folder, no half output, the old output byte for byte


@pytest.mark.parametrize("overwrite", [False, True])
def test_export_on_a_full_disk(tiny_folder, tmp_path, monkeypatch, capsys, overwrite) -> None:
    from prunelab.export import gguf

    out = tmp_path / "m.gguf"
    if overwrite:
        out.write_bytes(b"the previous GGUF")
    before = _snapshot(tmp_path)

    def full(path, *args, **kwargs):
        Path(path).write_bytes(b"GGUF" + b"\0" * 500)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(gguf, "_write_direct", full)
    args = ["-q", "export", str(tiny_folder), "--gguf", str(out), *(["--overwrite"] if overwrite else [])]
    code = main(args)
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and FULL in line and f"'{out}'" in line
    assert _snapshot(tmp_path) == before


def test_json_write_on_a_full_disk(tmp_path, monkeypatch) -> None:
    target = tmp_path / "r.json"
    target.write_text('{"old": true}\n')
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            self.f.write(text[:10])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(_util.os, "fdopen", lambda *a, **k: Full(real_fdopen(*a, **k)))
    with pytest.raises(_util.WriteError, match=FULL):
        _util.write_json_atomic(target, {"new": True})
    assert target.read_text() == '{"old": true}\n' and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_other_errors_are_not_disguised_as_a_full_disk(tmp_path) -> None:
    assert _util.write_error(OSError(errno.ENOENT, "No such file"), tmp_path) is None
    assert _util.write_error(ValueError("bad shape"), tmp_path) is None
    assert _util.write_error(RuntimeError("boom (os error 2)"), tmp_path) is None
    assert isinstance(_util.write_error(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path), PrunelabError)
    with pytest.raises(ValueError, match="not a disk problem"), _util.atomic_dir(tmp_path / "x"):
        raise ValueError("not a disk problem")
    assert list(tmp_path.iterdir()) == []


def _raised(make_outer, inner: BaseException, suppress: bool = False) -> BaseException:
    try:
        try:
            raise inner
        except BaseException:
            if suppress:
                raise make_outer() from None
            raise make_outer()  # noqa: B904 - an implicit chain (__context__), as torch's cleanup makes
    except BaseException as e:
        return e


def test_write_error_follows_the_chain_as_a_traceback_shows_it(tmp_path) -> None:
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    on_top = _raised(lambda: RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
                     full)  # fmt: skip  # what torch.save into a file object raises on a real full disk
    assert isinstance(_util.write_error(on_top, tmp_path), _util.WriteError)
    assert _util.write_error(on_top, tmp_path).reason == FULL
    assert _util.write_error(_raised(lambda: RuntimeError("x"), full, suppress=True), tmp_path) is None
    assert _util.write_error(_raised(KeyboardInterrupt, full), tmp_path) is None  # Ctrl-C stays Ctrl-C
    assert _util.write_error(_raised(lambda: RuntimeError("x"), ValueError("bug")), tmp_path) is None


def _checkpoint_dir_state(folder: Path) -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sorted(folder.iterdir())]


def test_torch_save_atomic_on_a_full_disk(tmp_path, monkeypatch) -> None:
    import torch

    from prunelab.training import checkpoint

    target = tmp_path / "ckpt" / "state.pt"
    checkpoint.torch_save_atomic(target, {"step": 1})  # the previous checkpoint
    before = _checkpoint_dir_state(target.parent)

    def full(obj, f, *args, **kwargs):
        if hasattr(f, "write"):
            f.write(b"PK" + b"\0" * 500)  # part of the file made it to disk
        else:
            Path(f).write_bytes(b"PK" + b"\0" * 500)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(_util.WriteError, match=FULL) as info:
        checkpoint.torch_save_atomic(target, {"step": 2})
    message = str(info.value)
    assert len(message.splitlines()) == 1 and f"'{target}'" in message and ".tmp" not in message
    assert _checkpoint_dir_state(target.parent) == before  # no temp file, the old checkpoint byte for byte
    monkeypatch.undo()
    assert torch.load(target, weights_only=True) == {"step": 1}
    assert _util._TEMP_PATHS == set()


def test_torch_save_atomic_other_errors_stay_errors(tmp_path, monkeypatch) -> None:
    from prunelab.training import checkpoint

    def broken(obj, f, *args, **kwargs):
        raise TypeError("cannot pickle this")

    monkeypatch.setattr(checkpoint.torch, "save", broken)
    with pytest.raises(TypeError, match="cannot pickle"):
        checkpoint.torch_save_atomic(tmp_path / "state.pt", {"step": 1})
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):
    mnt = tmp_path / "full"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_prune_to_a_real_full_tmpfs(tiny_folder, tiny_tmpfs, capsys) -> None:
    out = tiny_tmpfs / "out"
    args = ["-q", "prune", "--model", str(tiny_folder), "--method", "magnitude", "--ppl", "--output", str(out)]
    assert main(args) == 2
    line = _one_line(capsys.readouterr().err)
    assert FULL in line and f"'{out}'" in line
    assert list(tiny_tmpfs.iterdir()) == []


def test_torch_save_atomic_to_a_real_full_tmpfs(tiny_tmpfs) -> None:
    import torch

    from prunelab.training import checkpoint

    target = tiny_tmpfs / "state.pt"
    with pytest.raises(_util.WriteError, match=FULL):  # torch's own writer: given a path it says only RuntimeError
        checkpoint.torch_save_atomic(target, {"w": torch.zeros(100_000)})  # 400 kB into 64 KiB
    assert list(tiny_tmpfs.iterdir()) == []
