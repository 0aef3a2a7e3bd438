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
