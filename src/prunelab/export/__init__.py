"""Deployable outputs: a pruned model as a GGUF file (llama.cpp, Ollama) and the Ollama Modelfile beside it.

`gguf` writes the file (architecture, tensors, quantization), `tokenizer` its tokenizer metadata, `modelfile` the
Ollama recipe. The runtime that loads and measures such a file is `prunelab.runtime.llamacpp`.
"""

from prunelab.export.gguf import QUANT_TYPES, export_gguf, gguf_source
from prunelab.export.modelfile import modelfile_text, write_modelfile

__all__ = ["QUANT_TYPES", "export_gguf", "gguf_source", "modelfile_text", "write_modelfile"]
