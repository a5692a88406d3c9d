"""The issue-15 table (method x stage x level) from the rows bench_methods.py wrote, with unmeasured cells shown.

Each cell is perplexity (prune seconds); `-` marks a cell no row exists for. One table per folder, since a
folder holds one protocol (e.g. bench/results/methods: 32 reconstruction steps; methods-r96: 96 steps).

    python bench/table_methods.py bench/results/methods bench/results/methods-r96
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

LEVELS = {"50%": "50", "60%": "60", "70%": "70", "2:4": "2of4", "4:8": "4of8"}
STAGES = ("alone", "dsnot", "reconstruct", "both")
METHODS = ("wanda", "sparsegpt", "ria")


def cell(path: Path) -> str:
    if not path.exists():
        return "-"
    row = json.loads(path.read_text())
    ppl = next(iter(row["perplexity"].values()))
    return f"{ppl:.2f} ({row['prune_seconds']:.0f} s)"


def table(folder: Path) -> tuple[str, int]:
    lines = [f"| method | stage | {' | '.join(LEVELS)} |", "|---|---|" + "---:|" * len(LEVELS)]
    measured = 0
    for method in METHODS:
        for stage in STAGES:
            cells = [cell(folder / f"{method}-{tag}-{stage}.json") for tag in LEVELS.values()]
            measured += sum(c != "-" for c in cells)
            if any(c != "-" for c in cells) or folder.name == "methods":
                lines.append(f"| {method} | {stage} | {' | '.join(cells)} |")
    return "\n".join(lines), measured


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    args = ap.parse_args()
    for folder in args.folders:
        text, measured = table(folder)
        total = len(METHODS) * len(STAGES) * len(LEVELS)
        print(f"{folder} ({measured} of {total} cells; each cell: perplexity (prune s))\n\n{text}\n")


if __name__ == "__main__":
    main()
