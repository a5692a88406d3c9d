"""One exception type for everything a user can get wrong.

The CLI turns a `PrunelabError` into a one-line message and exit code 2; anything else is a bug and keeps its
traceback. Library code raises it for bad input (unknown method, malformed pattern, missing path) so that the
Python API gives the same clear message as the command line.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PrunelabError(ValueError):
    """Bad input from the user: the message is one line and says what to do."""


def did_you_mean(word: str, choices: Iterable[str], what: str) -> PrunelabError:
    """Build the error for an unknown name, suggesting the closest known one (lm-evaluation-harness style)."""
    choices = sorted(choices)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return PrunelabError(f"unknown {what} '{word}'.{hint} Known: {', '.join(choices)}.")


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (libraries such as torch explain over many lines),
    shortened to `limit` characters, or the exception's class name when the message is empty."""
    for line in str(error).splitlines():
        if line.strip():
            text = line.strip()
            return text if len(text) <= limit else text[: limit - 3] + "..."
    return type(error).__name__
