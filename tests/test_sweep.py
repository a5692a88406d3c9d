"""Sweeps on a tiny random Llama: YAML validation with line numbers, stable point ids, the store, resume, crashes.

The crash tests run the sweep in a subprocess and SIGKILL it at a controlled moment through the test hook
(`PRUNELAB_SWEEP_TEST_CRASH=stage:index`): mid-point, inside the store transaction, and between points. A killed
run must leave only whole finished points, and a rerun must complete the sweep with no duplicate.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from prunelab import PruneConfig, evaluate, load_model, prune
from prunelab.cli import main
from prunelab.errors import PrunelabError
from prunelab.sweep import ResultStore, expand_grid, load_sweep_config, parse_sweep_yaml, run_sweep
from prunelab.sweep.store import CRASH_ENV
from tests.conftest import CORPUS, make_model, make_tokenizer

GRID = """
grid:
  - method: sparsegpt
    sparsities: [0.5]
  - method: magnitude
    sparsities: [0.3, 0.6]
  - method: wanda
    sparsities: [0.5]
    patterns: [unstructured, 2:4]
"""
NO_MEASURE = "measurement: {enabled: false}\n"
MEASURE = (
    "measurement: {prompt_len: 8, gen_len: 4, repeats: 1, warmup: 0, threads: 1, energy: estimate, batches: [1]}\n"
)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One thread: faster than two on a shared 2-core machine for models this small, and deterministic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny Llama with its tokenizer, and a small corpus (calibration and evaluation)."""
    root = tmp_path_factory.mktemp("sweep")
    make_model("llama").save_pretrained(root / "model")
    make_tokenizer().save_pretrained(root / "model")
    (root / "corpus.txt").write_text(CORPUS)
    return root


def write_config(root: Path, grid: str = GRID, measurement: str = NO_MEASURE, name: str = "sweep.yaml") -> Path:
    text = (
        f"name: tiny\nmodel: {root / 'model'}\n"
        f"calibration: {{source: {root / 'corpus.txt'}, samples: 4, seqlen: 32}}\n"
        f"evaluation: {{ppl: [{root / 'corpus.txt'}], seqlen: 32, max_windows: 4}}\n" + measurement + grid
    )
    path = root / name
    path.write_text(text)
    return path


def db_rows(folder: Path) -> list[tuple]:
    with sqlite3.connect(folder / "results.sqlite") as conn:
        return conn.execute("SELECT point_id, idx, label, metrics FROM points ORDER BY idx").fetchall()


# --- YAML validation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("grid:\n  - method: wanda\n    sparsities: [0.5]\n    sparsity: 0.3\n", "s.yaml:4: grid[0].sparsity: Extra"),
        ("evaluation:\n  ppl: [shakespeare]\n  max_window: 3\ngrid: []\n", "s.yaml:3: evaluation.max_window: Extra"),
        ("grid:\n  - method: wanda\n    sparsities: [0.5, 1.5]\n", "s.yaml:3: grid[0].sparsities: Value error"),
        ("calibration:\n  samples: 0\ngrid:\n  - method: wanda\n", "s.yaml:2: calibration.samples: Input should"),
        ("grid:\n  - method: wand\n    sparsities: [0.5]\n", "s.yaml:2: grid[0].method: unknown method 'wand'. Did"),
        ("grid:\n  - method: wanda\n    patterns: [2:5:1]\n", "s.yaml:3: grid[0].patterns[0]: malformed pattern"),
        ("grid:\n  - method: sparsegpt\n    sparsities: [0.5]\n    options: {damp: 1}\n", "s.yaml:2: grid[0]:"),
        ("grid:\n  - method: wanda\n    method: magnitude\n", "s.yaml:3: key 'method' repeats the one on line 2"),
        ("grid:\n  - method: wanda\n  sparsities: [0.5\n", "s.yaml:3: invalid YAML"),
        ("model: x\n", "s.yaml:1: grid: Field required"),
    ],
)
def test_yaml_errors_name_the_line(text: str, expected: str) -> None:
    with pytest.raises(PrunelabError) as e:
        expand_grid(parse_sweep_yaml(text, "s.yaml"))
    assert expected in str(e.value)
    assert "\n" not in str(e.value)


def test_unquoted_nm_pattern_is_not_a_base60_number() -> None:
    # Plain YAML 1.1 reads 2:4 as 124; the sweep loader must keep the pattern.
    cfg = parse_sweep_yaml("grid:\n  - method: wanda\n    patterns: [2:4, 4:8]\n")
    assert cfg.grid[0].patterns == ["2:4", "4:8"]
    points = expand_grid(cfg)
    assert [(p.label, p.pattern, p.sparsity) for p in points] == [
        ("dense", "dense", 0.0),
        ("wanda 2:4", "2:4", 0.5),
        ("wanda 4:8", "4:8", 0.5),
    ]


