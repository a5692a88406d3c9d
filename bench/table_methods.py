"""The issue-15 table (method x stage x level) from the rows bench_methods.py wrote, with unmeasured cells shown.

Each cell is perplexity (prune seconds); `-` marks a cell no row exists for. One table per folder, since a
folder holds one protocol (e.g. bench/results/methods: 32 reconstruction steps; methods-r96: 96 steps). The four
stages always show, so the missing cells of the issue's 60 stay visible.

    python bench/table_methods.py bench/results/methods bench/results/methods-r96
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench_methods import DEFAULT_METHODS as METHODS
from bench_methods import LEVELS, STAGES, level_tag


def cell(path: Path) -> str:
    row = json.loads(path.read_text())
    ppl = next(iter(row["perplexity"].values()))
    return f"{ppl:.2f} ({row['prune_seconds']:.0f} s)"


def table(folder: Path) -> tuple[str, int]:
    """Rows are method x stage; a row name with a suffix (e.g. `reconstruct-alpha-targetmodel`) is its own row."""
    tags = {level_tag(level): level for level in LEVELS}
    found: dict[tuple[str, str], dict[str, Path]] = {}
    for path in sorted(folder.glob("*.json")):
        parts = path.stem.split("-", 2)
        if len(parts) == 3 and parts[0] in METHODS and parts[1] in tags:
            found.setdefault((parts[0], parts[2]), {})[tags[parts[1]]] = path
    keys = [(m, s) for m in METHODS for s in STAGES]
    keys += sorted(k for k in found if k not in keys)
    lines = [f"| method | stage | {' | '.join(LEVELS)} |", "|---|---|" + "---:|" * len(LEVELS)]
    measured = 0
    for method, stage in keys:
        paths = found.get((method, stage), {})
        if not paths and stage not in STAGES:
            continue
        measured += len(paths)
        cells = [cell(paths[level]) if level in paths else "-" for level in LEVELS]
        lines.append(f"| {method} | {stage} | {' | '.join(cells)} |")
    return "\n".join(lines), measured


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    args = ap.parse_args()
    for folder in args.folders:
        text, measured = table(folder)
        print(f"{folder} ({measured} rows; each cell: perplexity (prune s))\n\n{text}\n")


if __name__ == "__main__":
    main()
