"""Errors that name what was wrong, where."""

from __future__ import annotations


class RtmlError(Exception):
    """Base of every error rtml raises on purpose."""


class InputError(RtmlError):
    """Bad input: names the source (file), the line or row, and the problem."""

    def __init__(self, problem: str, *, source: str | None = None, line: int | None = None):
        self.problem = problem
        self.source = source
        self.line = line
        where = ""
        if source is not None:
            where = f"{source}"
            if line is not None:
                where += f", line {line}"
            where += ": "
        super().__init__(f"{where}{problem}")


class UnsupportedOperation(RtmlError):
    """An optional capability a backend does not offer (fails loudly, never a silent no-op)."""