def test_grid_expansion_and_stable_point_ids() -> None:
    a = parse_sweep_yaml(
        "model: m\ngrid:\n  - method: wanda\n    sparsities: [0.3, 0.5]\n    patterns: [unstructured, 2:4]\n"
    )
    b = parse_sweep_yaml(
        "grid:\n  - patterns: [unstructured, 2:4]\n    sparsities: [0.3, 0.5]\n    method: wanda\nmodel: m\n"
    )
    pa, pb = expand_grid(a), expand_grid(b)
    assert [p.label for p in pa] == ["dense", "wanda 30%", "wanda 50%", "wanda 2:4"]
    assert [p.point_id for p in pa] == [p.point_id for p in pb]  # key order does not matter
    assert len({p.point_id for p in pa}) == 4
    assert pa[3].config["prune"]["pattern"] == "2:4" and pa[3].config["prune"]["sparsity"] is None
    c = parse_sweep_yaml("model: m\nevaluation: {max_windows: 3}\ngrid:\n  - method: wanda\n    sparsities: [0.3]\n")
    assert expand_grid(c)[1].point_id != pa[1].point_id  # evaluation settings are part of the resolved config
    with pytest.raises(PrunelabError, match="repeats point 'wanda 30%'"):
        expand_grid(
            parse_sweep_yaml("grid:\n  - {method: wanda, sparsities: [0.3]}\n  - {method: wanda, sparsities: [0.3]}\n")
        )


def test_structured_points_need_targets_and_get_a_fresh_model() -> None:
    cfg = parse_sweep_yaml(
        "grid:\n  - method: structured\n    sparsities: [0.2]\n    structured_targets: [mlp, heads]\n"
    )
    points = expand_grid(cfg)[1:]
    assert [(p.label, p.structured, p.config["prune"]["options"]["target"]) for p in points] == [
        ("structured mlp 20%", True, "mlp"),
        ("structured heads 20%", True, "heads"),
    ]
    with pytest.raises(PrunelabError, match=r"sweep.yaml:2: grid\[0\]: method 'structured' needs structured_targets"):
        expand_grid(parse_sweep_yaml("grid:\n  - method: structured\n    sparsities: [0.2]\n"))


