"""Streaming pruning: same masks and weights as in-memory pruning, one block in memory at a time, clear errors."""

from __future__ import annotations

import json
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn
from transformers import AutoModelForCausalLM

from prunelab import PruneConfig, load_model, prune
from prunelab.calibration import BlockInputs, run_block, to_device
from prunelab.cli import main
from prunelab.errors import PrunelabError
from prunelab.pruning import make_pruner
from prunelab.shards import SafetensorsCheckpoint
from prunelab.streaming import StreamingStore, open_skeleton, prune_streaming
from tests.conftest import ARCHS, VOCAB, make_model, tiny_config

ROTARY = {"model.rotary_emb.inv_freq", "model.rotary_emb.original_inv_freq"}


def _save(model: nn.Module, folder: Path, tokenizer=None, dtype: torch.dtype | None = None) -> Path:
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(folder, max_shard_size="60KB")  # several shards: blocks straddle files
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def _read_all(folder: Path) -> dict[str, torch.Tensor]:
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    out = {}
    for key, file in index.items():
        with safe_open(str(folder / file), framework="pt") as f:
            out[key] = f.get_tensor(key)
    return out


@pytest.fixture
def sharded(tmp_path: Path, tokenizer) -> Path:
    (tmp_path / "corpus.txt").write_text(" ".join(["To be, or not to be, that is the question."] * 200))
    folder = _save(make_model("llama"), tmp_path / "src", tokenizer)
    assert len(list(folder.glob("*.safetensors"))) >= 3
    return folder


def _cfg(folder: Path, method: str, allocation: str = "uniform", **kw) -> PruneConfig:
    calib = str(folder.parent / "corpus.txt")
    return PruneConfig(
        method=method, sparsity=0.6, calib=calib, calib_samples=4, calib_seqlen=32, allocation=allocation, **kw
    )


@pytest.mark.parametrize(
    ("method", "allocation"),
    [
        ("magnitude", "uniform"),
        ("wanda", "uniform"),
        ("sparsegpt", "uniform"),
        ("wanda", "owl"),
        ("sparsegpt", "owl"),
        ("wanda", "alpha"),
    ],
)
def test_streaming_equals_in_memory(sharded: Path, tmp_path: Path, method: str, allocation: str) -> None:
    cfg = _cfg(sharded, method, allocation, owl_lambda=0.1)
    lm = load_model(str(sharded))
    expected = prune(lm.model, cfg, tokenizer=lm.tokenizer)
    report = prune_streaming(str(sharded), cfg, tmp_path / "out")

    got = _read_all(tmp_path / "out")
    want = lm.model.state_dict()
    assert set(got) == set(want)  # untied embeddings: every tensor is stored
    for key, value in want.items():
        assert torch.equal(got[key], value), key  # bit-identical: same masks, same (SparseGPT-updated) values
    assert report["layers"] == json.loads(json.dumps(expected.to_dict()["layers"]))
    assert report["allocation"] == expected.extra["allocation"]
    assert report["achieved_sparsity"] == pytest.approx(0.6, abs=0.02)
    if allocation != "uniform":
        assert report["allocation"]["block_sparsity"][0] != report["allocation"]["block_sparsity"][1]
    saved = json.loads((tmp_path / "out" / "prunelab.json").read_text())
    assert saved["streaming"] is True and saved["peak_rss_mb"] > 0
    assert saved["prunable_zeros"] == sum(int((w == 0).sum()) for k, w in got.items() if "layers" in k and "proj" in k)

    # The output is a plain Hugging Face folder: it reloads with transformers alone, with the same logits.
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, lm.model(ids).logits)
    assert (tmp_path / "out" / "tokenizer.json").is_file()


