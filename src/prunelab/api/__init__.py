"""The Python API: the only place that orchestrates loading, calibration, pruning, evaluation and saving.

    from prunelab import load_model, prune, PruneConfig, evaluate
    lm = load_model()                                   # embedded SmolLM2-135M-Instruct
    result = prune(lm.model, PruneConfig(method="wanda", sparsity=0.5), tokenizer=lm.tokenizer)
    print(evaluate(lm.model, lm.tokenizer, ["shakespeare"])["shakespeare"].perplexity)

Each CLI subcommand is one call of a `*_job` here, with typed configs (`prunelab.config`). `prune` itself is the
one prune path (`prunelab.pruning.run`), shared with the sweep, streaming and the training-aware reproduction.
"""

from prunelab.api.bench import bench, bench_job
from prunelab.api.evaluate import eval_job, evaluate
from prunelab.api.export import export_job
from prunelab.api.prune import prune_job, prune_streaming_job
from prunelab.api.recover import recover_job
from prunelab.api.runtime import calibrate_activations_job, generate_job, load_for_run
from prunelab.api.sweep import plan_sweep, report_job, sweep_job
from prunelab.api.train_aware import train_aware_job
from prunelab.models import check_seqlen, load_model
from prunelab.pruning.run import prune, sparsity_report

__all__ = [
    "bench",
    "bench_job",
    "calibrate_activations_job",
    "check_seqlen",
    "eval_job",
    "evaluate",
    "export_job",
    "generate_job",
    "load_for_run",
    "load_model",
    "plan_sweep",
    "prune",
    "prune_job",
    "prune_streaming_job",
    "recover_job",
    "report_job",
    "sparsity_report",
    "sweep_job",
    "train_aware_job",
]
