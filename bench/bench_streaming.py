"""Streaming pruning of a checkpoint bigger than the memory it is allowed: peak RSS against the model's size.

Each method runs `prunelab prune --streaming` in its own process under an RSS cap smaller than the model as
float32 (what in-memory pruning on a CPU loads). A watchdog thread polls the child's resident set every 20 ms and
kills it above the cap; optionally `prlimit --as` adds a kernel-enforced address-space limit. The peak reported
is the kernel's own maximum RSS of the child (`wait4` rusage), not a sample. A pruned shard is then spot-checked
against the source (sparsity of each layer, kept weights unchanged for magnitude).

    python bench/make_synthetic_llama.py /tmp/synth-llama-3b
    python bench/bench_streaming.py /tmp/synth-llama-3b --cap-gb 5 --out bench/out/streaming
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from safetensors import safe_open

from prunelab._util import write_json_atomic


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def run_capped(cmd: list[str], cap_bytes: int) -> dict:
    """Run `cmd`; kill it if its RSS passes `cap_bytes`. Returns exit code, wall time, kernel peak RSS."""
    print("$", " ".join(cmd), flush=True)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, start_new_session=True)
    killed = threading.Event()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            kib = rss_kib(proc.pid)
            if kib is not None and kib * 1024 > cap_bytes:
                killed.set()
                os.killpg(proc.pid, signal.SIGKILL)
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    watcher.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "returncode": proc.returncode,
        "killed_by_watchdog": killed.is_set(),
        "wall_seconds": time.perf_counter() - started,
        "peak_rss_bytes": usage.ru_maxrss * 1024,  # Linux: KiB
        "user_seconds": usage.ru_utime,
        "system_seconds": usage.ru_stime,
    }


def spot_check(source: Path, output: Path, method: str, sparsity: float) -> dict:
    """Block 0 and the last block of the output against the source: per-layer sparsity, kept values unchanged."""
    src_map = json.loads((source / "model.safetensors.index.json").read_text())["weight_map"]
    out_map = json.loads((output / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(src_map) == set(out_map), "output does not hold the same tensors as the source"
    layers = sorted({int(k.split(".")[2]) for k in src_map if k.startswith("model.layers.")})
    checked = {}
    for key in sorted(out_map):
        parts = key.split(".")
        if not key.endswith("proj.weight") or int(parts[2]) not in (layers[0], layers[-1]):
            continue
        with safe_open(str(source / src_map[key]), "pt") as f:
            before = f.get_tensor(key)
        with safe_open(str(output / out_map[key]), "pt") as f:
            after = f.get_tensor(key)
        assert after.dtype == before.dtype
        zero = after == 0
        achieved = float(zero.float().mean())
        assert abs(achieved - sparsity) < 0.01, (key, achieved)
        assert torch.equal(after[~zero], before[~zero]), key  # Wanda and magnitude only zero weights
        checked[key] = achieved
    return {"tensors_checked": len(checked), "sparsity_min": min(checked.values()), "max": max(checked.values())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="a folder written by make_synthetic_llama.py")
    p.add_argument("--methods", nargs="+", default=["magnitude", "wanda"])
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--cap-gb", type=float, default=5.0, help="RSS cap in GiB (default 5)")
    p.add_argument("--as-gb", type=float, default=None, help="also `prlimit --as` this many GiB of address space")
    p.add_argument("--calib", default="shakespeare")
    p.add_argument("--calib-samples", type=int, default=4)
    p.add_argument("--calib-seqlen", type=int, default=128)
    p.add_argument("--work", type=Path, default=Path("/tmp/prunelab-stream-bench"), help="pruned outputs (deleted)")
    p.add_argument("--out", type=Path, default=Path("bench/out/streaming"), help="results JSON folder")
    args = p.parse_args()

    index = json.loads((args.model / "model.safetensors.index.json").read_text())
    config = json.loads((args.model / "config.json").read_text())
    disk = sum(f.stat().st_size for f in args.model.glob("*.safetensors"))
    with safe_open(str(next(args.model.glob("*.safetensors"))), "pt") as f:
        stored_itemsize = f.get_tensor(next(iter(f.keys()))).element_size()
    params = index["metadata"]["total_size"] // stored_itemsize
    cap = int(args.cap_gb * 2**30)
    model_info = {
        "path": str(args.model),
        "params": params,
        "layers": config["num_hidden_layers"],
        "hidden": config["hidden_size"],
        "disk_bytes": disk,
        "float32_bytes": params * 4,
        "cap_bytes": cap,
    }
    print(
        f"model: {params / 1e9:.2f} B params, {disk / 2**30:.2f} GiB on disk, {params * 4 / 2**30:.2f} GiB as "
        f"float32; RSS cap {args.cap_gb:.2f} GiB",
        flush=True,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    for method in args.methods:
        output = args.work / f"{method}"
        shutil.rmtree(output, ignore_errors=True)
        report_path = args.out / f"{method}.json"
        cmd = ["nice", "-n", "10"]
        if args.as_gb:
            cmd += ["prlimit", f"--as={int(args.as_gb * 2**30)}"]
        cmd += [sys.executable, "-m", "prunelab.cli", "-q", "prune", "--streaming", "--model", str(args.model)]
        cmd += ["--method", method, "--sparsity", str(args.sparsity), "--output", str(output)]
        cmd += ["--json", str(report_path)]
        if method != "magnitude":
            cmd += ["--calib", args.calib, "--calib-samples", str(args.calib_samples)]
            cmd += ["--calib-seqlen", str(args.calib_seqlen)]
        run = run_capped(cmd, cap)
        row = {"method": method, **run}
        if run["returncode"] == 0:
            report = json.loads(report_path.read_text())
            row.update(
                achieved_sparsity=report["achieved_sparsity"],
                prune_seconds=report["prune_seconds"],
                reported_peak_rss_mb=report["peak_rss_mb"],
                peak_rss_mb_before_prune=report["peak_rss_mb_before_prune"],
                streaming_detail=report["streaming_detail"],
                calibration=report["calibration"],
                spot_check=spot_check(args.model, output, method, args.sparsity),
            )
        results.append(row)
        shutil.rmtree(output, ignore_errors=True)
        status = "killed by the RSS watchdog" if run["killed_by_watchdog"] else f"exit {run['returncode']}"
        print(
            f"{method}: {status}; wall {run['wall_seconds']:.0f} s (user {run['user_seconds']:.0f} s), "
            f"peak RSS {run['peak_rss_bytes'] / 2**30:.2f} GiB = {run['peak_rss_bytes'] / disk:.2f} x disk size, "
            f"{run['peak_rss_bytes'] / (params * 4):.2f} x float32 size",
            flush=True,
        )
    summary = {"model": model_info, "runs": results, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json_atomic(args.out / "summary.json", summary)
    print(f"wrote {args.out / 'summary.json'}")
    if any(r["returncode"] != 0 for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