@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "llama"])
def test_streaming_other_architectures(tmp_path: Path, arch: str) -> None:
    # Tied embeddings (gpt2), learned positions (opt, gpt2), fused projections (phi3): the skeleton must cope.
    src = _save(make_model(arch), tmp_path / "src")
    cfg = PruneConfig(method="magnitude", sparsity=0.5)
    lm = load_model(str(src))
    prune(lm.model, cfg)
    prune_streaming(str(src), cfg, tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    ids = torch.randint(0, VOCAB, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, lm.model(ids).logits)


def test_bfloat16_checkpoint_is_written_in_bfloat16(tmp_path: Path, tokenizer) -> None:
    (tmp_path / "corpus.txt").write_text(" ".join(["Some words for calibration, over and over."] * 200))
    src = _save(make_model("llama"), tmp_path / "src", tokenizer, dtype=torch.bfloat16)
    cfg = _cfg(src, "wanda")
    lm = load_model(str(src))  # float32 on the CPU, like the streaming compute dtype
    prune(lm.model, cfg, tokenizer=lm.tokenizer)
    report = prune_streaming(str(src), cfg, tmp_path / "out")
    got = _read_all(tmp_path / "out")
    for key, value in lm.model.state_dict().items():
        assert got[key].dtype == torch.bfloat16
        assert torch.equal(got[key], value.to(torch.bfloat16)), key
    assert report["streaming_detail"]["compute_dtype"] == "float32"
    assert report["streaming_detail"]["output_bytes"] == sum(t.numel() * 2 for t in got.values())


def test_checkpoint_without_tokenizer(tmp_path: Path) -> None:
    src = _save(make_model("llama"), tmp_path / "bare")
    report = prune_streaming(str(src), PruneConfig(method="magnitude", sparsity=0.5), tmp_path / "out")
    assert report["achieved_sparsity"] == pytest.approx(0.5)
    assert not (tmp_path / "out" / "tokenizer.json").exists()
    with pytest.raises(PrunelabError, match="no tokenizer"):
        prune_streaming(str(src), PruneConfig(method="wanda", sparsity=0.5), tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def _four_blocks(tmp_path: Path, tokenizer) -> Path:
    cfg = tiny_config("llama")
    cfg.num_hidden_layers = 4
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    (tmp_path / "corpus.txt").write_text(" ".join(["Words, words, words: calibration text."] * 200))
    return _save(model, tmp_path / "src4", tokenizer)


def test_memory_accounting_one_block_at_a_time(tmp_path: Path, tokenizer) -> None:
    src = _four_blocks(tmp_path, tokenizer)
    report = prune_streaming(str(src), _cfg(src, "wanda", "owl"), tmp_path / "out")
    detail = report["streaming_detail"]
    assert detail["block_loads"] == 8  # OWL's dense pre-pass, then the pruning pass
    assert detail["peak_live_blocks"] == 1
    assert detail["peak_live_block_bytes"] == detail["largest_block_bytes"]
    # One float32 block: 4 projections of 64x64 (k/v are 64x32), 3 MLP matrices 64x96, 2 norms of 64.
    assert detail["largest_block_bytes"] == 4 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 96 + 2 * 64)


class _LeakyStore(StreamingStore):
    """A store that forgets to free: the accounting must see two blocks alive."""

    def release(self, i: int, block: nn.Module, pruned: bool) -> None:
        self.kept = [*getattr(self, "kept", []), dict(block.named_parameters())]
        super().release(i, block, pruned)


def test_memory_accounting_catches_a_leak(tmp_path: Path, tokenizer) -> None:
    src = _four_blocks(tmp_path, tokenizer)
    checkpoint = SafetensorsCheckpoint(src)
    model = open_skeleton(src, checkpoint, torch.device("cpu"), torch.float32)
    store = _LeakyStore(model, checkpoint, torch.device("cpu"), torch.float32)
    make_pruner(PruneConfig(method="magnitude", sparsity=0.5)).prune_blocks(model, store, None)  # type: ignore[attr-defined]
    assert store.peak_live_blocks == 4
    assert store.peak_live_bytes == 4 * store.block_bytes[0]


def test_skeleton_holds_no_block_weights(sharded: Path) -> None:
    checkpoint = SafetensorsCheckpoint(sharded)
    model = open_skeleton(sharded, checkpoint, torch.device("cpu"), torch.float32)
    assert all(p.is_meta for p in model.model.layers.parameters())
    assert model.lm_head.weight.is_meta  # untied: pruning never runs past the last block, so it is never loaded
    ref = load_model(str(sharded)).model
    loaded = [(n, t) for n, t in [*model.named_parameters(), *model.named_buffers()] if not t.is_meta]
    assert {n for n, _ in loaded} == {"model.embed_tokens.weight", "model.norm.weight", *ROTARY}
    for name, t in loaded:
        assert torch.equal(t, ref.get_parameter(name) if "rotary" not in name else ref.get_buffer(name)), name


def test_to_device_follows_the_block() -> None:
    pair = namedtuple("pair", "cos sin")
    moved = to_device({"pos": pair(torch.ones(1), torch.ones(1)), "mask": None, "n": 3}, torch.device("meta"))
    assert moved["pos"].cos.is_meta and isinstance(moved["pos"], pair) and moved["n"] == 3

    class Recorder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.empty(2, device="meta"))
            self.seen: list[str] = []

        def forward(self, hidden: torch.Tensor, position_embeddings: tuple[torch.Tensor, ...]) -> torch.Tensor:
            self.seen += [hidden.device.type, *(t.device.type for t in position_embeddings)]
            return hidden

    block = Recorder()
    inputs = BlockInputs([torch.zeros(1, 2)], [{"position_embeddings": (torch.ones(1), torch.ones(1))}])
    run_block(block, inputs, keep_outputs=True)
    assert block.seen == ["meta", "meta", "meta"]
    assert inputs.kwargs[0]["position_embeddings"][0].is_meta  # carried along for the next block


