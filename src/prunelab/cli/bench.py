"""`prunelab bench`: parse -> BenchConfig (+ ModelConfig) -> api.bench_job -> print."""

from __future__ import annotations

import argparse
from typing import Any

from prunelab.cli._base import add_field, model_args, model_config, values
from prunelab.cli._runtime import print_runtime, runtime_args, runtime_config
from prunelab.config.base import build
from prunelab.config.bench import BenchConfig

# flag -> BenchConfig field, where the flag's name is not the field's
RENAMED = {"--prompt-len": "prompt_lens", "--batch": "batches"}
FIELDS = ["prompt_lens", "gen_len", "batches", "repeats", "warmup", "threads", "energy", "country", "region",
          "grid_intensity", "cpu_watts", "size"]  # fmt: skip

# lengths whose defaults shorten to a model with a shorter context (`api.bench.fit_bench_lengths`); given, refused
FITTED = ("prompt_lens", "gen_len")


def _fitted_help(name: str) -> str:
    info = BenchConfig.model_fields[name]
    default = info.get_default(call_default_factory=True)
    shown = " ".join(map(str, default)) if isinstance(default, list) else str(default)
    return f"{info.description} (default: {shown}, shortened to fit a model with a shorter context)"


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="measure latency, throughput, memory, size, energy and carbon of a model")
    model_args(p, runtime=True)
    for flag, name in [*RENAMED.items(), ("--gen-len", "gen_len")]:
        if name in FITTED:  # None when not given, so the config knows the default may be shortened
            add_field(p, BenchConfig, name, flag, default=None, help=_fitted_help(name))
        else:
            add_field(p, BenchConfig, name, flag)
    for name in ("repeats", "warmup", "threads", "energy"):
        add_field(p, BenchConfig, name)
    for name in ("country", "region", "grid_intensity", "cpu_watts"):
        add_field(p, BenchConfig, name)
    # --sparse-kernels [auto|off]: the CPU runtime's choice (RuntimeConfig); given explicitly as auto (or bare, as
    # before), it also runs 2:4 layers on sparse GPU kernels (BenchConfig.sparse_kernels, on a GPU only).
    runtime_args(
        p,
        kernels_default=None,
        nargs="?",
        const="auto",
        help="CPU: CSR for a compact folder's weight-sparse layers above break-even and measured kernels for "
        "activation sparsity (default auto); GPU: given as auto, 2:4 layers on sparse kernels (sm80+)",
    )
    add_field(p, BenchConfig, "size", "--no-size", action="store_false",
              help="skip writing checkpoints to measure size on disk")  # fmt: skip
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from prunelab import api

    gpu_24 = args.sparse_kernels == "auto"  # given explicitly: also 2:4 GPU kernels (a note says why not used)
    given = {k: v for k, v in values(args, FIELDS).items() if not (k in FITTED and v is None)}
    cfg = build(BenchConfig, {**given, "sparse_kernels": gpu_24}, "bench settings")
    report = api.bench_job(cfg, model_config(args), json_path=args.json_path, runtime=runtime_config(args))
    print_bench(report)
    print_runtime(report.get("runtime"))
    return 0


def print_bench(r: dict[str, Any]) -> None:
    lat, mem, size, energy, carbon, hw = (r[k] for k in ("latency", "memory", "size", "energy", "carbon", "hardware"))
    kind = hw.get("dtype") or hw.get("runtime", "?")
    threads = hw.get("torch_threads", hw.get("threads"))
    print(f"{r['model']} ({kind}, {hw['device']}, {threads} threads, {hw['cpu']})")
    for length, st in lat["prefill_ms"].items():
        cpu = lat["prefill_cpu_ms"][length]["median"]
        print(
            f"prefill {length:>5} tokens: {st['median']:9.1f} ms       "
            f"(IQR {st['iqr']:.1f}, n={st['n']}; CPU time {cpu:.1f} ms)"
        )
    st = lat["decode_tokens_per_s"]
    print(f"decode:              {st['median']:9.2f} tokens/s (IQR {st['iqr']:.2f})")
    for batch, st in lat["throughput_tokens_per_s"].items():
        print(f"throughput batch {batch:>3}: {st['median']:8.2f} tokens/s (IQR {st['iqr']:.2f})")
    phases = ", ".join(f"{k} {v['peak_rss_mb']:.0f}" for k, v in mem["phases"].items())
    print(f"peak RSS: {mem['peak_rss_mb']:.0f} MiB ({phases})")
    if "file_bytes" in size:
        types = ", ".join(f"{k} {v}" for k, v in size["tensor_types"].items())
        print(f"size: GGUF file {size['file_bytes'] / 1e6:.1f} MB, {size['params']:,} params, tensors {types}")
    if "dense_bytes" in size:
        line = f"size: dense {size['dense_bytes'] / 1e6:.1f} MB, compact {size['compact_bytes'] / 1e6:.1f} MB"
        line += f" ({size['compact_ratio']:.1%}), {size['nonzero_params']:,} of {size['params']:,} params non-zero"
        if "float16" in size:
            f16 = size["float16"]
            line += f"; float16: {f16['dense_bytes'] / 1e6:.1f} -> {f16['compact_bytes'] / 1e6:.1f} MB"
        print(line)
    if energy.get("joules") is not None:
        label = "ESTIMATE" if energy["is_estimate"] else "measured"
        print(
            f"energy [{energy['energy_source']}, {energy.get('method') or '?'}, {label}]: "
            f"{energy['joules']:.2f} J per run, "
            f"{energy['joules_per_token']:.3f} J/token, {energy['joules_per_1k_prefill_tokens']:.2f} J per 1k "
            f"prefill tokens (meter overhead {energy['overhead_fraction']:.2e} of metered time)"
        )
        print(
            f"carbon [{carbon.get('region') or carbon['country'] or 'user'} {carbon['grid_intensity']:g} gCO2eq/kWh, "
            f"{carbon.get('source') or '?'}; year {carbon.get('year') or 'unknown'}]: "
            f"{carbon['g_co2eq_per_1k_tokens']:.4f} g per 1k generated tokens, "
            f"{carbon['g_co2eq_per_million_requests'] / 1000:.2f} kg per million requests"
        )
    for note in r.get("notes", []):
        print(f"note: {note}")
