"""Errors that reach the user as one line.

The CLI maps `InputError` to exit code 2 (bad input or usage) and any other
`Compress1imgError` to exit code 1; anything else is a bug and also exits 1.
"""
from __future__ import annotations


class Compress1imgError(Exception):
    """A failure we can explain to the user in one line."""


class InputError(Compress1imgError):
    """The user gave us something we cannot use: a bad file, option or combination."""


class TrainingError(Compress1imgError):
    """Training went wrong in a way the user can act on (NaN loss, out of memory)."""


def first_line(error: BaseException, *, with_type: bool = False, limit: int | None = None) -> str:
    """`error` in one line for a one-line message: library errors can run to pages.

    The first non-empty line of `str(error)`, stripped, or the exception's type name when
    the message is empty. `with_type` prefixes the type name ("TypeError: ...") where the
    type says something the message does not; `limit` cuts the line to that many characters.
    """
    line = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    if not line:
        return type(error).__name__
    if with_type:
        line = f"{type(error).__name__}: {line}"
    return line if limit is None or len(line) <= limit else line[:limit - 3] + "..."
