"""The analysis's one exception type, shared by ``selection`` and ``load``."""

from __future__ import annotations


class AnalysisError(RuntimeError):
    """Bad input to the analysis (URL, artefact id, missing runs); the message is one line."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none)."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
