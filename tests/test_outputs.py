"""The small helpers everything else writes and reports through: atomic writes and one-line error messages."""
from __future__ import annotations

from compress1img.errors import first_line


def test_first_line_is_the_first_non_empty_line_stripped():
    assert first_line(RuntimeError("\n  \n  shapes do not match  \nat layer 3\n")) == "shapes do not match"


def test_first_line_of_an_empty_message_is_the_type_name():
    assert first_line(KeyboardInterrupt()) == "KeyboardInterrupt"
    assert first_line(ValueError("  \n")) == "ValueError"
    assert first_line(ValueError(""), with_type=True) == "ValueError"


def test_first_line_can_name_the_type_and_cut_a_long_line():
    assert first_line(TypeError("bad operand\ntraceback follows"), with_type=True) == "TypeError: bad operand"
    cut = first_line(OSError("x" * 300), limit=200)
    assert len(cut) == 200 and cut.endswith("...")
    assert first_line(OSError("x" * 200), limit=200) == "x" * 200
