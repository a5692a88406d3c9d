"""`prunelab export`: a model (folder, hub id, GGUF, or the embedded default) to a GGUF for llama.cpp / Ollama.

Every check that can fail runs before the model is loaded (quant type and the extra it needs, the output and its
Modelfile, the model path, its weights, its architecture), so a typo costs nothing and nothing is half-written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from prunelab._util import write_json_atomic
from prunelab.config.export import ExportConfig
from prunelab.config.models import ModelConfig
from prunelab.errors import PrunelabError
from prunelab.export.gguf import check_family, check_quant, export_gguf, gguf_source
from prunelab.export.modelfile import write_modelfile
from prunelab.models import load_model
from prunelab.runtime.llamacpp import check_gguf_file

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model.safetensors.index.json")


def check_output_file(out: Path, overwrite: bool, modelfile: bool) -> None:
    """The GGUF (and its Modelfile) may be written: not a folder, not existing unless overwrite, a writable folder."""
    if out.suffix != ".gguf":
        raise PrunelabError(f"--gguf '{out}' must end in .gguf")
    if out.is_dir():
        raise PrunelabError(f"output '{out}' is a folder; give a file name ending in .gguf")
    if out.exists() and not overwrite:
        raise PrunelabError(f"output '{out}' already exists; pass --overwrite to replace it")
    target = out.with_name("Modelfile")
    if modelfile and target.exists() and not overwrite:
        raise PrunelabError(f"'{target}' already exists; pass --overwrite to replace it (or --no-modelfile)")
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise PrunelabError(f"cannot write '{out}': '{folder}' is not a writable folder")


def _model_type(config_json: Path) -> str:
    try:
        data = json.loads(config_json.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PrunelabError(f"cannot read '{config_json}': {e}") from e
    return str(data.get("model_type", "?")) if isinstance(data, dict) else "?"


def _check_safetensors(path: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as e:  # safetensors raises its own error types for a truncated or garbled file
        raise PrunelabError(f"'{path}' is not a readable safetensors file: {type(e).__name__}: {e}") from e


def check_model_source(spec: str | None) -> None:
    """A local model exists, has weights that open, and is an architecture the exporter writes (hub ids and the
    embedded default are checked by loading, their architecture after it)."""
    if spec in (None, "", "default"):
        return
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise PrunelabError(f"model '{spec}' is a file but not a .gguf; give a Hugging Face folder or a .gguf")
        check_gguf_file(path)
        import gguf

        try:
            gguf.GGUFReader(str(path))
        except Exception as e:  # gguf raises ValueError, struct errors, ... on a garbled file
            raise PrunelabError(f"cannot read GGUF '{path}': {type(e).__name__}: {e}") from e
        return
    if not path.is_dir():
        if spec.startswith((".", "/", "~")) or spec.endswith(".gguf"):
            raise PrunelabError(f"model path '{spec}' does not exist")
        return  # a hub id
    if not (path / "config.json").is_file():
        raise PrunelabError(f"model folder '{spec}' has no config.json")
    weights = [w for pattern in WEIGHT_PATTERNS for w in path.glob(pattern)]
    if not weights:
        raise PrunelabError(f"model folder '{spec}' has no weights (*.safetensors or pytorch_model*.bin)")
    for w in weights:
        if w.suffix == ".safetensors":
            _check_safetensors(w)
    check_family(_model_type(path / "config.json"))


def export_job(cfg: ExportConfig, source: ModelConfig | None = None, json_path: str | None = None) -> dict[str, Any]:
    """Check, load, write the GGUF (+ Modelfile); return what `export_gguf` reports, with the Modelfile's path."""
    source = source or ModelConfig()
    out = Path(cfg.gguf).expanduser()
    quant = check_quant(cfg.quant)
    check_output_file(out, cfg.overwrite, cfg.modelfile)
    check_model_source(source.model)
    lm = load_model(source.model, dtype="float32", device="cpu")
    report = export_gguf(
        lm.model,
        lm.tokenizer,
        out,
        quant,
        source_gguf=gguf_source(source.model, lm.source),
        overwrite=cfg.overwrite,
        threads=cfg.threads,
    )
    report["model"] = lm.source
    report["modelfile"] = str(write_modelfile(out, overwrite=cfg.overwrite)) if cfg.modelfile else None
    if json_path:
        write_json_atomic(json_path, report)
    return report
