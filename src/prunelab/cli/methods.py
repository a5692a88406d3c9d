"""`prunelab methods`: the registered pruning methods, their capabilities and options."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("methods", help="list the registered pruning methods")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from prunelab.pruning import METHODS

    for name, cls in METHODS.items():
        print(f"{name:12s} {cls.summary}")
    return 0
