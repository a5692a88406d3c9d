"""Text sources, windows and perplexity arithmetic."""

from __future__ import annotations

import json
import math

import pytest
import torch

from prunelab import data
from prunelab.errors import PrunelabError
from prunelab.evaluation.perplexity import perplexity


def test_wikitext_rows_and_join(tmp_path) -> None:
    raw = tmp_path / "wiki.test.raw"
    raw.write_text(" \n = Title = \n \n Body line one . \n")
    text = data.load_text(str(raw)).text
    # HF rows: '', ' = Title = \n', '', ' Body line one . \n' joined with '\n\n'
    assert text == "\n\n = Title = \n\n\n\n\n Body line one . \n"
    assert data.load_text(f"wikitext2:{raw}").text == text


def test_txt_and_jsonl(tmp_path) -> None:
    (tmp_path / "a.txt").write_text("hello world")
    assert data.load_text(str(tmp_path / "a.txt")).text == "hello world"
    rows = [{"text": "one"}, {"text": "two"}]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert data.load_text(str(tmp_path / "b.jsonl")).text == "one\n\ntwo"
    (tmp_path / "bad.jsonl").write_text('{"txt": 1}\n')
    with pytest.raises(PrunelabError, match=r"bad.jsonl:1"):
        data.load_text(str(tmp_path / "bad.jsonl"))


def test_unknown_source_and_unreadable(tmp_path) -> None:
    with pytest.raises(PrunelabError, match=r"neither a known name"):
        data.load_text("wikitext3")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(PrunelabError, match=r"cannot read"):
        data.load_text(str(tmp_path / "bin.txt"))


def test_shakespeare_splits_are_disjoint() -> None:
    calib = data.load_text("shakespeare", "calib").text
    ev = data.load_text("shakespeare", "eval").text
    assert len(calib) > 1_000_000 and len(ev) > 100_000
    assert ev[:2000] not in calib


def test_windows() -> None:
    ids = torch.arange(100)
    w = data.eval_windows(ids, 30)
    assert w.shape == (3, 30) and w[1, 0] == 30
    assert data.eval_windows(ids, 30, max_windows=2).shape == (2, 30)
    c1 = data.calibration_windows(ids, 5, 10, seed=7)
    c2 = data.calibration_windows(ids, 5, 10, seed=7)
    assert torch.equal(c1, c2) and c1.shape == (5, 10)
    assert (c1[:, 1:] - c1[:, :-1] == 1).all()  # contiguous windows
    assert not torch.equal(c1, data.calibration_windows(ids, 5, 10, seed=8))
    with pytest.raises(PrunelabError):
        data.eval_windows(ids, 200)


class FixedLM(torch.nn.Module):
    """A 'model' whose next-token distribution is fixed, so perplexity is known in closed form."""

    def __init__(self, probs: torch.Tensor) -> None:
        super().__init__()
        self.logp = torch.nn.Parameter(probs.log(), requires_grad=False)
        self.head = torch.nn.Linear(1, probs.numel(), bias=False)

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.head

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False):
        class Out:
            logits = self.logp.expand(*input_ids.shape, -1)

        return Out()


def test_perplexity_closed_form() -> None:
    probs = torch.tensor([0.5, 0.25, 0.25])
    model = FixedLM(probs)
    windows = torch.tensor([[0, 1, 2, 0], [0, 0, 0, 0]])
    # Predicted tokens: window 1 -> 1, 2, 0 ; window 2 -> 0, 0, 0 (the first token of a window is not predicted).
    nll = -(math.log(0.25) * 2 + math.log(0.5) * 4) / 6
    for bs in (1, 2):
        result = perplexity(model, windows, batch_size=bs)
        assert result.tokens == 6
        assert result.perplexity == pytest.approx(math.exp(nll))
