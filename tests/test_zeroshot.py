"""Zero-shot accuracy through lm-evaluation-harness on small local task files, checked against hand computation.

Every expected number is computed here from the tiny model's own log-likelihoods with plain torch, following the
harness's definitions (continuation = one space + choice; acc_norm divides by the choice's characters; LAMBADA
acc = greedy match, perplexity = exp(-mean log-likelihood)). The gold labels are chosen from those hand predictions
so that the expected accuracies are neither 0 nor 1 and acc differs from acc_norm: a wrong prompt, delimiter,
normalisation or gold index gives a different answer.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from prunelab import api, cli
from prunelab.config import EvalConfig, ModelConfig
from prunelab.errors import PrunelabError
from prunelab.evaluation import zeroshot as zs

from .conftest import make_model

needs_lm_eval = pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None,
    reason="lm-evaluation-harness not installed (pip install -e '.[eval]')",
)

MC_ROWS = [
    ("Question: which is nobler in the mind?", ["to suffer", "the slings and arrows of outrageous fortune", "arms"]),
    ("Question: what do we take against a sea of troubles?", ["arms", "nothing at all, or so it seems", "the mind"]),
    ("Question: that is the", ["question", "sea", "slings and arrows"]),
    ("Question: by opposing, end", ["them", "the fortune of the sea", "troubles"]),
    ("Question: to be, or", ["not to be", "to suffer", "whether"]),
]
WINO_ROWS = [
    (["The sea was bigger than the mind so the sea", "The sea was bigger than the mind so the mind"], "was vast."),
    (["Arrows hit fortune but fortune", "Arrows hit fortune but arrows"], "was outrageous."),
    (["To be or not, the question", "To be or not, the answer"], "is nobler."),
    (["The slings missed the arrows because the slings", "The slings missed the arrows because the arrows"], "flew."),
]
LAMBADA_ROWS = [
    ("To be, or not to be, that is the", "question"),
    ("whether 'tis nobler in the mind to suffer the slings and", "arrows"),
    ("or to take arms against a sea of", "troubles"),
    ("and by opposing end", "them"),
]
RTE_ROWS = [
    ("The sea of troubles is vast.", "The sea is vast."),
    ("Fortune is outrageous.", "Fortune is kind."),
    ("To be or not to be is the question.", "There is a question."),
    ("The mind suffers slings and arrows.", "Nothing hurts the mind."),
]


@torch.no_grad()
def loglik(model, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """Sum of the continuation's token log-probabilities and whether greedy decoding reproduces it.

    Tokenized as the harness does for decoder-only models: the whole string, split at the context's token count.
    """
    whole = tokenizer(context + continuation).input_ids
    n_ctx = len(tokenizer(context).input_ids)
    logits = model(torch.tensor([whole])).logits[0].float()
    logp = torch.log_softmax(logits[n_ctx - 1 : -1], dim=-1)
    target = torch.tensor(whole[n_ctx:])
    return logp.gather(1, target[:, None]).sum().item(), bool((logp.argmax(-1) == target).all())


def golds_from(preds: list[int], n_choices: list[int], right: int) -> list[int]:
    """Gold labels that make the first `right` hand predictions correct and the rest wrong."""
    return [p if i < right else (p + 1) % k for i, (p, k) in enumerate(zip(preds, n_choices, strict=True))]


def argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def model():
    return make_model("llama")


@pytest.fixture(scope="module")
def tasks(tmp_path_factory, model, tokenizer) -> tuple[Path, dict[str, dict[str, float]]]:
    """One file per task shape, with golds set from the model's own predictions, and the hand-computed scores."""
    folder = tmp_path_factory.mktemp("zeroshot")
    expected: dict[str, dict[str, float]] = {}

    # Multiple choice (ARC/PIQA/BoolQ/OBQA/HellaSwag layout).
    lls = [[loglik(model, tokenizer, q, " " + c)[0] for c in choices] for q, choices in MC_ROWS]
    preds = [argmax(r) for r in lls]
    golds = golds_from(preds, [len(c) for _, c in MC_ROWS], right=3)
    norm_preds = [
        argmax([ll / len(c) for ll, c in zip(r, row[1], strict=True)]) for r, row in zip(lls, MC_ROWS, strict=True)
    ]
    write_jsonl(
        folder / "arc_easy.jsonl",
        [{"query": q, "choices": c, "gold": g} for (q, c), g in zip(MC_ROWS, golds, strict=True)],
    )
    expected["arc_easy"] = {
        "acc": 3 / 5,
        "acc_norm": sum(p == g for p, g in zip(norm_preds, golds, strict=True)) / 5,
    }

    # WinoGrande: the same continuation after each candidate prefix.
    lls = [[loglik(model, tokenizer, ctx, " " + cont)[0] for ctx in options] for options, cont in WINO_ROWS]
    golds = golds_from([argmax(r) for r in lls], [2] * len(WINO_ROWS), right=3)
    write_jsonl(
        folder / "winogrande.jsonl",
        [{"context_options": o, "continuation": c, "gold": g} for (o, c), g in zip(WINO_ROWS, golds, strict=True)],
    )
    expected["winogrande"] = {"acc": 3 / 4}

    # LAMBADA (file name as in ../shared/data/zeroshot, task name `lambada`).
    scored = [loglik(model, tokenizer, ctx, " " + word) for ctx, word in LAMBADA_ROWS]
    write_jsonl(folder / "lambada_openai.jsonl", [{"context": c, "continuation": w} for c, w in LAMBADA_ROWS])
    expected["lambada"] = {
        "acc": sum(greedy for _, greedy in scored) / len(scored),
        "perplexity": math.exp(-sum(ll for ll, _ in scored) / len(scored)),
    }

    # RTE: the harness template; label 0 = entailment = " True".
    prompts = [f"{s1}\nQuestion: {s2} True or False?\nAnswer:" for s1, s2 in RTE_ROWS]
    lls = [[loglik(model, tokenizer, p, c)[0] for c in (" True", " False")] for p in prompts]
    golds = golds_from([argmax(r) for r in lls], [2] * len(RTE_ROWS), right=1)
    write_jsonl(
        folder / "rte.jsonl",
        [
            {"sentence1": a, "sentence2": b, "label": g, "idx": i}
            for i, ((a, b), g) in enumerate(zip(RTE_ROWS, golds, strict=True))
        ],
    )
    expected["rte"] = {"acc": 1 / 4}
    return folder, expected


