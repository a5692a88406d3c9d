"""What runs a model other than eager dense PyTorch.

- `sparse`, `thresholds`, `kernels`, `weights`: the sparse CPU runtime (activation thresholds, weight-sparse
  kernels), which makes zeros pay at decode time by reading fewer bytes.
- `llamacpp`: GGUF files through llama-cpp-python (imported on demand, an optional extra). A pruned model is only
  worth what it does in the runtime a user deploys, so it computes the same numbers (perplexity on the same token
  windows, the same timing protocol) as the torch path.

from prunelab.runtime import calibrate_thresholds, apply_activation_sparsity, load_sparse
table = calibrate_thresholds(model, calib_windows, allocation="greedy")
with apply_activation_sparsity(model, table, 0.5) as handle:   # removed on exit, model bit-identical
    model.generate(...)
"""

from prunelab.runtime.sparse import ActivationSparseLinear, RuntimeHandle, apply_activation_sparsity, remove
from prunelab.runtime.thresholds import (
    DEFAULT_LEVELS,
    TABLE_FILE,
    ThresholdTable,
    calibrate_thresholds,
    find_table,
    write_calibrated_folder,
)
from prunelab.runtime.weights import (
    COMPACT_FILE,
    SparseLoaded,
    WeightSparseLinear,
    apply_weight_sparsity,
    load_sparse,
    save_sparse,
)

__all__ = [
    "COMPACT_FILE",
    "DEFAULT_LEVELS",
    "TABLE_FILE",
    "ActivationSparseLinear",
    "RuntimeHandle",
    "SparseLoaded",
    "ThresholdTable",
    "WeightSparseLinear",
    "apply_activation_sparsity",
    "apply_weight_sparsity",
    "calibrate_thresholds",
    "find_table",
    "load_sparse",
    "remove",
    "save_sparse",
    "write_calibrated_folder",
]
