"""Check the f16 GGUF export of the real embedded SmolLM2-135M-Instruct in llama.cpp against the float32 torch model.

Quality only (no timing, so it may run on a busy machine): teacher-forced next-token agreement over a few passages,
token ids of a set of strings (Hugging Face tokenizer vs llama.cpp's tokenizer of the exported file), and llama.cpp's
perplexity on the same WikiText-2 windows as prunelab's torch perplexity.

    python bench/check_gguf_smollm2.py --data /work/shared/data/wikitext-2-raw/wiki.test.raw --windows 4
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from prunelab import data, load_model
from prunelab._util import environment, write_json_atomic
from prunelab.evaluation.perplexity import perplexity
from prunelab.export import export_gguf, gguf_source
from prunelab.runtime import llamacpp as rt

STRINGS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces\tand\ttabs\n\nnew lines",
    "Numbers: 3.14159, 2024-01-01, 1,000,000 and 12345678.",
    "Ünïcödé, café, naïve, 日本語, 🚀 emoji",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "I'm sure they'll've done it; won't you?",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="wiki.test.raw (WikiText-2 raw test split)")
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/results/gguf-check-smollm2.json")
    args = ap.parse_args()

    lm = load_model()
    ids = data.tokenize(lm.tokenizer, data.load_text(f"wikitext2:{args.data}").text)
    windows = data.eval_windows(ids, args.seqlen, args.windows)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "smollm2-f16.gguf"
        report = export_gguf(lm.model, lm.tokenizer, path, quant="f16", source_gguf=gguf_source(None))
        agree = rt.compare_with_torch(path, lm.model, windows, threads=args.threads)
        llm = rt.load(path, n_ctx=args.seqlen, threads=args.threads)
        try:
            tokens = {s: (rt.tokenize(llm, s), lm.tokenizer(s).input_ids) for s in STRINGS}
        finally:
            llm.close()
        t0 = time.perf_counter()
        ours = rt.perplexity(path, windows, threads=args.threads)
        theirs = perplexity(lm.model, windows)
        seconds = time.perf_counter() - t0
    same = [s for s, (a, b) in tokens.items() if a == b]
    result = {
        "export": {k: report[k] for k in ("arch", "quant", "file_bytes", "tensor_types", "tokenizer_source")},
        "agreement": agree,
        "tokenizer": {"strings": len(STRINGS), "identical": len(same), "differ": [s for s in STRINGS if s not in same]},
        "perplexity": {
            "windows": windows.shape[0],
            "seqlen": args.seqlen,
            "llamacpp": ours.perplexity,
            "torch_float32": theirs.perplexity,
            "relative_difference": ours.perplexity / theirs.perplexity - 1,
            "seconds_both": seconds,
        },
        "command": f"python bench/check_gguf_smollm2.py --data {args.data} --windows {args.windows}",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "environment": environment(),
    }
    write_json_atomic(args.out, result)
    print(json.dumps({k: result[k] for k in ("export", "agreement", "tokenizer", "perplexity")}, indent=2))


if __name__ == "__main__":
    main()