@needs_lm_eval
def test_accuracies_match_hand_computation(model, tokenizer, tasks, no_network) -> None:
    folder, expected = tasks
    assert expected["arc_easy"]["acc"] != expected["arc_easy"]["acc_norm"]  # the rows discriminate the two rules
    names = ["arc_easy", "winogrande", "lambada", "rte"]
    results = zs.zeroshot(model, tokenizer, names, task_data=folder, batch_size=3)
    assert list(results) == names
    for name, want in expected.items():
        got = results[name]
        assert got.acc == pytest.approx(want["acc"], abs=1e-9), name
        if "acc_norm" in want:
            assert got.acc_norm == pytest.approx(want["acc_norm"], abs=1e-9)
        else:
            assert got.acc_norm is None
        assert got.n == {"arc_easy": 5}.get(name, 4)
        assert got.seconds > 0 and got.examples_per_s == pytest.approx(got.n / got.seconds)
    assert results["lambada"].extra["perplexity"] == pytest.approx(expected["lambada"]["perplexity"], rel=1e-4)
    # stderr of a mean of 0/1 scores: sample standard deviation / sqrt(n)
    p, n = 3 / 5, 5
    assert results["arc_easy"].stderr["acc"] == pytest.approx(math.sqrt(p * (1 - p) * n / (n - 1) / n))
    assert zs.zeroshot_mean(results) == pytest.approx(sum(w["acc"] for w in expected.values()) / 4)
    assert not model.training