def test_device_map_auto_on_cpu(tiny_folder: Path) -> None:
    lm = load_model(str(tiny_folder), device_map="auto")  # CPU only here: everything on the CPU, float32
    ref = load_model(str(tiny_folder))
    assert next(lm.model.parameters()).dtype == torch.float32
    corpus = str(tiny_folder.parent / "corpus.txt")
    cfg = PruneConfig(method="wanda", sparsity=0.5, calib=corpus, calib_samples=2, calib_seqlen=32)
    prune(lm.model, cfg, tokenizer=lm.tokenizer)
    prune(ref.model, cfg, tokenizer=ref.tokenizer)
    for (name, a), b in zip(lm.model.state_dict().items(), ref.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(PrunelabError, match="device map"):
        load_model(str(tiny_folder), device_map="everywhere")
    with pytest.raises(PrunelabError, match="not both"):
        load_model(str(tiny_folder), device="cuda", device_map="auto")


def test_bad_input(tmp_path: Path, sharded: Path) -> None:
    cfg = PruneConfig(method="magnitude", sparsity=0.5)
    with pytest.raises(PrunelabError, match="local Hugging Face folder"):
        prune_streaming("HuggingFaceTB/SmolLM2-135M", cfg, tmp_path / "o")
    with pytest.raises(PrunelabError, match="needs --model"):
        prune_streaming(None, cfg, tmp_path / "o")
    with pytest.raises(PrunelabError, match="needs --output"):
        prune_streaming(str(sharded), cfg, None)
    empty = tmp_path / "noweights"
    empty.mkdir()
    (empty / "config.json").write_text((sharded / "config.json").read_text())
    with pytest.raises(PrunelabError, match="safetensors"):
        prune_streaming(str(empty), cfg, tmp_path / "o")
    with pytest.raises(PrunelabError, match="scope=global"):
        prune_streaming(
            str(sharded), PruneConfig(method="magnitude", sparsity=0.5, options={"scope": "global"}), tmp_path / "o"
        )
    if not torch.cuda.is_available():
        with pytest.raises(PrunelabError, match="no CUDA"):
            prune_streaming(str(sharded), cfg, tmp_path / "o", device="cuda")
    (tmp_path / "exists").mkdir()
    with pytest.raises(PrunelabError, match="already exists"):
        prune_streaming(str(sharded), cfg, tmp_path / "exists")
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in sharded.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    next(broken.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(PrunelabError, match="does not exist"):
        prune_streaming(str(broken), cfg, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_cli_streaming(sharded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, report = tmp_path / "out", tmp_path / "r.json"
    args = ["-q", "prune", "--model", str(sharded), "--streaming", "--method", "magnitude", "--output", str(out)]
    assert main([*args, "--json", str(report)]) == 0
    assert "saved to" in capsys.readouterr().out
    data = json.loads(report.read_text())
    assert data["streaming"] is True and data["method"] == "magnitude" and data["output"] == str(out)
    assert json.loads((out / "prunelab.json").read_text())["layers"] == data["layers"]
    assert main([*args, "--overwrite", "--ppl", "shakespeare"]) == 2
    assert "--ppl" in capsys.readouterr().err
    assert main(["prune", "--streaming", "--method", "magnitude", "--output", str(tmp_path / "x")]) == 2
    assert "needs --model" in capsys.readouterr().err
