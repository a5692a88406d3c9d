"""Where a model comes from and where it runs (shared by prune, eval, bench and the sweep)."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field

from prunelab.config.base import StrictModel

Dtype = Literal["auto", "float32", "float16", "bfloat16"]
DTYPES: tuple[str, ...] = get_args(Dtype)
Runtime = Literal["torch", "llamacpp"]
RUNTIMES: tuple[str, ...] = get_args(Runtime)


class ModelConfig(StrictModel):
    model: str | None = Field(None, description="HF folder, hub id or .gguf (default: embedded SmolLM2-135M-Instruct)")
    dtype: Dtype = Field("auto", description="compute dtype; auto = float32 on CPU, the checkpoint's on a GPU")
    device: str = Field("cpu", description="cpu, cuda, cuda:1 ...")
    device_map: str | None = Field(None, description="auto: spread the model over the GPUs (accelerate)")
    runtime: Runtime = Field(
        "torch",
        description="torch (any model) or llamacpp (a .gguf file, through llama-cpp-python: measure what "
        "llama.cpp / Ollama users run)",
    )
