"""Runtimes other than PyTorch that prunelab measures a model in: `llamacpp` (GGUF files through llama-cpp-python).

A pruned model is only worth what it does in the runtime a user deploys; these modules load the exported file in
that runtime and compute the same numbers (perplexity on the same token windows, the same timing protocol) so that
torch and runtime results sit side by side.
"""
