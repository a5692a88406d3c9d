"""Training-aware pruning: tracker arithmetic, threshold and bisection, the method's contract, callbacks, gradual
masks, and the reproduction pipeline on a micro configuration."""

from __future__ import annotations

import json
import math

import pytest
import torch

from prunelab import PruneConfig, PrunelabError, prune
from prunelab.models import prunable_layers, weight_2d
from prunelab.pruning.masks import count_to_prune, lowest
from prunelab.pruning.trajectory import (
    GradualPruning,
    GradualSchedule,
    TrajectoryCallback,
    TrajectoryTracker,
    find_prune_rate,
    threshold_mask,
)

W = {"sqrt": math.sqrt, "linear": float, "uniform": lambda i: 1.0}


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: a second thread only adds synchronisation (10x slower training on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _perturb(model: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)


def _history_run(model_factory, epochs: int, last_k: int | None, weighting: str):
    model = model_factory("llama")
    tracker = TrajectoryTracker(model, last_k=last_k, total=epochs, weighting=weighting)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(0)
    history: list[dict[str, torch.Tensor]] = []
    for _ in range(epochs):
        _perturb(model, gen)
        history.append({n: weight_2d(m).clone() for n, m in prunable_layers(model).items()})
        tracker.record()
    return model, tracker, history


@pytest.mark.parametrize("weighting", ["sqrt", "linear", "uniform"])
@pytest.mark.parametrize(("epochs", "last_k"), [(6, None), (6, 3), (6, 1), (4, 10)])
def test_tracker_matches_direct_computation(model_factory, weighting, epochs, last_k) -> None:
    _, tracker, history = _history_run(model_factory, epochs, last_k, weighting)
    window = history[-last_k:] if last_k else history  # the last K epochs, i = 1 for the oldest of them
    weights = [W[weighting](i) for i in range(1, len(window) + 1)]
    for name in history[0]:
        direct = sum(w * h[name] for w, h in zip(weights, window, strict=True)) / sum(weights)
        torch.testing.assert_close(tracker.average(name), direct, rtol=1e-5, atol=1e-6)
    assert tracker.recorded == len(window) and tracker.snapshots == epochs


@pytest.mark.parametrize(
    ("weighting", "last_k", "expected"),
    [
        ("sqrt", 2, (3 + math.sqrt(2) * 4) / (1 + math.sqrt(2))),  # epochs 3, 4 weighted sqrt(1), sqrt(2)
        ("linear", 2, (3 + 2 * 4) / 3),
        ("uniform", 2, 3.5),
        ("linear", None, (1 + 2 * 2 + 3 * 3 + 4 * 4) / 10),
        ("sqrt", 1, 4.0),
    ],
)
def test_tracker_hand_computed(model_factory, weighting, last_k, expected) -> None:
    """One weight taking the values 1, 2, 3, 4 over four epochs."""
    model = model_factory("llama")
    layer = prunable_layers(model)["model.layers.0.self_attn.q_proj"]
    tracker = TrajectoryTracker(model, last_k=last_k, total=4, weighting=weighting)
    for value in (1.0, 2.0, 3.0, 4.0):
        with torch.no_grad():
            layer.weight[0, 0] = value
        tracker.record()
    assert tracker.average("model.layers.0.self_attn.q_proj")[0, 0].item() == pytest.approx(expected, rel=1e-6)


def test_tracker_memory_is_o_parameters(model_factory) -> None:
    model = model_factory("llama")
    tracked = sum(weight_2d(m).numel() for m in prunable_layers(model).values())
    tracker = TrajectoryTracker(model, last_k=None)
    sizes = []
    for _ in range(20):
        tracker.record()
        sizes.append(tracker.nbytes())
    tensors = [v for v in vars(tracker).values() if isinstance(v, torch.Tensor)]
    tensors += [t for v in vars(tracker).values() if isinstance(v, dict) for t in v.values()]
    assert sum(t.numel() * t.element_size() for t in tensors) == 4 * tracked  # nothing else held
    assert sizes == [4 * tracked] * 20  # one float32 per weight, whatever the number of epochs


def test_tracker_window_needs_total_and_warns_past_it(model_factory, caplog) -> None:
    model = model_factory("llama")
    with pytest.raises(PrunelabError, match="total"):
        TrajectoryTracker(model, last_k=3).record()
    tracker = TrajectoryTracker(model, last_k=2, total=2)
    for _ in range(3):
        tracker.record()
    assert tracker.recorded == 3 and "past the planned total" in caplog.text


def test_tracker_save_load_roundtrip(model_factory, tmp_path) -> None:
    _, tracker, _ = _history_run(model_factory, 3, 2, "sqrt")
    tracker.save(tmp_path / "t.pt")
    loaded = TrajectoryTracker.load(tmp_path / "t.pt")
    for name in tracker.sums:
        assert torch.equal(loaded.average(name), tracker.average(name))
    (tmp_path / "bad.pt").write_text("not a tracker")
    with pytest.raises(PrunelabError, match="cannot read trajectory"):
        TrajectoryTracker.load(tmp_path / "bad.pt")


def test_threshold_mask_hand_made() -> None:
    score = torch.tensor([0.1, 0.2, 0.3, 0.4, 1.0])
    # mean 0.4, squared deviations sum 0.5: std = sqrt(0.5 / 4) = 0.35355 with Bessel's correction.
    # PruneRate 0.9 -> threshold 0.3182: 0.1, 0.2, 0.3 pruned (a population std, 0.3162, would keep 0.3).
    assert threshold_mask(score, 0.9).tolist() == [True, True, True, False, False]
    assert threshold_mask(score, 0.5).tolist() == [True, False, False, False, False]  # threshold 0.1768


@pytest.mark.parametrize("k", [0, 1, 37, 500, 999, 1000])
def test_bisection_hits_target_exactly(k) -> None:
    score = torch.rand(20, 50, generator=torch.Generator().manual_seed(k)).abs()
    mask, rate = find_prune_rate(score, k)
    assert int(mask.sum()) == k
    assert torch.equal(mask, lowest(score.reshape(-1), k).view_as(score))  # the k smallest
    if 0 < k < score.numel():
        assert torch.equal(threshold_mask(score, rate), mask)  # the returned PruneRate gives that very mask


def test_bisection_with_ties_is_exact_and_ordered() -> None:
    score = torch.tensor([0.5, 0.1, 0.5, 0.5, 0.9, 0.5])
    mask, _ = find_prune_rate(score, 3)
    assert mask.tolist() == [True, True, True, False, False, False]  # 0.1, then the first two tied 0.5s


def _tracked_model(model_factory):
    """A model whose final |W| ranks weights the opposite way from their uniform two-epoch average."""
    model = model_factory("llama")
    tracker = TrajectoryTracker(model, last_k=None, weighting="uniform")
    layers = prunable_layers(model)
    gen = torch.Generator().manual_seed(0)
    finals = {name: torch.rand(weight_2d(m).shape, generator=gen) for name, m in layers.items()}
    with torch.no_grad():
        for name, module in layers.items():
            weight_2d(module).copy_(3 * (1 - finals[name]))  # epoch 1
        tracker.record()
        for name, module in layers.items():
            weight_2d(module).copy_(finals[name])  # epoch 2: final |W| = r, average (3 - 2r) / 2 falls as r grows
        tracker.record()
    return model, finals


@pytest.mark.parametrize("keep", ["final", "average"])
def test_method_prunes_by_average_not_final(model_factory, keep) -> None:
    model, finals = _tracked_model(model_factory)
    result = prune(model, PruneConfig(method="trajectory", sparsity=0.5, options={"weights": keep}))
    for name, module in prunable_layers(model).items():
        w, r = weight_2d(module), finals[name]
        expected_mask = lowest((-r).reshape(-1), count_to_prune(r.numel(), 0.5)).view_as(r)  # largest final r
        assert torch.equal(w == 0, expected_mask), name
        kept = r if keep == "final" else (3 - 2 * r) / 2
        torch.testing.assert_close(w[~expected_mask], kept[~expected_mask])
    assert result.extra["trajectory"]["mode"] == "target"


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_contract_equivalent(model_factory, calib, pattern) -> None:
    """What tests/test_methods_contract.py checks for the other methods, with a recorded trajectory."""
    runs = []
    for _ in range(2):
        model, _, _ = _history_run(model_factory, 3, 2, "sqrt")
        shapes = {n: (p.shape, p.dtype) for n, p in model.named_parameters()}
        embed, head = model.get_input_embeddings().weight.clone(), model.get_output_embeddings().weight.clone()
        cfg = PruneConfig(method="trajectory", sparsity=0.6 if pattern == "unstructured" else None, pattern=pattern)
        result = prune(model, cfg, calib=calib)
        for name, module in prunable_layers(model).items():
            w = weight_2d(module)
            expected = count_to_prune(w.numel(), 0.6) if pattern == "unstructured" else w.numel() // 2
            assert int((w == 0).sum()) == expected, name
            assert result.layers[name].zeros == expected
        assert {n: (p.shape, p.dtype) for n, p in model.named_parameters()} == shapes
        assert torch.equal(model.get_input_embeddings().weight, embed)
        assert torch.equal(model.get_output_embeddings().weight, head)
        assert torch.isfinite(model(input_ids=calib[:1]).logits).all()
        runs.append(torch.cat([weight_2d(m).flatten() for m in prunable_layers(model).values()]))
    assert torch.equal(runs[0], runs[1])  # deterministic


def test_threshold_mode_reports_measured_sparsity(model_factory) -> None:
    model, _, _ = _history_run(model_factory, 3, None, "sqrt")
    result = prune(model, PruneConfig(method="trajectory", sparsity=0.5, options={"prune_rate": 1.0}))
    zeros = sum(int((weight_2d(m) == 0).sum()) for m in prunable_layers(model).values())
    total = sum(weight_2d(m).numel() for m in prunable_layers(model).values())
    assert result.achieved_sparsity == zeros / total == result.sparsity
    assert 0.3 < result.achieved_sparsity < 0.6  # about 0.45 for Gaussian weights: not the ignored 0.5
    assert any("ignored" in n for n in result.notes)
    assert set(result.extra["trajectory"]["prune_rates"].values()) == {1.0}


def test_filters_and_missing_trajectory(model_factory, tmp_path) -> None:
    model = model_factory("llama")
    with pytest.raises(PrunelabError, match="needs a recorded weight trajectory"):
        prune(model, PruneConfig(method="trajectory", sparsity=0.5))
    tracker = TrajectoryTracker(model, targets=["mlp"])
    tracker.record()
    with pytest.raises(PrunelabError, match="no trajectory for"):
        prune(model, PruneConfig(method="trajectory", sparsity=0.5))
    prune(model, PruneConfig(method="trajectory", sparsity=0.5, targets=["mlp"], ignore=["re:down_proj$"]))
    for name, module in prunable_layers(model).items():
        zeros = int((weight_2d(module) == 0).sum())
        assert (zeros > 0) == (".mlp." in name and not name.endswith("down_proj")), name


def test_gradual_schedule_is_cubic() -> None:
    s = GradualSchedule(final_sparsity=0.5, start=2, end=8, every=2)
    assert [s.sparsity_at(t) for t in (0, 2, 5, 8, 20)] == [0.0, 0.0, 0.5 - 0.5 * 0.5**3, 0.5, 0.5]
    assert [t for t in range(12) if s.due(t)] == [2, 4, 6, 8, 10]


def test_gradual_keeps_masked_weights_at_zero(model_factory, calib) -> None:
    model = model_factory("llama").train()
    tracker = TrajectoryTracker(model, last_k=None)
    gradual = GradualPruning(model, GradualSchedule(final_sparsity=0.5, start=1, end=6, every=1), tracker)
    callback = TrajectoryCallback(tracker, gradual, every_steps=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    previous: dict[str, torch.Tensor] = {}
    for step in range(1, 9):
        model(input_ids=calib, labels=calib).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        callback.on_optimizer_step()
        for name, mask in gradual.masks.items():
            w = weight_2d(gradual.layers[name])
            assert (w[mask] == 0).all(), (step, name)
            assert int(mask.sum()) == count_to_prune(w.numel(), gradual.schedule.sparsity_at(step))
            if name in previous:
                assert (mask | ~previous[name]).all()  # pruned weights stay pruned
            previous[name] = mask.clone()
    assert gradual.sparsity == 0.5 and tracker.recorded == 4
    # Control: without the re-application one optimiser step moves masked weights off zero (Adam's momentum).
    model(input_ids=calib, labels=calib).loss.backward()
    optimizer.step()
    assert any((weight_2d(gradual.layers[n])[m] != 0).any() for n, m in gradual.masks.items())


def test_gradual_hook_on_optimizer(model_factory, calib) -> None:
    model = model_factory("llama").train()
    gradual = GradualPruning(model, GradualSchedule(final_sparsity=0.3, start=1, cubic=False))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    handle = gradual.attach(optimizer)
    for _ in range(3):
        model(input_ids=calib, labels=calib).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    handle.remove()
    for name, mask in gradual.masks.items():
        w = weight_2d(gradual.layers[name])
        assert (w[mask] == 0).all() and int(mask.sum()) == count_to_prune(w.numel(), 0.3)


def test_callback_with_tiny_trainer(model_factory, tmp_path) -> None:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from prunelab.pruning.trajectory_hf import TrajectoryTrainerCallback

    model = model_factory("llama").train()
    tracker = TrajectoryTracker(model, last_k=2, weighting="linear")  # total comes from the Trainer
    epoch_weights: list[dict[str, torch.Tensor]] = []

    class Spy(TrainerCallback):
        def on_epoch_end(self, args, state, control, **kwargs):
            epoch_weights.append({n: weight_2d(m).clone() for n, m in prunable_layers(model).items()})

    gen = torch.Generator().manual_seed(0)
    rows = [{"input_ids": (ids := torch.randint(0, 320, (16,), generator=gen)), "labels": ids} for _ in range(4)]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        num_train_epochs=3,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    callbacks = [TrajectoryTrainerCallback(TrajectoryCallback(tracker)), Spy()]
    Trainer(model=model, args=args, train_dataset=rows, callbacks=callbacks).train()
    assert tracker.total == 3 and tracker.snapshots == 3 and tracker.recorded == 2
    for name in tracker.sums:
        direct = (1 * epoch_weights[1][name] + 2 * epoch_weights[2][name]) / 3
        torch.testing.assert_close(tracker.average(name), direct)
    assert not torch.equal(epoch_weights[1][name], epoch_weights[2][name])  # it did train


def test_cli_prune_with_saved_tracker(tiny_folder, tmp_path, capsys, no_network) -> None:
    from transformers import AutoModelForCausalLM

    from prunelab.cli import main

    code = main(["-q", "prune", "--model", str(tiny_folder), "--method", "trajectory", "--ppl"])
    assert code == 2 and "needs a recorded weight trajectory" in capsys.readouterr().err
    model = AutoModelForCausalLM.from_pretrained(tiny_folder)
    tracker = TrajectoryTracker(model, last_k=2, total=2)
    tracker.record()
    tracker.record()
    tracker.save(tmp_path / "traj.pt")
    args = ["-q", "prune", "--model", str(tiny_folder), "--method", "trajectory", "--sparsity", "0.4", "--ppl"]
    code = main([*args, "--option", f"tracker={tmp_path / 'traj.pt'}", "--json", str(tmp_path / "r.json")])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["method"] == "trajectory" and report["achieved_sparsity"] == pytest.approx(0.4, abs=1e-3)


def test_train_aware_micro_run(tmp_path, capsys) -> None:
    from prunelab.cli import main
    from prunelab.experiments import train_aware

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"Line {i}: to be, or not to be, that is the question.\n" for i in range(300)))
    args = ["-q", "train-aware", "--preset", "tiny", "--corpus", str(corpus), "--epochs", "3", "--steps-per-epoch"]
    args += ["2", "--batch-size", "4", "--seqlen", "16", "--last-k", "2", "--eval-windows", "4"]
    code = main([*args, "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert code == 0 and "trajectory" in out
    report = json.loads((tmp_path / "r.json").read_text())
    labels = list(train_aware.COMPARED)
    assert [(r["compression"], r["method"]) for r in report["levels"]] == [
        (c, m) for c in train_aware.LEVELS for m in labels
    ]
    for row in report["levels"]:
        if row["compression"] > 0:  # every layer within one weight of the level, so the total too
            assert row["achieved_sparsity"] == pytest.approx(row["compression"], abs=1e-3)
            assert row["result"]["layer_sparsity_max"] - row["result"]["layer_sparsity_min"] < 0.01
        assert math.isclose(row["perplexity"], math.exp(row["val_loss"]), rel_tol=1e-9)
    assert report["tracker"] == {
        "last_k": 2,
        "weighting": "sqrt",
        "snapshots": 3,
        "averaged": 2,
        "bytes": 4 * report["model"]["prunable_params"],
    }
    assert [r["prune_rate"] for r in report["threshold_sweep"]] == list(train_aware.PRUNE_RATES)
    sparsities = [r["achieved_sparsity"] for r in report["threshold_sweep"]]
    assert sparsities == sorted(sparsities) and sparsities[0] > 0
    assert main(["-q", "train-aware", "--preset", "huge"]) == 2
    assert "unknown preset 'huge'" in capsys.readouterr().err


def test_char_tokenizer() -> None:
    from prunelab.experiments.train_aware import CharTokenizer

    tok = CharTokenizer.fit("abca")
    assert tok.vocab_size == 4
    assert tok.encode("cab?é").tolist() == [3, 1, 2, 0, 0]


def _fake_report() -> dict:
    from prunelab.experiments.train_aware import COMPARED

    levels = [{"compression": c, "method": m, "val_loss": 2 + c} for c in (0.0, 0.5) for m in COMPARED]
    sweep = [{"achieved_sparsity": 0.4, "val_loss": 2.4}]
    return {"preset": "tiny", "model": {"params": 1000}, "levels": levels, "threshold_sweep": sweep}


def test_plot_is_skipped_without_matplotlib(tmp_path, monkeypatch, caplog) -> None:
    import sys

    from prunelab.experiments.train_aware import plot

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    assert plot(_fake_report(), str(tmp_path / "p.png")) is None
    assert "matplotlib is not installed" in caplog.text and not (tmp_path / "p.png").exists()


def test_plot_written(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from prunelab.experiments.train_aware import plot

    assert plot(_fake_report(), str(tmp_path / "p.png")) == str(tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
