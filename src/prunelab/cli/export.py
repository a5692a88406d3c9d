"""`prunelab export`: parse -> ExportConfig (+ ModelConfig) -> api.export_job -> one summary line."""

from __future__ import annotations

import argparse
from typing import Any

from prunelab.cli._base import add_field
from prunelab.config.base import build
from prunelab.config.export import QUANT_TYPES, ExportConfig
from prunelab.config.models import ModelConfig
from prunelab.errors import PrunelabError

FIELDS = ("gguf", "quant", "overwrite", "modelfile", "threads")


def register(sub: Any) -> None:
    p = sub.add_parser("export", help="write a model as GGUF for llama.cpp / Ollama (+ a Modelfile)")
    p.add_argument("model_pos", nargs="?", default=None, metavar="MODEL",
                   help="HF folder, hub id or .gguf (default: embedded SmolLM2-135M-Instruct); or --model")  # fmt: skip
    add_field(p, ModelConfig, "model")
    add_field(p, ExportConfig, "gguf", metavar="OUT.gguf", required=True, default=None,
              help="the GGUF file to write (required, no default)")  # fmt: skip
    add_field(p, ExportConfig, "quant", choices=list(QUANT_TYPES),
              help="GGUF type: f16, bf16, q8_0 written directly; the others by llama.cpp's quantizer (needs the "
              "llamacpp extra)")  # fmt: skip
    add_field(p, ExportConfig, "overwrite")
    add_field(p, ExportConfig, "modelfile", "--no-modelfile", action="store_false",
              help="do not write the Ollama Modelfile beside the GGUF")  # fmt: skip
    add_field(p, ExportConfig, "threads")
    p.add_argument("--json", dest="json_path", default=None, help="write the machine-readable report here")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from prunelab import api

    if args.model_pos is not None and args.model is not None and args.model_pos != args.model:
        raise PrunelabError(f"two models given: '{args.model_pos}' and --model '{args.model}'; give one")
    cfg = build(ExportConfig, {name: getattr(args, name) for name in FIELDS}, "export settings")
    report = api.export_job(cfg, ModelConfig(model=args.model_pos or args.model), json_path=args.json_path)
    print_export(report)
    return 0


def print_export(r: dict[str, Any]) -> None:
    notes = "; ".join(r["notes"]) if r["notes"] else "none"
    modelfile = f", Modelfile {r['modelfile']}" if r.get("modelfile") else ""
    mb = r["file_bytes"] / 1e6
    print(f"wrote {r['path']}: {mb:.1f} MB, {r['quant']}, arch {r['arch']}{modelfile}; notes: {notes}")