@needs_lm_eval
def test_limit_takes_the_first_examples_and_a_plan_runs_twice(model, tokenizer, tasks, no_network) -> None:
    folder, _ = tasks
    plan = zs.resolve_tasks(["arc_easy"], task_data=folder)
    for limit in (3, 1):  # the sweep runs one plan on every point
        result = zs.run_tasks(model, tokenizer, plan, limit=limit, batch_size=1)["arc_easy"]
        assert result.n == limit
        assert result.acc == pytest.approx(1.0)  # golds were set so that exactly the first three are right


@needs_lm_eval
def test_unknown_task_lists_what_is_available(tasks) -> None:
    folder, _ = tasks
    with pytest.raises(PrunelabError, match=r"unknown task 'arc_esay'.*Did you mean 'arc_easy'.*Available: .*lambada"):
        zs.resolve_tasks(["arc_esay"], task_data=folder)


@needs_lm_eval
def test_unknown_registered_task(monkeypatch) -> None:
    """Online names are checked against the harness's index (faked here: the real one takes 10-25 s to build)."""
    fake = type("Manager", (), {"all_tasks": ["arc_easy", "hellaswag", "lambada"]})()
    monkeypatch.setattr(zs, "_task_manager", lambda include_defaults: fake)
    assert zs.resolve_tasks(["hellaswag", "lambada"]).specs == {"hellaswag": "hellaswag", "lambada": "lambada"}
    with pytest.raises(PrunelabError, match=r"unknown task 'helaswag'.*Did you mean 'hellaswag'.*lm-eval ls tasks"):
        zs.resolve_tasks(["helaswag"])


@needs_lm_eval
def test_bad_task_file_is_one_line_error(tmp_path) -> None:
    write_jsonl(tmp_path / "mine.jsonl", [{"query": "q", "choices": ["a", "b"], "gold": 2}])
    with pytest.raises(PrunelabError, match=r"mine.jsonl:1: 'gold' must be an index"):
        zs.resolve_tasks(["mine"], task_data=tmp_path)
    write_jsonl(tmp_path / "odd.jsonl", [{"text": "no shape"}])
    with pytest.raises(PrunelabError, match="unrecognised row fields"):
        zs.resolve_tasks(["odd"], task_data=tmp_path)


def test_missing_extra_gives_install_hint(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    with pytest.raises(PrunelabError, match=r"pip install 'prunelab\[eval\]'"):
        zs.resolve_tasks(["arc_easy"])


@needs_lm_eval
def test_cli_eval_tasks_offline(tiny_folder, tasks, tmp_path, capsys, no_network) -> None:
    folder, _ = tasks
    out = tmp_path / "eval.json"
    rc = cli.main(
        ["-q", "eval", "--model", str(tiny_folder), "--tasks", "arc_easy,rte", "--task-data", str(folder),
         "--limit", "2", "--json", str(out)]
    )  # fmt: skip
    assert rc == 0
    report = json.loads(out.read_text())
    assert set(report["zeroshot"]) == {"arc_easy", "rte"}
    assert all(r["n"] == 2 for r in report["zeroshot"].values())
    assert set(report["zeroshot"]["arc_easy"]) >= {"acc", "acc_norm", "stderr", "n", "seconds", "examples_per_s"}
    assert report["zeroshot_mean"] == pytest.approx(
        (report["zeroshot"]["arc_easy"]["acc"] + report["zeroshot"]["rte"]["acc"]) / 2
    )
    assert report["perplexity"] == {}  # with --tasks, perplexity runs only when --ppl is named
    assert "zero-shot [arc_easy]" in capsys.readouterr().out

    rc = cli.main(["eval", "--model", str(tiny_folder), "--tasks", "nope", "--task-data", str(folder)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "unknown task 'nope'" in err and "arc_easy" in err and len(err.strip().splitlines()) == 1


@needs_lm_eval
def test_eval_job_runs_perplexity_too_when_named(tiny_folder, tasks) -> None:
    folder, _ = tasks
    corpus = str(tiny_folder.parent / "corpus.txt")
    ev = EvalConfig(ppl=[corpus], seqlen=32, max_windows=2, tasks=["winogrande"], task_data=str(folder))
    report = api.eval_job(ev, ModelConfig(model=str(tiny_folder)))
    assert set(report["perplexity"]) == {corpus} and report["zeroshot"]["winogrande"]["n"] == 4
