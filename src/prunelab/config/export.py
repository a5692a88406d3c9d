"""What `prunelab export` writes (and what a sweep point's `quant` may name): one definition of the GGUF types.

Torch-free, so `prunelab export --help` lists the types without importing the exporter. `export/gguf.py` maps
these names to gguf's tensor types; f16 / bf16 / q8_0 are written directly, the others by llama.cpp's quantizer.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from prunelab.config.base import StrictModel
from prunelab.config.models import RUNTIMES, Runtime
from prunelab.errors import PrunelabError

DIRECT_QUANTS: tuple[str, ...] = ("f16", "bf16", "q8_0")
# Types made by llama.cpp's quantizer (names of its LLAMA_FTYPE_MOSTLY_* constants, lower case). The i-quants are
# left out: they need an importance matrix.
LLAMACPP_QUANTS: tuple[str, ...] = (
    "q4_0",
    "q4_1",
    "q5_0",
    "q5_1",
    "q2_k",
    "q3_k_s",
    "q3_k_m",
    "q3_k_l",
    "q4_k_s",
    "q4_k_m",
    "q5_k_s",
    "q5_k_m",
    "q6_k",
)
QUANT_TYPES: tuple[str, ...] = (*DIRECT_QUANTS, *LLAMACPP_QUANTS)


def normalize_quant(quant: str) -> str:
    """Lower-cased, known quant name, else a one-line error listing the known ones."""
    q = str(quant).lower().strip()
    if q not in QUANT_TYPES:
        raise PrunelabError(f"unknown quant type '{quant}'; known: {', '.join(QUANT_TYPES)}")
    return q


class ExportConfig(StrictModel):
    """`prunelab export MODEL --gguf OUT.gguf` (the model itself comes from `ModelConfig`)."""

    gguf: str = Field(description="the GGUF file to write")
    quant: str = Field("f16", description="GGUF tensor type")
    overwrite: bool = Field(False, description="replace an existing GGUF (and Modelfile)")
    modelfile: bool = Field(True, description="write an Ollama Modelfile beside the GGUF")
    threads: int | None = Field(None, ge=1, description="threads of llama.cpp's quantizer (default: all)")

    @field_validator("quant")
    @classmethod
    def _known(cls, v: str) -> str:
        return normalize_quant(v)


DEPLOY_HELP = {
    "quant": "GGUF type(s) to export each point to (a list varies it); absent = no export",
    "runtime": "where perplexity and speed are measured: torch, or llamacpp (needs quant); a list varies it",
}


class DeployConfig(StrictModel):
    """How a sweep point is deployed: exported to a GGUF of type `quant` (or not), measured in `runtime`. Part of
    the point's hashed config only when it differs from the default (torch, no export), so older ids stay."""

    quant: str | None = Field(None, description=DEPLOY_HELP["quant"])
    runtime: Runtime = Field("torch", description=DEPLOY_HELP["runtime"])

    @field_validator("quant")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        return None if v is None else normalize_quant(v)

    def model_post_init(self, context: Any, /) -> None:
        if self.runtime == "llamacpp" and self.quant is None:
            raise PrunelabError("runtime llamacpp runs a GGUF: give the point a quant (e.g. quant: f16)")

    @property
    def is_default(self) -> bool:
        return self.quant is None and self.runtime == "torch"


__all__ = ["DIRECT_QUANTS", "LLAMACPP_QUANTS", "QUANT_TYPES", "RUNTIMES", "DeployConfig", "ExportConfig"]