# --- running, store contents, restore -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def measured_sweep(tiny_root: Path) -> Path:
    """dense, sparsegpt 50%, magnitude 30/60%, wanda 50% and 2:4, with size/latency/energy measured."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tiny_root / "measured"
    outcome = run_sweep(load_sweep_config(write_config(tiny_root, measurement=MEASURE, name="m.yaml")), out)
    torch.set_num_threads(before)
    assert outcome.ran == 6 and not outcome.failed
    return out


def test_store_holds_one_complete_row_per_point(measured_sweep: Path, tiny_root: Path) -> None:
    points = expand_grid(load_sweep_config(tiny_root / "m.yaml"))
    with ResultStore(measured_sweep, write=False) as store:
        records = store.records()
    assert [r.point_id for r in records] == [p.point_id for p in points]
    assert [r.label for r in records] == ["dense", "sparsegpt 50%", "magnitude 30%", "magnitude 60%", "wanda 50%",
                                          "wanda 2:4"]  # fmt: skip
    for r, p in zip(records, points, strict=True):
        assert r.config == json.loads(json.dumps(p.config))  # the full resolved config is stored
        m = r.metrics
        assert m["perplexity"] > 1 and m["params"] == records[0].metrics["params"]
        assert m["achieved_sparsity"] == pytest.approx(p.sparsity, abs=1e-3)
        assert m["decode_tokens_per_s"] > 0 and m["prefill_ms"] > 0 and m["energy_j_per_token"] > 0
        assert r.details["energy"]["is_estimate"] is True and r.details["energy"]["energy_source"]
        assert m["size_mb"] == pytest.approx(records[0].metrics["size_mb"])  # dense storage does not shrink
        assert {"perplexity", "measure"} <= set(r.timings) and r.seconds > 0
    dense, magnitude60 = records[0].metrics, records[3].metrics
    assert magnitude60["nonzero_params"] < dense["nonzero_params"]
    assert magnitude60["compact_size_mb"] < 0.8 * dense["compact_size_mb"]

    # results.csv mirrors the database, one row per point, labelled energy source.
    with open(measured_sweep / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["point_id"] for row in rows] == [r.point_id for r in records]
    assert [float(row["perplexity"]) for row in rows] == pytest.approx([r.metrics["perplexity"] for r in records])
    assert {row["energy_is_estimate"] for row in rows} == {"True"}


def test_every_point_starts_from_the_dense_weights(measured_sweep: Path, tiny_root: Path) -> None:
    """sparsegpt (which rewrites kept weights) runs before magnitude and wanda: their numbers must match fresh runs."""
    with ResultStore(measured_sweep, write=False) as store:
        by_label = {r.label: r.metrics for r in store.records()}
    corpus = str(tiny_root / "corpus.txt")
    for label, cfg in [
        ("dense", None),
        ("wanda 50%", PruneConfig(method="wanda", sparsity=0.5, calib=corpus, calib_samples=4, calib_seqlen=32)),
        ("magnitude 60%", PruneConfig(method="magnitude", sparsity=0.6)),
    ]:
        lm = load_model(str(tiny_root / "model"))
        if cfg is not None:
            prune(lm.model, cfg, tokenizer=lm.tokenizer)
        fresh = evaluate(lm.model, lm.tokenizer, [corpus], seqlen=32, max_windows=4)[corpus].perplexity
        assert by_label[label]["perplexity"] == pytest.approx(fresh, rel=1e-5), label


def test_resume_skips_finished_points_and_grid_may_grow(tiny_root: Path) -> None:
    out = tiny_root / "resume"
    small = "grid:\n  - method: magnitude\n    sparsities: [0.3]\n"
    first = run_sweep(load_sweep_config(write_config(tiny_root, small, name="r1.yaml")), out)
    assert (first.total, first.ran, first.already_done) == (2, 2, 0)
    again = run_sweep(load_sweep_config(tiny_root / "r1.yaml"), out)
    assert (again.ran, again.already_done) == (0, 2)
    grown = "grid:\n  - method: magnitude\n    sparsities: [0.3, 0.5]\n"
    more = run_sweep(load_sweep_config(write_config(tiny_root, grown, name="r2.yaml")), out)
    assert (more.total, more.ran, more.already_done) == (3, 1, 2)
    assert len(db_rows(out)) == 3
    # Different shared settings in the same folder are refused, not mixed.
    changed = write_config(tiny_root, grown, name="r3.yaml")
    changed.write_text(changed.read_text().replace("max_windows: 4", "max_windows: 3"))
    with pytest.raises(PrunelabError, match="different evaluation settings"):
        run_sweep(load_sweep_config(changed), out)


def test_a_failing_point_is_left_out_and_retried(tiny_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import prunelab.sweep.runner as runner

    real = runner.run_point

    def flaky(ctx, point, say):
        if point.label == "magnitude 30%":
            raise RuntimeError("injected failure")
        return real(ctx, point, say)

    monkeypatch.setattr(runner, "run_point", flaky)
    out = tiny_root / "flaky"
    cfg = write_config(tiny_root, "grid:\n  - method: magnitude\n    sparsities: [0.3, 0.5]\n", name="f.yaml")
    outcome = run_sweep(load_sweep_config(cfg), out)
    assert outcome.failed == [("magnitude 30%", "RuntimeError: injected failure")]
    assert [r[2] for r in db_rows(out)] == ["dense", "magnitude 50%"]
    monkeypatch.setattr(runner, "run_point", real)
    retry = run_sweep(load_sweep_config(cfg), out)
    assert (retry.ran, retry.failed) == (1, [])
    assert [r[2] for r in db_rows(out)] == ["dense", "magnitude 30%", "magnitude 50%"]


# --- crashes: SIGKILL at controlled moments -------------------------------------------------------------------------

CRASH_GRID = "grid:\n  - method: magnitude\n    sparsities: [0.3, 0.5, 0.7]\n"


def _sweep_subprocess(config: Path, out: Path, crash: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", CRASH_ENV: crash}
    cmd = [sys.executable, "-m", "prunelab.cli", "-q", "sweep", str(config), "--out", str(out)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def reference(tiny_root: Path) -> dict[str, float]:
    """Perplexity of every crash-grid point from one uninterrupted in-process run."""
    out = tiny_root / "reference"
    run_sweep(load_sweep_config(write_config(tiny_root, CRASH_GRID, name="crash.yaml")), out)
    return {label: json.loads(metrics)["perplexity"] for _, _, label, metrics in db_rows(out)}


@pytest.mark.parametrize(
    ("crash", "kept"),
    [
        ("point:2", ["dense", "magnitude 30%"]),  # killed after pruning point 2, before it was evaluated
        ("commit:2", ["dense", "magnitude 30%"]),  # killed inside the transaction that stores point 2
        ("between:1", ["dense", "magnitude 30%"]),  # killed after point 1 was committed and exported
    ],
)
def test_killed_sweep_keeps_whole_points_and_resumes(
    tiny_root: Path, reference: dict[str, float], crash: str, kept: list[str]
) -> None:
    out = tiny_root / f"crash-{crash.replace(':', '-')}"
    proc = _sweep_subprocess(tiny_root / "crash.yaml", out, crash)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    rows = db_rows(out)
    assert [r[2] for r in rows] == kept  # no lost finished point, no partial row
    for _, _, label, metrics in rows:
        assert json.loads(metrics)["perplexity"] == pytest.approx(reference[label], rel=1e-6)
    with open(out / "results.csv") as f:
        assert [row["label"] for row in csv.DictReader(f)] == kept  # the export matches what was committed

    resumed = run_sweep(load_sweep_config(tiny_root / "crash.yaml"), out)
    assert (resumed.ran, resumed.already_done, resumed.failed) == (2, 2, [])
    rows = db_rows(out)
    assert [r[2] for r in rows] == ["dense", "magnitude 30%", "magnitude 50%", "magnitude 70%"]
    assert len({r[0] for r in rows}) == 4  # no duplicate
    for _, _, label, metrics in rows:
        assert json.loads(metrics)["perplexity"] == pytest.approx(reference[label], rel=1e-6)


# --- command line ---------------------------------------------------------------------------------------------------


def test_cli_sweep_then_report(tiny_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tiny_root, "grid:\n  - method: magnitude\n    sparsities: [0.2, 0.9]\n", name="cli.yaml")
    out = tmp_path / "cli"
    assert main(["-q", "sweep", str(cfg), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 points run, 0 already done, 0 failed, of 3" in printed
    assert "Recommended:" in printed and (out / "report.html").is_file()
    assert main(["-q", "report", str(out), "--max-ppl-increase", "1000", "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["recommendation"]["label"] == "magnitude 90%"  # fewest non-zeros inside a huge budget
    assert report["cost"] == "nonzero_params"  # sizes were not measured: the next default cost

    bad = tmp_path / "bad.yaml"
    bad.write_text("grid:\n  - method: wanda\n    sparsitys: [0.5]\n")
    assert main(["sweep", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert f"{bad}:3: grid[0].sparsitys: Extra inputs are not permitted" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nowhere")]) == 2


# --- zero-shot accuracy through the sweep (prunelab.evaluation.zeroshot) ----------------------------------------------


def test_zeroshot_tasks_become_metrics_and_accuracy_budgets_work(tiny_root: Path, tmp_path: Path) -> None:
    pytest.importorskip("lm_eval")
    from prunelab.api import report_job
    from prunelab.evaluation.zeroshot import zeroshot

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    rows = [
        {"query": "To be, or not to", "choices": ["be", "sea", "arms"], "gold": 0},
        {"query": "the slings and", "choices": ["arrows", "troubles", "mind"], "gold": 0},
        {"query": "a sea of", "choices": ["fortune", "troubles", "question"], "gold": 1},
        {"query": "that is the", "choices": ["question", "nobler", "end"], "gold": 0},
    ]
    (tasks / "arc_easy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = write_config(tiny_root, "grid:\n  - method: magnitude\n    sparsities: [0.5]\n", name="zs.yaml")
    cfg.write_text(
        cfg.read_text().replace("max_windows: 4}", f"max_windows: 4, tasks: [arc_easy], task_data: {tasks}}}")
    )
    out = tmp_path / "zs"
    assert run_sweep(load_sweep_config(cfg), out).ran == 2
    with ResultStore(out, write=False) as store:
        dense, pruned = (r.metrics for r in store.records())
    lm = load_model(str(tiny_root / "model"))
    direct = zeroshot(lm.model, lm.tokenizer, ["arc_easy"], task_data=tasks)["arc_easy"].acc
    assert dense["acc@arc_easy"] == dense["zeroshot_mean"] == pytest.approx(direct)
    assert pruned["zeroshot_mean"] in (0.0, 0.25, 0.5, 0.75, 1.0)  # 4 examples
    # --min-accuracy 0 admits every point: the one with the fewest non-zeros wins.
    report = report_job(str(out), min_accuracy=0.0, write_html=False)
    assert report["recommendation"]["label"] == "magnitude 50%" and report["quality"] == "zeroshot_mean"
